//! The HTTP API: one module per resource, each exposing `router()`; here they are assembled
//! with the cross-cutting layers (body limit, timeout, and `observe`: request id, span, error
//! line, HTTP metrics).

pub mod admin;
pub mod auth;
pub mod error;
pub mod extract;
pub mod health;
pub mod notify;
pub mod observe;
pub mod orders;
pub mod refunds;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use tower_http::timeout::TimeoutLayer;

pub use observe::HttpObserver;
pub use state::AppState;

/// Which routes a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// The public API plus health and metrics.
    Full,
    /// Health and metrics only (`serve --worker-only`).
    HealthOnly,
}

/// The routes with their cross-cutting layers. Observation is the outermost layer, so a
/// request cut by the timeout or refused by the body limit is still counted and logged.
pub fn router(
    state: AppState,
    routes: Routes,
    body_limit: usize,
    timeout: Duration,
    observer: Arc<HttpObserver>,
) -> Router {
    let mut app = Router::new().merge(health::router());
    if routes == Routes::Full {
        app = app
            .merge(admin::router())
            .merge(auth::router())
            .merge(orders::router())
            .merge(refunds::router())
            .merge(notify::router());
    }
    app.layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(observer, observe::observe))
        .with_state(state)
}
