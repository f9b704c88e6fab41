//! `/healthz` (the process answers), `/readyz` (database and queue reachable, reported
//! separately), `/metrics` (Prometheus text, backlog gauges computed at scrape time).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

#[derive(Serialize)]
struct Readiness {
    database: String,
    queue: String,
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (db, queue) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.db.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.queue.ping()),
    );
    let database = match db {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "error: timed out".to_owned(),
    };
    let queue = match queue {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "error: timed out".to_owned(),
    };
    let status = if database == "ok" && queue == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { database, queue }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if tokio::time::timeout(CHECK_TIMEOUT, refresh_backlog(&state)).await.is_err() {
        tracing::warn!("backlog gauges not refreshed: database slow");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// Gauges that describe the database, not this process: computed when scraped.
async fn refresh_backlog(state: &AppState) {
    let m = &state.metrics;
    if let Ok(counts) = state.db.order_counts().await {
        for status in crate::domain::OrderStatus::ALL {
            let n = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
            m.orders_by_status.with_label_values(&[status.as_str()]).set(n);
        }
    }
    if let Ok((count, oldest)) = state.db.inbox_backlog().await {
        m.inbox_unprocessed.set(count);
        let age = oldest.map_or(0, |t| (state.clock.now_ms() - t).max(0) / 1000);
        m.inbox_oldest_unprocessed_age.set(age);
    }
    if let Ok((_, oldest)) = state.db.pending_orders().await {
        let age = oldest.map_or(0, |t| (state.clock.now_ms() - t).max(0) / 1000);
        m.orders_oldest_pending_age.set(age);
    }
    let window = state.reconciler.settings().catch_up_days;
    let since = crate::domain::time::wechat_date(state.clock.now())
        .checked_sub_days(chrono::Days::new(u64::from(window)))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    if let Ok((last, unexplained)) = state.db.reconcile_health(&since).await {
        m.reconcile_last_success.set(last.map_or(0, |ms| ms / 1000));
        m.reconcile_unexplained.set(unexplained);
    }
    for queue in crate::queue::QueueName::ALL {
        let Ok(stats) = state.queue.stats(queue).await else { continue };
        for stat in stats {
            let state_label = match stat.title.as_str() {
                "PENDING_JOBS" => "pending",
                "SCHEDULED_JOBS" => "scheduled",
                "RUNNING_JOBS" => "running",
                "FAILED_JOBS" => "failed",
                "DONE_JOBS" => "done",
                _ => continue,
            };
            if let Ok(n) = stat.value.trim().parse::<f64>() {
                #[expect(clippy::cast_possible_truncation, reason = "job counts are whole numbers")]
                m.queue_jobs.with_label_values(&[queue.as_str(), state_label]).set(n as i64);
            }
        }
    }
    if let Ok(dead) = state.db.dead_job_counts().await {
        m.jobs_dead.reset();
        // Known kinds stay exported at 0, so "dead jobs > 0" alerts see a series at all times.
        for kind in ["apply_notification", "check_order"] {
            m.jobs_dead.with_label_values(&[kind]).set(0);
        }
        for (kind, n) in dead {
            m.jobs_dead.with_label_values(&[&kind]).set(n);
        }
    }
}
