//! Logs and metrics. The subscriber is built once, here; metric handles live in `metrics`.
//!
//! Logging rules: identifiers go in dotted fields (`order.out_trade_no`, `notify.id`,
//! `job.kind`); secrets, tokens, session keys, openids and raw bodies are never logged.

pub mod metrics;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::config::LogFormat;

/// Installs the global subscriber (JSON for `serve`, pretty for `demo`). `RUST_LOG` wins over
/// the configured filter. A second call (tests) is a no-op.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let writer = std::io::stderr.with_max_level(tracing::Level::TRACE);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
        LogFormat::Compact => builder.compact().try_init(),
    };
}
