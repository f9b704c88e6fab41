//! The HTTP API: one module per resource, each exposing `router()`; here they are assembled
//! with the cross-cutting layers (body limit, timeout, tracing, HTTP metrics).

pub mod admin;
pub mod auth;
pub mod error;
pub mod extract;
pub mod health;
pub mod notify;
pub mod orders;
pub mod refunds;
pub mod state;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use state::AppState;

/// Which routes a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// The public API plus health and metrics.
    Full,
    /// Health and metrics only (`serve --worker-only`).
    HealthOnly,
}

pub fn router(state: AppState, routes: Routes, body_limit: usize, timeout: Duration) -> Router {
    let mut app = Router::new().merge(health::router());
    if routes == Routes::Full {
        app = app
            .merge(admin::router())
            .merge(auth::router())
            .merge(orders::router())
            .merge(refunds::router())
            .merge(notify::router());
    }
    app.layer(middleware::from_fn_with_state(state.clone(), record_http))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
            tracing::info_span!("http", http.method = %req.method(), http.route = route)
        }))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Counts and times every request by matched route template (bounded), never the raw path.
async fn record_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    state.metrics.http_requests.with_label_values(&[&route, &method, &class]).inc();
    state.metrics.http_duration.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    response
}
