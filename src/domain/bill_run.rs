//! The outcome of reconciling one WeChat day.

use serde::Serialize;

use crate::text_enum;

text_enum! {
    pub enum BillRunStatus ("bill run status") {
        /// The bill and our books agree.
        Clean => "clean",
        /// Compared; differences recorded (healed or not).
        Discrepancies => "discrepancies",
        /// WeChat has no bill for the day (no trades); compared with an empty bill.
        NoBill => "no_bill",
        /// WeChat still said STATEMENT_CREATING past noon of the next day, and our books have
        /// no order (of any status) and no refund that day: recorded as empty without WeChat's
        /// word for it (a trade-less day's bill is sometimes "being created" forever). Logged
        /// and counted as a warning, asked again every few hours within the catch-up window
        /// (a bill that comes replaces it), and never counted as a compared day.
        AssumedEmpty => "assumed_empty",
        /// WeChat has not generated the bill yet; tried again later.
        NotReady => "not_ready",
        /// The run failed (download, hash, parse); tried again later.
        Failed => "failed",
    }
}

impl BillRunStatus {
    /// The statuses of a day whose comparison is done (a re-run replaces it, a failure does not).
    pub const FINISHED: [BillRunStatus; 4] =
        [BillRunStatus::Clean, BillRunStatus::Discrepancies, BillRunStatus::NoBill, BillRunStatus::AssumedEmpty];

    pub fn is_finished(self) -> bool {
        Self::FINISHED.contains(&self)
    }
}

/// The outcome of one run of a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillRun {
    /// The WeChat (Asia/Shanghai) day, `YYYY-MM-DD`.
    pub bill_date: String,
    pub status: BillRunStatus,
    pub bill_rows: i64,
    pub orders_compared: i64,
    pub discrepancies: i64,
    pub unexplained: i64,
    pub healed: i64,
    pub bill_sha1: Option<String>,
    pub error: Option<String>,
    pub attempts: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub next_attempt_at_ms: Option<i64>,
}

/// Our side of one payment of the day, as compact as comparing a million rows needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidOrder {
    pub out_trade_no: String,
    pub amount: super::Fen,
    pub transaction_id: Option<String>,
    pub refunded: super::Fen,
}
