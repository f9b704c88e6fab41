//! Differences between WeChat's bill and our books, by class, and what was done about each.

use serde::Serialize;

use crate::text_enum;

text_enum! {
    /// Discrepancy classes; stable text (metric labels, reports, alerts).
    pub enum DiscrepancyClass ("discrepancy class") {
        /// Paid at WeChat, not here.
        MissingHere => "missing_here",
        /// Paid here, absent from WeChat's bill.
        MissingAtWechat => "missing_at_wechat",
        AmountMismatch => "amount_mismatch",
        StatusMismatch => "status_mismatch",
        TransactionMismatch => "transaction_mismatch",
        RefundMismatch => "refund_mismatch",
        DuplicateRow => "duplicate_row",
        /// The bill's summary line does not add up its rows.
        SummaryMismatch => "summary_mismatch",
        PaidAfterClose => "paid_after_close",
        /// Paid here on another WeChat day.
        DateMismatch => "date_mismatch",
        /// Paid at WeChat for an order we never created.
        UnknownOrder => "unknown_order",
    }
}

text_enum! {
    pub enum Resolution ("discrepancy resolution") {
        /// Repaired from the bill's evidence through the one guarded transition.
        Healed => "healed",
        /// Needs an operator.
        Unexplained => "unexplained",
    }
}

/// One difference found, and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    pub class: DiscrepancyClass,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub ours: Option<String>,
    pub theirs: Option<String>,
    pub bill_line: Option<i64>,
    pub resolution: Resolution,
    pub detail: String,
}

impl Discrepancy {
    /// A difference nobody has explained yet.
    pub fn unexplained(class: DiscrepancyClass, out_trade_no: Option<&str>, detail: impl Into<String>) -> Self {
        Self {
            class,
            out_trade_no: out_trade_no.map(str::to_owned),
            transaction_id: None,
            ours: None,
            theirs: None,
            bill_line: None,
            resolution: Resolution::Unexplained,
            detail: detail.into(),
        }
    }
}
