//! The batch applier: a loop per claimer that applies the inbox in batches
//! (`Applier::apply_inbox_batch`) for as long as entries wait, then sleeps until this process's
//! notify handler signals a new one or the poll interval passes.
//!
//! Failures are split by what can help. The database unreachable: back off and try the batch
//! again (nothing was claimed for long: the transaction rolled back). Anything else, a panic
//! included, may be one bad entry: the entries of the batch are applied one by one, and each
//! one that still fails is handed to its own `ApplyNotification` job, which retries with backoff
//! and dead-letters, while the batch moves on without it.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ApplySettings;
use crate::queue::{Envelope, Job};

use super::context::SharedContext;

/// Longest pause after consecutive failed batches.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a batch failed, as `wxpay_apply_batch_failures_total` labels it.
pub const FAILURE_REASONS: &[&str] = &["unavailable", "failed", "panicked"];

/// The pause after `failures` consecutive failed batches: short at first (one bad entry is
/// dealt with by the one-by-one pass), then growing, so that a batch path that fails every time
/// (not one entry's fault) does not spin.
fn pause_after(failures: u32) -> Duration {
    (Duration::from_millis(50) * 2u32.saturating_pow(failures.min(8))).min(MAX_BACKOFF)
}

/// Runs one claimer until `stop` fires. Several may run at once: their claims are disjoint.
pub async fn run(ctx: SharedContext, settings: ApplySettings, claimer: usize, stop: CancellationToken) {
    for reason in FAILURE_REASONS {
        let _ = ctx.metrics.apply_batch_failures.with_label_values(&[reason]);
    }
    let (size, hold) = (settings.batch_size, settings.hold_before_commit());
    let mut failures: u32 = 0;
    while !stop.is_cancelled() {
        let span = tracing::info_span!("apply_batch", apply.claimer = claimer);
        let attempt = AssertUnwindSafe(ctx.applier.apply_inbox_batch(size, hold)).catch_unwind();
        let reason = match attempt.instrument(span.clone()).await {
            Ok(Ok(applied)) => {
                failures = 0;
                if applied < size {
                    wait_for_work(&ctx, settings.poll_interval(), &stop).await;
                }
                continue;
            }
            Ok(Err(err)) if err.is_unavailable() => {
                tracing::warn!(parent: &span, error = %err, "inbox batch failed: database unavailable");
                "unavailable"
            }
            Ok(Err(err)) => {
                tracing::warn!(parent: &span, error = %err, "inbox batch failed; applying its entries one by one");
                one_by_one(&ctx, size).instrument(span).await;
                "failed"
            }
            Err(_) => {
                tracing::error!(parent: &span, "inbox batch panicked; applying its entries one by one");
                one_by_one(&ctx, size).instrument(span).await;
                "panicked"
            }
        };
        ctx.metrics.apply_batch_failures.with_label_values(&[reason]).inc();
        failures = failures.saturating_add(1);
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(pause_after(failures)) => {}
        }
    }
}

/// Returns when an entry may be waiting: signalled by this process's notify handler, or found
/// by a poll every `poll` (one index probe, no transaction), or at shutdown.
async fn wait_for_work(ctx: &SharedContext, poll: Duration, stop: &CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = ctx.inbox_signal.wait() => return,
            () = tokio::time::sleep(poll) => {}
        }
        // An error is the next batch's to report (and back off from).
        if ctx.db.has_unapplied_inbox().await.unwrap_or(true) {
            return;
        }
    }
}

/// Applies the oldest waiting entries (what the failed batch most likely held) each in its own
/// transaction; an entry that fails alone is deferred to its own retried job.
async fn one_by_one(ctx: &SharedContext, limit: usize) {
    let ids = match ctx.db.unapplied_inbox_ids(limit).await {
        Ok(ids) => ids,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list the inbox entries of the failed batch; will try the batch again");
            return;
        }
    };
    for id in ids {
        let error = match AssertUnwindSafe(ctx.applier.apply_stored(id)).catch_unwind().await {
            Ok(Ok(_)) => continue,
            Ok(Err(err)) if err.is_unavailable() => {
                // Not this entry's fault: leave the rest to the next batch, after the pause.
                tracing::warn!(error = %err, "database unavailable while applying one by one");
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "applying it panicked".to_owned(),
        };
        defer(ctx, id, &error).await;
    }
}

/// Hands entry `id` to its own `ApplyNotification` job. If the queue refuses it, the entry is
/// still marked deferred, and the sweeper enqueues it after `worker.sweep_min_age_ms`.
async fn defer(ctx: &SharedContext, id: i64, error: &str) {
    match ctx.db.defer_inbox(id, ctx.clock.now_ms()).await {
        Ok(true) => {}
        // Another claimer deferred it first; its job is already queued.
        Ok(false) => return,
        Err(err) => {
            tracing::warn!(notify.inbox_id = id, error = %err, "cannot defer the inbox entry; the next batch takes it again");
            return;
        }
    }
    ctx.metrics.inbox_deferred.inc();
    tracing::warn!(notify.inbox_id = id, error, "inbox entry handed to its own retried job");
    if let Err(err) = ctx.queue.push(Envelope::first(Job::ApplyNotification { inbox_id: id }), None).await {
        tracing::warn!(notify.inbox_id = id, error = %err, "deferred entry not enqueued; the sweeper will");
    }
}
