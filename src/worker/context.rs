//! What jobs run with: their own context, not the HTTP state.

use std::sync::Arc;

use crate::clock::Clock;
use crate::queue::JobQueue;
use crate::services::apply::Applier;
use crate::services::inbox_signal::InboxSignal;
use crate::services::reconcile::Reconciler;
use crate::services::refunds::RefundService;
use crate::services::sync::OrderSync;
use crate::storage::Db;
use crate::telemetry::metrics::Metrics;

use super::retry::RetryPolicy;

#[derive(Debug, Clone)]
pub struct JobContext {
    pub db: Db,
    pub queue: JobQueue,
    pub applier: Applier,
    /// Rung by the notify handler of this process when an entry is stored.
    pub inbox_signal: InboxSignal,
    pub sync: OrderSync,
    pub reconciler: Reconciler,
    pub refunds: RefundService,
    pub clock: Clock,
    pub metrics: Metrics,
    pub retry: RetryPolicy,
}

pub type SharedContext = Arc<JobContext>;
