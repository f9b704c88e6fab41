//! `wxpay-recon sim`: the WeChat Pay + login simulator as its own process.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Settings;
use crate::sim::{SimConfig, SimKeys, SimServer};
use crate::telemetry;
use crate::wechat::devkeys::DevKeys;

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on (overrides sim.port).
    #[arg(long)]
    port: Option<u16>,
}

pub async fn run(settings: Settings, args: Args) -> Result<ExitCode, CliError> {
    telemetry::init(settings.log.format, &settings.log.filter);
    let server = spawn(&settings, Clock::system(), args.port.unwrap_or(settings.sim.port)).await?;
    println!("simulator listening on {} (dev keys in {})", server.base_url(), settings.wechat.dev_keys_dir.display());
    let stop = CancellationToken::new();
    crate::shutdown::on_signal(stop.clone());
    stop.cancelled().await;
    server.stop();
    Ok(ExitCode::SUCCESS)
}

/// Starts a simulator with the dev keys (created if missing).
pub async fn spawn(settings: &Settings, clock: Clock, port: u16) -> Result<SimServer, CliError> {
    let keys = DevKeys::load_or_create(&settings.wechat.dev_keys_dir)?;
    let config = SimConfig {
        keys: SimKeys::from_dev_keys(&keys)?,
        clock,
        time_scale: settings.sim.time_scale,
        seed: settings.sim.seed,
        chaos: settings.sim.chaos.clone(),
        allow_http_notify: settings.sim.allow_http_notify,
        bound_to_open_platform: settings.sim.bound_to_open_platform,
    };
    let addr: SocketAddr =
        format!("{}:{port}", settings.sim.host).parse().map_err(|e| CliError::new(format!("sim.host: {e}")))?;
    SimServer::spawn(config, addr).await.map_err(|e| CliError::new(format!("simulator: cannot listen on {addr}: {e}")))
}
