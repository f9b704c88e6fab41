//! Slow SQL statements, logged by name and duration, never as text.
//!
//! sqlx reports a statement slower than its threshold (1 s) at WARN on target `sqlx::query`
//! with the whole statement pretty-printed in `db.statement`: the apalis fetch alone is a
//! 437-line, 7.6 KB log entry, repeated under exactly the load where logs matter most. The
//! subscriber drops those events from the normal output and this layer writes one short line
//! instead, from the fields sqlx provides: `summary` (the statement's first four words, which
//! name it), the elapsed time and the row counts.

use std::fmt::Debug;
use std::io::Write;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::config::LogFormat;

/// The target sqlx logs statements on.
pub const TARGET: &str = "sqlx::query";

/// Writes one compact line per slow statement to stderr, in the configured format.
#[derive(Debug, Clone, Copy)]
pub struct SlowStatements {
    pub format: LogFormat,
}

impl<S: Subscriber> Layer<S> for SlowStatements {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = self.line(&fields, event.metadata().level());
        // stderr is where every log line goes; a failed write has nowhere else to be reported.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

impl SlowStatements {
    fn line(&self, f: &Fields, level: &tracing::Level) -> String {
        let statement = f.summary.trim_end_matches(" …");
        let elapsed_ms = (f.elapsed_secs * 1_000_000.0).round() / 1000.0;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        match self.format {
            LogFormat::Json => serde_json::json!({
                "timestamp": now,
                "level": level.as_str(),
                "target": "wxpay_recon::db",
                "message": "slow statement",
                "statement": statement,
                "elapsed_ms": elapsed_ms,
                "rows_affected": f.rows_affected,
                "rows_returned": f.rows_returned,
            })
            .to_string(),
            LogFormat::Pretty | LogFormat::Compact => format!(
                "{now} {level:>5} wxpay_recon::db: slow statement statement={statement:?} elapsed_ms={elapsed_ms} \
                 rows_affected={} rows_returned={}",
                f.rows_affected, f.rows_returned
            ),
        }
    }
}

/// The fields of sqlx's statement event this layer keeps (`db.statement` is not one).
#[derive(Debug, Default)]
struct Fields {
    summary: String,
    elapsed_secs: f64,
    rows_affected: u64,
    rows_returned: u64,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" {
            value.clone_into(&mut self.summary);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = value;
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "rows_affected" => self.rows_affected = value,
            "rows_returned" => self.rows_returned = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "summary" && self.summary.is_empty() {
            self.summary = format!("{value:?}").trim_matches('"').to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_statement_and_its_duration_and_holds_no_sql_body() {
        let fields = Fields {
            summary: "UPDATE Jobs SET status='Queued' …".into(),
            elapsed_secs: 1.234_567_8,
            rows_affected: 3,
            rows_returned: 0,
        };
        let json: serde_json::Value =
            serde_json::from_str(&SlowStatements { format: LogFormat::Json }.line(&fields, &tracing::Level::WARN))
                .unwrap();
        assert_eq!(json["statement"], "UPDATE Jobs SET status='Queued'");
        assert_eq!(json["elapsed_ms"], 1234.568);
        assert_eq!(json["level"], "WARN");
        assert_eq!(json["rows_affected"], 3);
        assert!(json.get("db.statement").is_none());
        let text = SlowStatements { format: LogFormat::Compact }.line(&fields, &tracing::Level::WARN);
        assert!(text.contains("elapsed_ms=1234.568") && text.contains("UPDATE Jobs"), "{text}");
    }
}
