//! `wxpay-recon migrate`: apply pending migrations (also done by every start).

use std::process::ExitCode;

use crate::config::Settings;

use super::CliError;

pub async fn run(settings: Settings) -> Result<ExitCode, CliError> {
    crate::deps::database(&settings.database).await.map_err(|e| CliError::new(e.to_string()))?;
    println!("migrations applied to {}", redact_url(&settings.database.url));
    Ok(ExitCode::SUCCESS)
}

/// A database URL without its password, for printing.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
