//! The `wxpay-recon` binary: parse the command line, run the subcommand, exit with its code.
//! Errors are one line on stderr (no panic, no backtrace).

use std::process::ExitCode;

use clap::Parser;
use wxpay_recon::cli::{self, Cli};

fn main() -> ExitCode {
    // reqwest is built without a default TLS provider; pick ring (also what sqlx uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wxpay-recon: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("wxpay-recon: {}", err.message);
            ExitCode::from(err.code)
        }
    }
}
