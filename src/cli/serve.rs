//! `wxpay-recon serve [--api-only | --worker-only] [--dev-keys]`.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Settings;
use crate::startup::{Application, Roles};
use crate::telemetry::{self, metrics::Metrics};

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve the HTTP API only; run no jobs.
    #[arg(long, conflicts_with = "worker_only")]
    api_only: bool,
    /// Run jobs only; HTTP serves /healthz (and the ops listener /readyz and /metrics).
    #[arg(long)]
    worker_only: bool,
    /// Use (and create) the development keys: only against `wxpay-recon sim`. The only way to
    /// run `serve` on them: `wechat.use_dev_keys` from a file or the environment is refused.
    #[arg(long)]
    pub dev_keys: bool,
}

/// Refuses development keys that did not come from `--dev-keys` on this command line: a stray
/// `WXPAY_RECON__WECHAT__USE_DEV_KEYS=true` or `use_dev_keys = true` left in a file must not
/// turn a production daemon into one that signs with keys published in this repository.
fn check_dev_keys(settings: &Settings, args: &Args) -> Result<(), CliError> {
    if settings.wechat.use_dev_keys && !args.dev_keys {
        return Err(CliError::usage(
            "wechat.use_dev_keys is set (config file or WXPAY_RECON__WECHAT__USE_DEV_KEYS), but serve runs on \
             development keys only with --dev-keys on its command line",
        ));
    }
    Ok(())
}

pub async fn run(settings: Settings, args: Args) -> Result<ExitCode, CliError> {
    check_dev_keys(&settings, &args)?;
    telemetry::init(settings.log.format, &settings.log.filter);
    if settings.wechat.use_dev_keys {
        tracing::warn!("running with DEVELOPMENT keys: only the simulator will accept these requests");
    }
    let roles = Roles { api: !args.worker_only, worker: !args.api_only && settings.worker.enabled };
    let app = Application::build(settings, Clock::system(), roles, Metrics::new()).await?;
    // One line on stdout for scripts and supervisors (the logs go to stderr).
    println!("wxpay-recon listening on {}, ops on {}", app.base_url(), app.ops_base_url());
    let stop = CancellationToken::new();
    crate::shutdown::on_signal(stop.clone());
    app.run(stop).await.map_err(|e| CliError::new(format!("server: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
