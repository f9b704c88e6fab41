//! One file per job kind; `run` dispatches an envelope to it and applies the retry policy.

mod apply_notification;
mod check_order;
mod check_refund;

use std::time::Instant;

use apalis::prelude::{AbortError, BoxDynError};
use rand::Rng;
use tracing::Instrument;

use crate::queue::{Envelope, Job};
use crate::services::refunds::RefundError;
use crate::services::sync::SyncError;
use crate::storage::StorageError;
use crate::wechat::WechatError;

use super::context::JobContext;
use super::retry::{Decision, Failure};

/// A failed attempt, classified for the retry policy: `None` means retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
    pub failure: Option<Failure>,
}

impl From<StorageError> for JobError {
    fn from(err: StorageError) -> Self {
        let failure = match err {
            StorageError::Unavailable(_) | StorageError::Unreachable { .. } => Some(Failure::Infrastructure),
            StorageError::Conflict(_) | StorageError::Changed(_) | StorageError::Other(_) => Some(Failure::Transient),
            StorageError::NotFound | StorageError::Corrupt(_) => None,
        };
        Self { message: err.to_string(), failure }
    }
}

impl From<WechatError> for JobError {
    fn from(err: WechatError) -> Self {
        let failure = if err.rate_limited() {
            Some(Failure::RateLimited)
        } else if err.retryable() {
            Some(Failure::Transient)
        } else {
            None
        };
        Self { failure, message: err.to_string() }
    }
}

impl From<SyncError> for JobError {
    fn from(err: SyncError) -> Self {
        match err {
            SyncError::Wechat(e) => e.into(),
            SyncError::Storage(e) => e.into(),
        }
    }
}

impl From<RefundError> for JobError {
    fn from(err: RefundError) -> Self {
        match err {
            RefundError::Wechat(e) | RefundError::RefusedByWechat(e) => e.into(),
            RefundError::Storage(e) => e.into(),
            other => Self { message: other.to_string(), failure: None },
        }
    }
}

impl JobError {
    /// A payload that cannot be what its kind says: retrying cannot help.
    fn bad_payload(err: impl std::fmt::Display) -> Self {
        Self { message: format!("bad job payload: {err}"), failure: None }
    }
}

/// Runs one execution of a job and decides what happens after a failure: re-enqueue with
/// backoff (our policy, identical on both queue backends) or the dead-letter table.
pub async fn run(ctx: &JobContext, envelope: Envelope) -> Result<(), BoxDynError> {
    let kind = envelope.job.kind().as_str();
    let span =
        tracing::info_span!("job", job.kind = kind, job.id = %envelope.job.subject(), job.attempt = envelope.attempt);
    async move {
        ctx.metrics.jobs_started.with_label_values(&[kind]).inc();
        let started = Instant::now();
        let result = match &envelope.job {
            Job::ApplyNotification { inbox_id } => apply_notification::run(ctx, *inbox_id).await,
            Job::CheckOrder { out_trade_no } => check_order::run(ctx, out_trade_no).await,
            Job::CheckRefund { out_refund_no } => check_refund::run(ctx, out_refund_no).await,
        };
        ctx.metrics.job_duration.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        let Err(err) = result else {
            ctx.metrics.jobs_finished.with_label_values(&[kind, "succeeded"]).inc();
            return Ok(());
        };
        let decision = match err.failure {
            Some(failure) => ctx.retry.decide(envelope.attempt, failure, rand::rng().random::<f64>()),
            None => Decision::Dead,
        };
        match decision {
            Decision::RetryAfter(delay) => {
                let next = Envelope { job: envelope.job.clone(), attempt: envelope.attempt + 1 };
                match ctx.queue.push(next, Some(delay)).await {
                    Ok(()) => {
                        if let Job::ApplyNotification { inbox_id } = envelope.job {
                            let due_ms = ctx.clock.now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                            if let Err(err) = ctx.db.inbox_job_due(inbox_id, due_ms).await {
                                // The sweeper may enqueue a second job meanwhile: applied once anyway.
                                tracing::warn!(error = %err, notify.inbox_id = inbox_id, "could not record the retry's due time");
                            }
                        }
                        ctx.metrics.jobs_finished.with_label_values(&[kind, "retried"]).inc();
                        tracing::warn!(error = %err, delay_ms = delay.as_millis() as u64, "job failed, retry scheduled");
                        Ok(())
                    }
                    Err(push_err) => {
                        // The queue itself is down: this execution is not acknowledged, so the
                        // backend (or the inbox sweeper) runs it again once the queue is back.
                        tracing::error!(error = %err, queue_error = %push_err, "job failed and its retry cannot be enqueued");
                        let error: BoxDynError =
                            Box::new(JobError { message: err.message, failure: Some(Failure::Infrastructure) });
                        Err(error)
                    }
                }
            }
            Decision::Dead => bury(ctx, &envelope, &err.message).await,
        }
    }
    .instrument(span)
    .await
}

/// Moves a job to the dead-letter table (visible in metrics and `wxpay-recon jobs dead`).
///
/// The line saying so carries `dead_job.id`, the row id `jobs dead` lists and `jobs retry`
/// takes, beside the span's `job.kind` and `job.id` (what the job is about, which `jobs dead`
/// prints too): an operator goes from the log to the command and back by either id.
async fn bury(ctx: &JobContext, envelope: &Envelope, message: &str) -> Result<(), BoxDynError> {
    let kind = envelope.job.kind();
    ctx.metrics.jobs_finished.with_label_values(&[kind.as_str(), "dead"]).inc();
    if let Job::ApplyNotification { inbox_id } = envelope.job
        && let Err(err) = ctx.db.inbox_job_dead(inbox_id, ctx.clock.now_ms()).await
    {
        // The sweeper may then enqueue it again after a sweep age; it dies again, nothing lost.
        tracing::warn!(error = %err, notify.inbox_id = inbox_id, "could not mark the inbox entry's job dead");
    }
    let payload = serde_json::to_string(&envelope.job)?;
    match ctx.db.insert_dead_job(kind, &payload, i64::from(envelope.attempt), message, ctx.clock.now_ms()).await {
        Ok(dead_job_id) => {
            tracing::error!(
                error = message,
                dead_job.id = dead_job_id,
                "job is dead after {} attempt(s)",
                envelope.attempt
            );
        }
        Err(err) => {
            tracing::error!(error = message, record_error = %err, "job is dead after {} attempt(s) and could not be recorded", envelope.attempt);
            return Err(Box::new(err));
        }
    }
    Err(AbortError::new(JobError { message: message.to_owned(), failure: None }).into())
}
