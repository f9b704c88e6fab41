//! The command line: one subcommand per process role or operator task. Each file parses its
//! arguments and calls into the library; no business logic lives here.

mod demo;
mod migrate;
mod ops;
mod reconcile;
mod serve;
mod sim;
mod wechat;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Purpose, Settings};

#[derive(Debug, Parser)]
#[command(name = "wxpay-recon", version, about = "WeChat mini-program payments that reconcile")]
pub struct Cli {
    /// Settings file layered over the defaults (env WXPAY_RECON__* still wins).
    #[arg(long, global = true, env = "WXPAY_RECON_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API and the worker (the production daemon).
    Serve(serve::Args),
    /// Run the WeChat Pay + login simulator.
    Sim(sim::Args),
    /// Run simulator, API, worker and a scripted mini-program client in one process.
    Demo(demo::Args),
    /// Apply database migrations and exit.
    Migrate,
    /// Dead-letter jobs: list them or retry them.
    #[command(subcommand)]
    Jobs(ops::JobsCommand),
    /// Orders: show one with its full history.
    #[command(subcommand)]
    Order(ops::OrderCommand),
    /// Reconcile WeChat's trade bill of a day (or a range) with our orders, in the foreground.
    Reconcile(reconcile::Args),
    /// Trade bill files: check one offline.
    #[command(subcommand)]
    Bill(reconcile::BillCommand),
    /// WeChat Pay: download the platform certificates.
    #[command(subcommand)]
    Wechat(wechat::WechatCommand),
}

/// A failure to report on one line; usage and configuration errors exit with 2, others with 1.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl From<ConfigError> for CliError {
    fn from(err: ConfigError) -> Self {
        Self { message: err.to_string(), code: 2 }
    }
}

impl From<crate::startup::StartupError> for CliError {
    fn from(err: crate::startup::StartupError) -> Self {
        let code = if matches!(err, crate::startup::StartupError::Config(_)) { 2 } else { 1 };
        Self { message: err.to_string(), code }
    }
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1 }
    }

    /// The command was given something it cannot do: exit 2, like clap's own usage errors.
    pub fn usage(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2 }
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let file = cli.config.as_deref();
    match cli.command {
        Command::Serve(args) => {
            let purpose = if args.dev_keys { Purpose::Dev } else { Purpose::Serve };
            serve::run(Settings::load_for(file, purpose)?, args).await
        }
        Command::Sim(args) => sim::run(Settings::load_dev(file)?, args).await,
        Command::Demo(args) => demo::run(Settings::load_dev(file)?, args).await,
        Command::Migrate => migrate::run(Settings::load_for(file, Purpose::Ops)?).await,
        Command::Jobs(cmd) => ops::jobs(Settings::load_for(file, Purpose::Ops)?, cmd).await,
        Command::Order(cmd) => ops::order(Settings::load_for(file, Purpose::Ops)?, cmd).await,
        Command::Reconcile(args) => reconcile::run(Settings::load_for(file, Purpose::Serve)?, args).await,
        Command::Bill(cmd) => reconcile::bill(cmd),
        Command::Wechat(cmd) => wechat::run(Settings::load_for(file, Purpose::Ops)?, cmd).await,
    }
}
