//! `wxpay-recon wechat …`: talking to WeChat Pay on an operator's behalf.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use crate::clock::Clock;
use crate::config::Settings;
use crate::deps::Deps;
use crate::services::certificates;
use crate::telemetry::metrics::Metrics;
use crate::wechat::Credentials;
use crate::wechat::client::CertificateTrust;
use crate::wechat::keyring::Fetched;

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum WechatCommand {
    /// Download WeChat Pay's platform certificates (GET /v3/certificates), check them and save
    /// them in the database, where every replica loads them at start and follows rotations.
    ///
    /// With no certificate known yet (none configured, none saved) the first answer is trusted
    /// as the official SDKs trust it: the certificates are sealed with the APIv3 key, which only
    /// WeChat and the merchant hold. Later downloads must be signed by a key already held (or by
    /// a certificate they introduce, when they also list one already held).
    FetchCertificates(FetchArgs),
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Also write each certificate as `<serial>.pem` into this directory (for other tools).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub async fn run(settings: Settings, command: WechatCommand) -> Result<ExitCode, CliError> {
    match command {
        WechatCommand::FetchCertificates(args) => fetch_certificates(&settings, &args).await,
    }
}

async fn fetch_certificates(settings: &Settings, args: &FetchArgs) -> Result<ExitCode, CliError> {
    // Signed requests go to WeChat: the same https rule as `serve`.
    crate::config::transport::check(&settings.wechat)?;
    let clock = Clock::system();
    let creds = Arc::new(Credentials::load(settings)?);
    let deps = Deps::without_key_check(settings, creds, clock.clone(), Metrics::new()).await?;
    let trust = if deps.creds.platform_keys.is_empty() { CertificateTrust::FirstUse } else { CertificateTrust::Known };
    let fetched = deps
        .pay
        .fetch_certificates(trust)
        .await
        .map_err(|e| CliError::new(format!("downloading the platform certificates: {e}")))?;
    let list = Fetched { certificates: fetched.into(), at: clock.now() };
    certificates::save(&deps.db, &list)
        .await
        .map_err(|e| CliError::new(format!("saving the platform certificates: {e}")))?;
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
        for cert in list.certificates.iter() {
            let path = dir.join(format!("{}.pem", cert.serial));
            std::fs::write(&path, format!("{}\n", cert.pem.trim()))
                .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
        }
    }
    let now = clock.now();
    println!("{:<42} {:<25} {:<25} state", "serial", "valid from (UTC)", "expires (UTC)");
    for cert in list.certificates.iter() {
        let state = if cert.valid_at(now) {
            "valid"
        } else if cert.not_after <= now {
            "expired"
        } else {
            "not yet valid"
        };
        println!(
            "{:<42} {:<25} {:<25} {state}",
            cert.serial,
            cert.not_before.format("%Y-%m-%d %H:%M:%S"),
            cert.not_after.format("%Y-%m-%d %H:%M:%S")
        );
    }
    match trust {
        CertificateTrust::FirstUse => {
            println!("saved; trusted on first use (no WeChat key was known yet); later downloads must match them")
        }
        CertificateTrust::Known => println!("saved; the answer was signed by a key already held"),
    }
    Ok(ExitCode::SUCCESS)
}
