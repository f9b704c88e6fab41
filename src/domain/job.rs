//! The kinds of background work, enumerated once: metrics pre-create a series per kind, the
//! dead-letter table and logs name them, and the worker registers each.

use crate::text_enum;

text_enum! {
    pub enum JobKind ("job kind") {
        /// Apply one stored notification to its order.
        ApplyNotification => "apply_notification",
        /// Ask WeChat about an unpaid order.
        CheckOrder => "check_order",
        /// Ask WeChat about an unfinished refund (or apply for it again).
        CheckRefund => "check_refund",
    }
}

/// A job that exhausted its attempts, waiting for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJob {
    pub id: i64,
    pub kind: JobKind,
    /// The job as queued (JSON), so it can be queued again.
    pub payload: String,
    pub attempts: i64,
    pub last_error: String,
    pub died_at_ms: i64,
}
