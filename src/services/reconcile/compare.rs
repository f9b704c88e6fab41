//! The comparison of one day's bill with our books, row by row, without I/O: the caller feeds
//! bill rows as they are parsed and gets back every difference, plus the rows that need a
//! database look-up (a payment WeChat has and our day does not: heal it, or explain why not).

use std::collections::{HashMap, HashSet};

use crate::bill::{BillRow, BillSummary};
use crate::storage::reconcile::{Discrepancy, PaidOrder};

use super::ours::OursTable;

/// A bill payment row whose order is not among our payments of that day.
#[derive(Debug, Clone)]
pub struct Unmatched {
    pub line: u64,
    pub row: BillRow,
}

/// Discrepancy classes; stable strings (metrics labels, reports, alerts).
pub mod class {
    pub const MISSING_HERE: &str = "missing_here";
    pub const MISSING_AT_WECHAT: &str = "missing_at_wechat";
    pub const AMOUNT_MISMATCH: &str = "amount_mismatch";
    pub const STATUS_MISMATCH: &str = "status_mismatch";
    pub const TRANSACTION_MISMATCH: &str = "transaction_mismatch";
    pub const REFUND_MISMATCH: &str = "refund_mismatch";
    pub const DUPLICATE_ROW: &str = "duplicate_row";
    pub const SUMMARY_MISMATCH: &str = "summary_mismatch";
    pub const PAID_AFTER_CLOSE: &str = "paid_after_close";
    pub const DATE_MISMATCH: &str = "date_mismatch";
    pub const UNKNOWN_ORDER: &str = "unknown_order";

    pub const ALL: [&str; 11] = [
        MISSING_HERE,
        MISSING_AT_WECHAT,
        AMOUNT_MISMATCH,
        STATUS_MISMATCH,
        TRANSACTION_MISMATCH,
        REFUND_MISMATCH,
        DUPLICATE_ROW,
        SUMMARY_MISMATCH,
        PAID_AFTER_CLOSE,
        DATE_MISMATCH,
        UNKNOWN_ORDER,
    ];
}

/// Running totals of the detail rows, checked against the bill's own summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    count: u64,
    settlement_total_fen: i64,
    refund_total_fen: i64,
    fee_e5: i64,
    order_total_fen: i64,
}

/// One of our refunds applied for on the bill's day.
#[derive(Debug)]
struct OurRefund {
    out_trade_no: String,
    amount_fen: i64,
    seen: bool,
}

#[derive(Debug)]
pub struct Comparator {
    ours: OursTable,
    our_refunds: HashMap<String, OurRefund>,
    healed_before: HashSet<String>,
    /// Keys of rows not in `ours` seen so far (duplicates among them).
    other_keys: HashSet<String>,
    totals: Totals,
    summary_seen: bool,
    found: Vec<Discrepancy>,
    unmatched: Vec<Unmatched>,
}

/// What the comparison found once the bill is fully read.
#[derive(Debug, Default)]
pub struct Comparison {
    pub rows: u64,
    pub orders_compared: u64,
    pub discrepancies: Vec<Discrepancy>,
    pub unmatched: Vec<Unmatched>,
}

fn unexplained(class: &str, no: Option<&str>, detail: String) -> Discrepancy {
    Discrepancy {
        class: class.to_owned(),
        out_trade_no: no.map(str::to_owned),
        transaction_id: None,
        ours: None,
        theirs: None,
        bill_line: None,
        resolution: "unexplained".into(),
        detail,
    }
}

impl Comparator {
    /// `healed_before`: orders an earlier run of this date healed (reported again as healed).
    pub fn new(healed_before: HashSet<String>) -> Self {
        Self {
            ours: OursTable::default(),
            our_refunds: HashMap::new(),
            healed_before,
            other_keys: HashSet::new(),
            totals: Totals::default(),
            summary_seen: false,
            found: Vec::new(),
            unmatched: Vec::new(),
        }
    }

    /// One of our orders paid on the bill's day.
    pub fn add_ours(&mut self, order: PaidOrder) {
        self.ours.push(order);
    }

    /// One of our refunds applied for on the bill's day (CLOSED ones are not in bills).
    pub fn add_our_refund(&mut self, out_refund_no: String, out_trade_no: String, amount_fen: i64) {
        self.our_refunds.insert(out_refund_no, OurRefund { out_trade_no, amount_fen, seen: false });
    }

    pub fn ours_count(&self) -> usize {
        self.ours.len()
    }

    /// One detail row of the bill, at `line`.
    pub fn row(&mut self, line: u64, row: BillRow) {
        self.totals.count += 1;
        self.totals.settlement_total_fen += row.settlement_total_fen;
        self.totals.refund_total_fen += row.refund_fen;
        self.totals.fee_e5 += row.fee_e5;
        self.totals.order_total_fen += row.order_total_fen;
        match row.trade_state.as_str() {
            "SUCCESS" => self.payment_row(line, row),
            "REFUND" => self.refund_row(line, &row),
            _ => self.revoked_row(line, &row),
        }
    }

    fn at(mut d: Discrepancy, line: u64, row: &BillRow) -> Discrepancy {
        d.bill_line = i64::try_from(line).ok();
        d.transaction_id = Some(row.transaction_id.clone());
        d
    }

