//! The jobs the worker runs. Payloads carry identifiers only; everything else is re-read from
//! the database when the job runs, so a job that runs twice (at-least-once) or late sees the
//! current truth.

use serde::{Deserialize, Serialize};

use crate::domain::JobKind;

/// Which queue (and so which worker pool) a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueName {
    /// Applying stored notifications: latency-sensitive, many small jobs.
    Apply,
    /// Checking pending orders at WeChat: outbound calls, slower, rate-limited; kept apart so
    /// a slow WeChat never delays applying notifications.
    Poll,
}

impl QueueName {
    pub const ALL: [QueueName; 2] = [QueueName::Apply, QueueName::Poll];

    /// Stable name: renaming it would strand queued jobs.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Apply => "apply",
            QueueName::Poll => "poll",
        }
    }
}

/// One unit of background work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Apply the inbox entry `inbox_id` to its order (idempotent): an entry its batch could not
    /// apply, deferred to this job so that it retries alone (`worker::inbox_applier`).
    ApplyNotification { inbox_id: i64 },
    /// Ask WeChat about the unpaid order `out_trade_no` and act on the answer.
    CheckOrder { out_trade_no: String },
    /// Ask WeChat about the unfinished refund `out_refund_no` (or apply for it again).
    CheckRefund { out_refund_no: String },
}

impl Job {
    /// Stable, bounded label for metrics, logs and `dead_jobs.kind` (the serde tag above is
    /// the same text; a test keeps them together).
    pub fn kind(&self) -> JobKind {
        match self {
            Job::ApplyNotification { .. } => JobKind::ApplyNotification,
            Job::CheckOrder { .. } => JobKind::CheckOrder,
            Job::CheckRefund { .. } => JobKind::CheckRefund,
        }
    }

    pub fn queue(&self) -> QueueName {
        match self {
            Job::ApplyNotification { .. } => QueueName::Apply,
            Job::CheckOrder { .. } | Job::CheckRefund { .. } => QueueName::Poll,
        }
    }

    /// What the job is about, for the `job.id` log field: the inbox id or the merchant's
    /// order/refund number (identifiers only, never payload data).
    pub fn subject(&self) -> String {
        match self {
            Job::ApplyNotification { inbox_id } => inbox_id.to_string(),
            Job::CheckOrder { out_trade_no } => out_trade_no.clone(),
            Job::CheckRefund { out_refund_no } => out_refund_no.clone(),
        }
    }
}

/// A job plus our own attempt counter (the backends' counters differ and are not trusted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub job: Job,
    /// 1 for the first execution; incremented each time our retry policy re-enqueues it.
    pub attempt: u32,
}

impl Envelope {
    pub fn first(job: Job) -> Self {
        Self { job, attempt: 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape_is_stable() {
        let env = Envelope::first(Job::ApplyNotification { inbox_id: 7 });
        let json = serde_json::to_string(&env).expect("json");
        assert_eq!(json, r#"{"job":{"kind":"apply_notification","inbox_id":7},"attempt":1}"#);
        assert_eq!(serde_json::from_str::<Envelope>(&json).expect("parse"), env);
    }

    #[test]
    fn the_payload_tag_is_the_job_kind() {
        for job in [
            Job::ApplyNotification { inbox_id: 1 },
            Job::CheckOrder { out_trade_no: "ORDER0001".into() },
            Job::CheckRefund { out_refund_no: "R1".into() },
        ] {
            let json = serde_json::to_value(&job).expect("json");
            assert_eq!(json["kind"], job.kind().as_str());
        }
    }
}
