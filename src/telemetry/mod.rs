//! Logs and metrics. The subscriber is built once, here; metric handles live in `metrics`.
//!
//! Logging rules: identifiers go in dotted fields (`order.out_trade_no`, `notify.id`,
//! `job.kind`); secrets, tokens, session keys, openids and raw bodies are never logged; SQL
//! text is never logged (slow statements by name and duration, see `slow_sql`).

pub mod metrics;
pub mod process;
mod slow_sql;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{FilterExt, Targets};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// PostgreSQL's NOTICEs (`relation "_sqlx_migrations" already exists, skipping` on every
/// start) arrive at INFO; they are the server chatting, not our events.
const PG_NOTICES: &str = "sqlx::postgres::notice";

/// Installs the global subscriber (JSON for `serve`, pretty for `demo`). `RUST_LOG` wins over
/// the configured filter. A second call (tests) is a no-op.
pub fn init(format: LogFormat, filter: &str) {
    // An unusable RUST_LOG falls back to the configured filter (validated with the settings).
    let events = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .and_then(|f| EnvFilter::try_new(with_quiet_notices(&f)).ok())
        .or_else(|| EnvFilter::try_new(with_quiet_notices(filter)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // sqlx's own statement events carry the SQL text: never printed as they are.
    let no_sql = Targets::new().with_target(slow_sql::TARGET, LevelFilter::OFF).with_default(LevelFilter::TRACE);
    let writer = std::io::stderr.with_max_level(tracing::Level::TRACE);
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        // Each event lists its spans once (`spans`), not also the innermost again (`span`).
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).with_span_list(true).boxed(),
        LogFormat::Pretty => fmt.pretty().boxed(),
        LogFormat::Compact => fmt.compact().boxed(),
    };
    let slow = slow_sql::SlowStatements { format }
        .with_filter(Targets::new().with_target(slow_sql::TARGET, tracing::Level::WARN));
    let _ = tracing_subscriber::registry().with(fmt.with_filter(events.and(no_sql))).with(slow).try_init();
}

/// Adds `sqlx::postgres::notice=warn` unless the filter already says something about notices.
fn with_quiet_notices(filter: &str) -> String {
    if filter.contains(PG_NOTICES) {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        format!("{PG_NOTICES}=warn")
    } else {
        format!("{filter},{PG_NOTICES}=warn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_quieted_unless_the_operator_asks_for_them() {
        assert_eq!(with_quiet_notices("info"), "info,sqlx::postgres::notice=warn");
        assert_eq!(with_quiet_notices("debug,sqlx::postgres::notice=info"), "debug,sqlx::postgres::notice=info");
        assert_eq!(with_quiet_notices(""), "sqlx::postgres::notice=warn");
    }
}
