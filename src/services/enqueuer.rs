//! Hands apply jobs to the queue off the request path.
//!
//! The notify handler answers WeChat as soon as the inbox commit is done; the job push happens
//! here, batched, in the background. A queue that is slow or down therefore never delays (or
//! fails) an acknowledgement, and nothing is lost either: the sweeper re-enqueues any inbox row
//! left unprocessed.

use tokio::sync::mpsc;

use crate::queue::{Envelope, JobQueue};
use crate::telemetry::metrics::Metrics;

/// Jobs pushed per queue round trip at most.
const BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct Enqueuer {
    tx: mpsc::Sender<Envelope>,
    metrics: Metrics,
}

impl Enqueuer {
    /// Starts the background pusher with room for `capacity` waiting jobs.
    pub fn spawn(queue: JobQueue, capacity: usize, metrics: Metrics) -> Self {
        let (tx, mut rx) = mpsc::channel::<Envelope>(capacity.max(BATCH));
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let count = batch.len();
                if let Err(err) = queue.push_many(std::mem::take(&mut batch)).await {
                    task_metrics.notify_enqueue_failures.inc_by(count as u64);
                    tracing::warn!(error = %err, count, "apply jobs not enqueued; the sweeper will pick them up");
                }
            }
        });
        Self { tx, metrics }
    }

    /// Queues a job without waiting; if the backlog is full the job is left to the sweeper.
    pub fn enqueue(&self, job: Envelope) {
        if self.tx.try_send(job).is_err() {
            self.metrics.notify_enqueue_failures.inc();
            tracing::warn!("enqueue backlog full; the sweeper will pick the job up");
        }
    }
}
