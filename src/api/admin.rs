//! `GET /admin/jobs` (bearer `server.admin_token`): a plain server-rendered page of the job
//! queues as apalis counts them and of the dead jobs waiting for an operator, with their last
//! error. Read-only: retrying stays with `wxpay-recon jobs retry`.
//!
//! Not apalis-board: its UI is a single-page app that loads its assets from `/` and calls its
//! own JSON API from the browser, which neither lives under a path prefix nor sends our bearer
//! token. This page shows the same per-queue statistics (apalis' `Metrics::fetch_by_queue`,
//! for the SQLite and the Redis queue alike) plus our `dead_jobs` table.

use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use super::error::ApiError;
use super::extract::Admin;
use super::state::AppState;
use crate::domain::time::{from_ms, to_wechat_rfc3339};

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/jobs", get(jobs))
}

async fn jobs(_: Admin, State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let dead = state.operations.dead_jobs().await?;
    let mut page = String::from(concat!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>wxpay-recon jobs</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}",
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}",
        "td.err,td.payload{font-family:monospace;white-space:pre-wrap}</style></head><body>\n",
        "<h1>Job queues</h1>\n"
    ));
    for queue in state.operations.queues().await {
        let _ = writeln!(page, "<h2>{}</h2>", escape(&queue.name));
        match queue.stats {
            Ok(stats) if stats.is_empty() => page.push_str("<p>No statistics reported.</p>\n"),
            Ok(stats) => {
                page.push_str("<table><tr><th>statistic</th><th>value</th></tr>\n");
                for stat in stats {
                    let _ = writeln!(page, "<tr><td>{}</td><td>{}</td></tr>", escape(&stat.title), escape(&stat.value));
                }
                page.push_str("</table>\n");
            }
            Err(err) => {
                let _ = writeln!(page, "<p>Queue statistics unavailable: {}</p>", escape(&err));
            }
        }
    }
    let _ = writeln!(page, "<h1>Dead jobs ({})</h1>", dead.len());
    if dead.is_empty() {
        page.push_str("<p>None.</p>\n");
    } else {
        page.push_str(concat!(
            "<p>Retry with <code>wxpay-recon jobs retry &lt;id&gt;</code> or <code>--all</code> once the cause ",
            "is fixed.</p>\n<table><tr><th>id</th><th>kind</th><th>attempts</th><th>died</th><th>payload</th>",
            "<th>last error</th></tr>\n"
        ));
        for job in &dead {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"payload\">{}</td><td class=\"err\">{}</td></tr>",
                job.id,
                escape(job.kind.as_str()),
                job.attempts,
                escape(&to_wechat_rfc3339(from_ms(job.died_at_ms))),
                escape(&job.payload),
                escape(&job.last_error),
            );
        }
        page.push_str("</table>\n");
    }
    page.push_str("</body></html>\n");
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(page)))
}

/// Text into HTML: job errors and payloads are data, never markup.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_in_errors_is_escaped() {
        assert_eq!(
            escape(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
