//! `/healthz` (the process answers), `/readyz` (database and queue reachable, reported
//! separately), `/metrics` (Prometheus text, backlog gauges computed at scrape time).
//!
//! Only `/healthz` is free (a constant) and public; `/readyz` and `/metrics` query the database
//! and show business volumes, so they belong to the ops listener (or behind `server.ops_token`).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `/healthz`: on every listener.
pub fn liveness() -> Router<AppState> {
    Router::new().route("/healthz", get(|| async { "ok" }))
}

/// `/readyz` and `/metrics`: the ops routes.
pub fn ops() -> Router<AppState> {
    Router::new().route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

#[derive(Serialize)]
struct Readiness {
    database: String,
    queue: String,
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let answer = |result: Result<(), String>| match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    };
    let (db, queue) = state.operations.readiness(CHECK_TIMEOUT).await;
    let (database, queue) = (answer(db), answer(queue));
    let status = if database == "ok" && queue == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { database, queue }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if tokio::time::timeout(CHECK_TIMEOUT, state.operations.refresh_gauges()).await.is_err() {
        tracing::warn!("backlog gauges not refreshed: database slow");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