    fn payment_row(&mut self, line: u64, row: BillRow) {
        let no = row.out_trade_no.as_str();
        let Some(ours) = self.ours.get_mut(no) else {
            if self.other_keys.insert(format!("pay:{no}")) {
                self.unmatched.push(Unmatched { line, row });
            } else {
                let d = unexplained(class::DUPLICATE_ROW, Some(no), "payment row appears twice".into());
                self.found.push(Self::at(d, line, &row));
            }
            return;
        };
        if ours.seen {
            let d = unexplained(class::DUPLICATE_ROW, Some(no), "payment row appears twice".into());
            self.found.push(Self::at(d, line, &row));
            return;
        }
        ours.seen = true;
        if self.healed_before.contains(no) {
            let mut d =
                unexplained(class::MISSING_HERE, Some(no), "paid at WeChat, missed here; healed from this bill".into());
            d.resolution = "healed".into();
            self.found.push(Self::at(d, line, &row));
        }
        if ours.amount_fen != row.order_total_fen {
            let mut d = unexplained(class::AMOUNT_MISMATCH, Some(no), "order amount differs".into());
            d.ours = Some(ours.amount_fen.to_string());
            d.theirs = Some(row.order_total_fen.to_string());
            self.found.push(Self::at(d, line, &row));
        }
        if !ours.transaction_matches(&row.transaction_id) {
            let mut d = unexplained(class::TRANSACTION_MISMATCH, Some(no), "transaction_id differs".into());
            d.ours = Some("another transaction_id (see `order show`)".into());
            d.theirs = Some(row.transaction_id.clone());
            self.found.push(Self::at(d, line, &row));
        }
    }

    fn refund_row(&mut self, line: u64, row: &BillRow) {
        let no = row.out_trade_no.as_str();
        if !self.other_keys.insert(format!("refund:{}", row.out_refund_no)) {
            let d = unexplained(class::DUPLICATE_ROW, Some(no), "refund row appears twice".into());
            self.found.push(Self::at(d, line, row));
            return;
        }
        let Some(ours) = self.our_refunds.get_mut(&row.out_refund_no) else {
            let refunded = self.ours.get(no).map_or(0, |o| o.refunded_fen);
            let detail = format!("refund {} is not one we applied for that day", row.out_refund_no);
            let mut d = unexplained(class::REFUND_MISMATCH, Some(no), detail);
            d.ours = Some(refunded.to_string());
            d.theirs = Some(row.refund_fen.to_string());
            self.found.push(Self::at(d, line, row));
            return;
        };
        ours.seen = true;
        if ours.amount_fen != row.refund_fen || ours.out_trade_no != no {
            let detail = format!("refund {} differs", row.out_refund_no);
            let mut d = unexplained(class::REFUND_MISMATCH, Some(no), detail);
            d.ours = Some(format!("{} {}", ours.out_trade_no, ours.amount_fen));
            d.theirs = Some(format!("{no} {}", row.refund_fen));
            self.found.push(Self::at(d, line, row));
        }
    }

    fn revoked_row(&mut self, line: u64, row: &BillRow) {
        let no = row.out_trade_no.as_str();
        if let Some(ours) = self.ours.get_mut(no) {
            ours.seen = true;
        }
        let mut d = unexplained(class::STATUS_MISMATCH, Some(no), "WeChat reports the payment revoked".into());
        d.ours = Some("SUCCESS".into());
        d.theirs = Some(row.trade_state.clone());
        self.found.push(Self::at(d, line, row));
    }

    /// The bill's summary line: it must agree with the rows above it.
    pub fn summary(&mut self, line: u64, summary: &BillSummary) {
        self.summary_seen = true;
        let theirs = Totals {
            count: summary.count,
            settlement_total_fen: summary.settlement_total_fen,
            refund_total_fen: summary.refund_total_fen,
            fee_e5: summary.fee_e5,
            order_total_fen: summary.order_total_fen,
        };
        if theirs != self.totals {
            let mut d = unexplained(class::SUMMARY_MISMATCH, None, "the summary does not add up the rows".into());
            d.bill_line = i64::try_from(line).ok();
            d.ours = Some(format!("{:?}", self.totals));
            d.theirs = Some(format!("{theirs:?}"));
            self.found.push(d);
        }
    }

    /// Ends the comparison: our payments the bill never mentioned are reported.
    pub fn finish(mut self) -> Comparison {
        let orders_compared = self.ours.len() as u64;
        for (no, ours) in self.ours.unseen() {
            let mut d = unexplained(class::MISSING_AT_WECHAT, Some(&no), "paid here, absent from WeChat's bill".into());
            d.ours = Some(ours.amount_fen.to_string());
            self.found.push(d);
        }
        let mut absent: Vec<(&String, &OurRefund)> = self.our_refunds.iter().filter(|(_, r)| !r.seen).collect();
        absent.sort_by(|a, b| a.0.cmp(b.0));
        for (out_refund_no, refund) in absent {
            let detail = format!("refund {out_refund_no} applied for here, absent from WeChat's bill");
            let mut d = unexplained(class::REFUND_MISMATCH, Some(&refund.out_trade_no), detail);
            d.ours = Some(refund.amount_fen.to_string());
            self.found.push(d);
        }
        Comparison { rows: self.totals.count, orders_compared, discrepancies: self.found, unmatched: self.unmatched }
    }

    pub fn summary_seen(&self) -> bool {
        self.summary_seen
    }
}
