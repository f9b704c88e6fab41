//! `/healthz` (the process answers), `/readyz` (database and queue reachable, reported
//! separately; a result at most a second old, shared by concurrent probes), `/metrics`
//! (Prometheus text; the database gauges are cached by a background refresher, so a scrape
//! runs no query).
//!
//! Only `/healthz` is free (a constant) and public; `/readyz` and `/metrics` show business
//! volumes and reach the database, so they belong to the ops listener (or behind
//! `server.ops_token`).

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
    /// Shutting down: open requests are finishing and no new work should be sent here.
    draining: bool,
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let answer = |result: Result<(), String>| match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    };
    let (db, queue) = state.operations.readiness_cached(CHECK_TIMEOUT).await;
    let (database, queue) = (answer(db), answer(queue));
    let draining = state.operations.draining();
    let ready = database == "ok" && queue == "ok" && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { database, queue, draining }))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // I/O-free: pool occupancy is read from the pool itself; everything else is cached.
    state.operations.refresh_pool_gauges();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
