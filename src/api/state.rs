//! What handlers share: the services, plus the handles health and metrics need.

use crate::clock::Clock;
use crate::queue::JobQueue;
use crate::services::ingest::NotifyIngest;
use crate::services::login::LoginService;
use crate::services::orders::OrderService;
use crate::services::reconcile::Reconciler;
use crate::services::refunds::RefundService;
use crate::services::sync::OrderSync;
use crate::storage::Db;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct AppState {
    pub login: LoginService,
    pub orders: OrderService,
    pub sync: OrderSync,
    pub reconciler: Reconciler,
    pub refunds: RefundService,
    pub ingest: NotifyIngest,
    pub db: Db,
    pub queue: JobQueue,
    pub metrics: Metrics,
    pub clock: Clock,
    /// `server.admin_token`, if set: guards the admin routes.
    pub admin_token: Option<std::sync::Arc<crate::config::Secret<String>>>,
}
