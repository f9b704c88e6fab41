//! The HTTP API: one module per resource, each exposing `router()`; here they are assembled
//! with the cross-cutting layers (load shedding, body read deadline and limit, timeout, and
//! `observe`: request id, span, error line, HTTP metrics), and served by our own accept loop
//! (`serve`).
//!
//! Two listeners: the public one (API, notify, `/healthz`) and the ops one (`/healthz`,
//! `/readyz`, `/metrics`), so the public side shows no business volumes and scrapes never
//! compete with the API's limits.

pub mod admin;
pub mod auth;
pub mod body;
pub mod connections;
pub mod error;
pub mod extract;
pub mod health;
pub mod notify;
pub mod observe;
pub mod ops_token;
pub mod orders;
pub mod refunds;
pub mod serve;
pub mod shed;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use tower_http::timeout::TimeoutLayer;

pub use observe::HttpObserver;
pub use ops_token::OpsToken;
pub use shed::Share;
pub use state::AppState;

/// Which routes the public listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// The public API plus `/healthz`.
    Full,
    /// `/healthz` only (`serve --worker-only`; its ops routes are on the ops listener).
    HealthOnly,
}

/// What the public router is built with.
#[derive(Debug, Clone)]
pub struct PublicRouter {
    pub routes: Routes,
    pub body_limit: usize,
    /// `server.body_read_timeout_ms`: the body is read within it before a share is taken.
    pub body_read_timeout: Duration,
    pub timeout: Duration,
    /// In-flight shares: the API routes' and the notify route's.
    pub api_share: Arc<Share>,
    pub notify_share: Arc<Share>,
    /// `server.ops_token`: when set, `/readyz` and `/metrics` are served here too, to its holder.
    pub ops_token: Option<Arc<OpsToken>>,
}

/// The public routes with their cross-cutting layers. Observation is the outermost layer, so a
/// request cut by the timeout, refused by the body limit or shed is still counted and logged.
/// The body is read whole ([`body`]) inside the timeout and before the shares' route layers, so
/// a slow body never holds a share.
pub fn router(state: AppState, config: PublicRouter, observer: Arc<HttpObserver>) -> Router {
    let body_read = Arc::new(body::BodyRead {
        limit: config.body_limit,
        timeout: config.body_read_timeout,
        metrics: state.metrics.clone(),
    });
    let mut app = Router::new().merge(health::liveness());
    if config.routes == Routes::Full {
        let api = Router::new()
            .merge(admin::router())
            .merge(auth::router())
            .merge(orders::router())
            .merge(refunds::router())
            .route_layer(middleware::from_fn_with_state(config.api_share, shed::limit));
        let notify = notify::router().route_layer(middleware::from_fn_with_state(config.notify_share, shed::limit));
        app = app.merge(api).merge(notify);
    }
    if let Some(token) = config.ops_token {
        app = app.merge(health::ops().route_layer(middleware::from_fn_with_state(token, ops_token::require)));
    }
    app.layer(middleware::from_fn_with_state(body_read, body::read_first))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, config.timeout))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(middleware::from_fn_with_state(observer, observe::observe))
        .with_state(state)
}

/// The ops listener's routes: `/healthz`, `/readyz`, `/metrics`, observed like the public ones.
pub fn ops_router(state: AppState, timeout: Duration, observer: Arc<HttpObserver>) -> Router {
    Router::new()
        .merge(health::liveness())
        .merge(health::ops())
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        .layer(middleware::from_fn_with_state(observer, observe::observe))
        .with_state(state)
}
