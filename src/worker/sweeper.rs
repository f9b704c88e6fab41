//! The inbox sweeper: re-enqueues notifications that were stored but not applied within
//! `worker.sweep_min_age_ms` (queue down at ingest, crash between commit and enqueue, a job
//! lost with a dead worker). Singleton across replicas through a lease.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::{Envelope, Job};

use super::context::SharedContext;

const SWEEP_LIMIT: i64 = 1000;
pub const LEASE: &str = "inbox-sweeper";

pub async fn run(
    ctx: SharedContext,
    holder: String,
    interval: Duration,
    min_age: Duration,
    lease_ttl: Duration,
    stop: CancellationToken,
) {
    let ttl_ms = i64::try_from(lease_ttl.as_millis()).unwrap_or(30_000);
    let min_age_ms = i64::try_from(min_age.as_millis()).unwrap_or(10_000);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(err) = sweep_once(&ctx, &holder, min_age_ms, ttl_ms).await {
            tracing::warn!(error = %err, "inbox sweep failed; will try again");
        }
    }
    let _ = ctx.db.release_lease(LEASE, &holder).await;
}

/// One pass; returns how many entries were re-enqueued.
pub async fn sweep_once(
    ctx: &SharedContext,
    holder: &str,
    min_age_ms: i64,
    ttl_ms: i64,
) -> Result<usize, crate::storage::StorageError> {
    let now = ctx.clock.now_ms();
    if !ctx.db.try_lease(LEASE, holder, now, ttl_ms).await? {
        return Ok(0);
    }
    let ids = ctx.db.claim_stale_inbox(now - min_age_ms, now, SWEEP_LIMIT).await?;
    let jobs: Vec<Envelope> = ids.iter().map(|&id| Envelope::first(Job::ApplyNotification { inbox_id: id })).collect();
    let pushed = jobs.len();
    if let Err(err) = ctx.queue.push_many(jobs).await {
        // The claim stands: these rows are tried again after another sweep age.
        tracing::warn!(error = %err, count = pushed, "sweeper cannot enqueue yet (queue down?)");
        return Ok(0);
    }
    if pushed > 0 {
        ctx.metrics.inbox_swept.inc_by(pushed as u64);
        tracing::info!(count = pushed, "re-enqueued unprocessed notifications");
    }
    Ok(pushed)
}
