//! What handlers share: the services, plus the handles health and metrics need.

use std::sync::Arc;

use crate::clock::Clock;
use crate::queue::JobQueue;
use crate::services::ingest::NotifyIngest;
use crate::services::login::LoginService;
use crate::services::operations::Operations;
use crate::services::orders::OrderService;
use crate::services::reconcile::Reconciler;
use crate::services::refunds::RefundService;
use crate::services::sync::OrderSync;
use crate::storage::Db;
use crate::telemetry::metrics::Metrics;

/// axum clones the state for every request: one `Arc`, not a copy of every service.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// Everything handlers use (reached through [`AppState`]).
#[derive(Debug)]
pub struct Services {
    pub login: LoginService,
    pub orders: OrderService,
    pub sync: OrderSync,
    pub reconciler: Reconciler,
    pub refunds: RefundService,
    pub ingest: NotifyIngest,
    pub operations: Operations,
    /// For the worker role, the test harness and tools; handlers go through the services.
    pub db: Db,
    pub queue: JobQueue,
    pub metrics: Metrics,
    pub clock: Clock,
    /// `server.admin_token`, if set: guards the admin routes.
    pub admin_token: Option<Arc<crate::config::Secret<String>>>,
}
