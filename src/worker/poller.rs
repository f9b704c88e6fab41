//! The poll sweep: finds unpaid orders and unfinished refunds whose next check is due and
//! queues a `check_order` / `check_refund` job for each. Singleton across replicas through a lease; the claim itself also skips rows
//! another sweeper holds, so even two holders would not double-queue.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::PollSettings;
use crate::queue::{Envelope, Job};
use crate::storage::StorageError;

use super::context::SharedContext;

pub const LEASE: &str = "order-poller";

pub async fn run(
    ctx: SharedContext,
    holder: String,
    settings: PollSettings,
    lease_ttl: Duration,
    stop: CancellationToken,
) {
    let ttl_ms = i64::try_from(lease_ttl.as_millis()).unwrap_or(30_000);
    let interval = Duration::from_millis(settings.sweep_interval_ms);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        // Drain: while a sweep finds a full batch, more are due right now.
        loop {
            match poll_once(&ctx, &holder, &settings, ttl_ms).await {
                Ok(n) if n >= settings.batch => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "poll sweep failed; will try again");
                    break;
                }
            }
        }
    }
    let _ = ctx.db.release_lease(LEASE, &holder).await;
}

/// One sweep; returns how many orders were queued for a check.
pub async fn poll_once(
    ctx: &SharedContext,
    holder: &str,
    settings: &PollSettings,
    lease_ttl_ms: i64,
) -> Result<usize, StorageError> {
    let now = ctx.clock.now_ms();
    if !ctx.db.try_lease(LEASE, holder, now, lease_ttl_ms).await? {
        return Ok(0);
    }
    let claim_ms = i64::try_from(settings.claim_secs).unwrap_or(300).saturating_mul(1000);
    let limit = i64::try_from(settings.batch).unwrap_or(500);
    let due = ctx.db.claim_due_orders(now, now.saturating_add(claim_ms), limit).await?;
    let refunds = ctx.db.claim_due_refunds(now, now.saturating_add(claim_ms), limit).await?;
    let count = due.len().max(refunds.len());
    if due.is_empty() && refunds.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<Envelope> = due
        .into_iter()
        .map(|out_trade_no| Envelope::first(Job::CheckOrder { out_trade_no }))
        .chain(refunds.into_iter().map(|out_refund_no| Envelope::first(Job::CheckRefund { out_refund_no })))
        .collect();
    let jobs_len = jobs.len();
    if let Err(err) = ctx.queue.push_many(jobs).await {
        // The claim stands: these orders come due again after `poll.claim_secs`.
        tracing::warn!(error = %err, count, "poller cannot enqueue checks yet (queue down?)");
        return Ok(0);
    }
    ctx.metrics.poll_claimed.inc_by(jobs_len as u64);
    tracing::debug!(count, "orders queued for a check at WeChat");
    Ok(count)
}
