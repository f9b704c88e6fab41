//! The comparison of one day's bill with our books, row by row, without I/O: the caller feeds
//! bill rows as they are parsed and gets back every difference, plus the rows that need a
//! database look-up (a payment WeChat has and our day does not: heal it, or explain why not).

use std::collections::{HashMap, HashSet};

use crate::bill::{BillRow, BillSummary, SummaryDisagreement};
use crate::domain::{
    Discrepancy, DiscrepancyClass as Class, Fen, OrderStatus, OutTradeNo, PaidOrder, PaymentReport, Resolution,
};
use crate::wechat::convert::{self, BillEntry, ConvertError};

use super::ours::OursTable;

/// A bill payment whose order is not among our payments of that day.
#[derive(Debug, Clone)]
pub struct Unmatched {
    pub line: u64,
    pub report: PaymentReport,
}

/// One of our refunds of the bill's day (the day WeChat accepted it, when we know it).
#[derive(Debug)]
struct OurRefund {
    out_trade_no: OutTradeNo,
    /// What WeChat pays back as its answer told us, else what we asked for (equal without
    /// coupons). Compared with the bill's settled column.
    settled: Fen,
    /// What we applied for; reported beside, since the bill prints it too.
    requested: Fen,
    seen: bool,
}

/// Our side of a refund for [`Comparator::add_our_refund`].
#[derive(Debug, Clone)]
pub struct RefundOfDay {
    pub out_refund_no: String,
    pub out_trade_no: OutTradeNo,
    /// `amount.settlement_refund` from WeChat's answer, when one said it.
    pub settled: Option<Fen>,
    pub requested: Fen,
}

#[derive(Debug)]
pub struct Comparator {
    ours: OursTable,
    our_refunds: HashMap<String, OurRefund>,
    healed_before: HashSet<String>,
    /// Keys of rows not in `ours` seen so far (duplicates among them).
    other_keys: HashSet<String>,
    /// Detail rows compared so far.
    rows: u64,
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

impl Comparator {
    /// `healed_before`: orders an earlier run of this date healed (reported again as healed).
    pub fn new(healed_before: HashSet<String>) -> Self {
        Self {
            ours: OursTable::default(),
            our_refunds: HashMap::new(),
            healed_before,
            other_keys: HashSet::new(),
            rows: 0,
            summary_seen: false,
            found: Vec::new(),
            unmatched: Vec::new(),
        }
    }

    /// One of our orders paid on the bill's day.
    pub fn add_ours(&mut self, order: PaidOrder) {
        self.ours.push(order);
    }

    /// One of our refunds of the bill's day (CLOSED ones are not in bills).
    pub fn add_our_refund(&mut self, refund: RefundOfDay) {
        let ours = OurRefund {
            out_trade_no: refund.out_trade_no,
            settled: refund.settled.unwrap_or(refund.requested),
            requested: refund.requested,
            seen: false,
        };
        self.our_refunds.insert(refund.out_refund_no, ours);
    }

    pub fn ours_count(&self) -> usize {
        self.ours.len()
    }

    /// One detail row of the bill, at `line`. A row that does not read as a payment, a
    /// refund or a revocation is refused (the run fails; nothing is guessed).
    pub fn row(&mut self, line: u64, row: &BillRow) -> Result<(), ConvertError> {
        self.rows += 1;
        match convert::bill_entry(row)? {
            BillEntry::Payment(report) => self.payment_row(line, row, report),
            BillEntry::Refund { out_trade_no, out_refund_no, settled, requested } => {
                self.refund_row(line, row, &out_trade_no, &out_refund_no, settled, requested);
            }
            BillEntry::Revoked { out_trade_no } => self.revoked_row(line, row, &out_trade_no),
        }
        Ok(())
    }

    fn at(mut d: Discrepancy, line: u64, row: &BillRow) -> Discrepancy {
        d.bill_line = i64::try_from(line).ok();
        d.transaction_id = Some(row.transaction_id.clone());
        d
    }

    fn payment_row(&mut self, line: u64, row: &BillRow, report: PaymentReport) {
        let no = report.out_trade_no.as_str();
        let Some(ours) = self.ours.get_mut(no) else {
            if self.other_keys.insert(format!("pay:{no}")) {
                self.unmatched.push(Unmatched { line, report });
            } else {
                let d = Discrepancy::unexplained(Class::DuplicateRow, Some(no), "payment row appears twice");
                self.found.push(Self::at(d, line, row));
            }
            return;
        };
        if ours.seen {
            let d = Discrepancy::unexplained(Class::DuplicateRow, Some(no), "payment row appears twice");
            self.found.push(Self::at(d, line, row));
            return;
        }
        ours.seen = true;
        if self.healed_before.contains(no) {
            let mut d = Discrepancy::unexplained(
                Class::MissingHere,
                Some(no),
                "paid at WeChat, missed here; healed from this bill",
            );
            d.resolution = Resolution::Healed;
            self.found.push(Self::at(d, line, row));
        }
        if Some(ours.amount) != report.amount {
            let mut d = Discrepancy::unexplained(Class::AmountMismatch, Some(no), "order amount differs");
            d.ours = Some(ours.amount.0.to_string());
            d.theirs = Some(report.amount.map_or(0, |a| a.0).to_string());
            self.found.push(Self::at(d, line, row));
        }
        let theirs = report.transaction_id.as_ref().map_or("", |t| t.as_str());
        if !ours.transaction_matches(theirs) {
            let mut d = Discrepancy::unexplained(Class::TransactionMismatch, Some(no), "transaction_id differs");
            d.ours = Some("another transaction_id (see `order show`)".into());
            d.theirs = Some(theirs.to_owned());
            self.found.push(Self::at(d, line, row));
        }
    }

    /// A refund row is compared on what WeChat paid back (退款金额, the settled column), the
    /// money that actually left the merchant; the requested column is shown beside it.
    fn refund_row(
        &mut self,
        line: u64,
        row: &BillRow,
        out_trade_no: &OutTradeNo,
        out_refund_no: &str,
        settled: Fen,
        requested: Fen,
    ) {
        let no = out_trade_no.as_str();
        if !self.other_keys.insert(format!("refund:{out_refund_no}")) {
            let d = Discrepancy::unexplained(Class::DuplicateRow, Some(no), "refund row appears twice");
            self.found.push(Self::at(d, line, row));
            return;
        }
        let Some(ours) = self.our_refunds.get_mut(out_refund_no) else {
            let refunded = self.ours.get(no).map_or(0, |o| o.refunded.0);
            let detail = format!("refund {out_refund_no} is not one we applied for that day");
            let mut d = Discrepancy::unexplained(Class::RefundMismatch, Some(no), detail);
            d.ours = Some(refunded.to_string());
            d.theirs = Some(settled.0.to_string());
            self.found.push(Self::at(d, line, row));
            return;
        };
        ours.seen = true;
        if ours.settled != settled || ours.out_trade_no != *out_trade_no {
            let detail = format!(
                "refund {out_refund_no} differs (settled amounts compared; requested: ours {}, WeChat {})",
                ours.requested.0, requested.0
            );
            let mut d = Discrepancy::unexplained(Class::RefundMismatch, Some(no), detail);
            d.ours = Some(format!("{} {}", ours.out_trade_no, ours.settled.0));
            d.theirs = Some(format!("{no} {}", settled.0));
            self.found.push(Self::at(d, line, row));
        }
    }

    fn revoked_row(&mut self, line: u64, row: &BillRow, out_trade_no: &OutTradeNo) {
        let no = out_trade_no.as_str();
        if let Some(ours) = self.ours.get_mut(no) {
            ours.seen = true;
        }
        let mut d = Discrepancy::unexplained(Class::StatusMismatch, Some(no), "WeChat reports the payment revoked");
        d.ours = Some(OrderStatus::Success.to_string());
        // WeChat's own word for it, as the bill prints it.
        d.theirs = Some(row.trade_state.clone());
        self.found.push(Self::at(d, line, row));
    }

    /// The bill's summary line: it must agree with `rows`, the totals of the rows above it as
    /// the reader added them up (every value, the same check as `wxpay-recon bill parse`). The
    /// discrepancy names each value that differs, the rows' sum as ours and the stated one as
    /// theirs.
    pub fn summary(&mut self, line: u64, summary: &BillSummary, rows: &BillSummary) {
        self.summary_seen = true;
        let disagreements = summary.disagreements(rows);
        if !disagreements.is_empty() {
            let list = |value: fn(&SummaryDisagreement) -> &str| {
                disagreements.iter().map(|d| format!("{} {}", d.label(), value(d))).collect::<Vec<_>>().join("; ")
            };
            let mut d = Discrepancy::unexplained(Class::SummaryMismatch, None, "the summary does not add up the rows");
            d.bill_line = i64::try_from(line).ok();
            d.ours = Some(list(|d| &d.rows));
            d.theirs = Some(list(|d| &d.stated));
            self.found.push(d);
        }
    }

    /// Ends the comparison: our payments the bill never mentioned are reported.
    pub fn finish(mut self) -> Comparison {
        let orders_compared = self.ours.len() as u64;
        for (no, ours) in self.ours.unseen() {
            let mut d =
                Discrepancy::unexplained(Class::MissingAtWechat, Some(&no), "paid here, absent from WeChat's bill");
            d.ours = Some(ours.amount.0.to_string());
            self.found.push(d);
        }
        let mut absent: Vec<(&String, &OurRefund)> = self.our_refunds.iter().filter(|(_, r)| !r.seen).collect();
        absent.sort_by(|a, b| a.0.cmp(b.0));
        for (out_refund_no, refund) in absent {
            let detail = format!("refund {out_refund_no} applied for here, absent from WeChat's bill");
            let mut d = Discrepancy::unexplained(Class::RefundMismatch, Some(refund.out_trade_no.as_str()), detail);
            d.ours = Some(refund.settled.0.to_string());
            self.found.push(d);
        }
        Comparison { rows: self.rows, orders_compared, discrepancies: self.found, unmatched: self.unmatched }
    }

    pub fn summary_seen(&self) -> bool {
        self.summary_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: &str = "4200000001202611240000000001";

    fn paid(no: &str, amount: i64, txid: Option<&str>) -> PaidOrder {
        PaidOrder {
            out_trade_no: no.into(),
            amount: Fen(amount),
            transaction_id: txid.map(str::to_owned),
            refunded: Fen(0),
        }
    }

    fn payment(no: &str, amount: i64, txid: &str) -> BillRow {
        BillRow {
            trade_time: "2026-11-24 10:00:00".into(),
            appid: "wxapp".into(),
            mchid: "1900000001".into(),
            transaction_id: txid.into(),
            out_trade_no: no.into(),
            openid: "o".into(),
            trade_state: "SUCCESS".into(),
            settlement_total_fen: amount,
            order_total_fen: amount,
            ..BillRow::default()
        }
    }

    fn refund(no: &str, out_refund_no: &str, amount: i64) -> BillRow {
        BillRow {
            trade_state: "REFUND".into(),
            settlement_total_fen: 0,
            order_total_fen: 0,
            out_refund_no: out_refund_no.into(),
            refund_fen: amount,
            refund_request_fen: amount,
            ..payment(no, 0, TXID)
        }
    }

    fn our_refund(out_refund_no: &str, no: &str, settled: Option<i64>, requested: i64) -> RefundOfDay {
        RefundOfDay {
            out_refund_no: out_refund_no.into(),
            out_trade_no: OutTradeNo::parse(no).expect("no"),
            settled: settled.map(Fen),
            requested: Fen(requested),
        }
    }

    /// Feeds rows (and a summary that adds them up unless `summary_delta`) and returns the
    /// classes found, sorted, with the unmatched rows.
    fn compare(ours: &[PaidOrder], refunds: &[(&str, &str, i64)], rows: &[BillRow], summary_delta: i64) -> Comparison {
        let mut c = Comparator::new(HashSet::from(["HEALED0001".to_owned()]));
        for o in ours {
            c.add_ours(o.clone());
        }
        for (refund_no, no, amount) in refunds {
            c.add_our_refund(our_refund(refund_no, no, None, *amount));
        }
        for (i, row) in rows.iter().enumerate() {
            c.row(i as u64 + 2, row).expect("row");
        }
        let added_up = BillSummary::from_rows(rows).expect("sums");
        let summary = BillSummary { settlement_total_fen: added_up.settlement_total_fen + summary_delta, ..added_up };
        c.summary(rows.len() as u64 + 4, &summary, &added_up);
        c.finish()
    }

    fn classes(found: &Comparison) -> Vec<(Class, Resolution)> {
        let mut out: Vec<_> = found.discrepancies.iter().map(|d| (d.class, d.resolution)).collect();
        out.sort();
        out
    }

    #[test]
    fn a_matching_day_is_clean() {
        let found = compare(&[paid("ORDER0001", 100, Some(TXID))], &[], &[payment("ORDER0001", 100, TXID)], 0);
        assert_eq!(classes(&found), vec![]);
        assert_eq!((found.rows, found.orders_compared, found.unmatched.len()), (1, 1, 0));
    }

    #[test]
    fn each_row_level_class_is_found_once() {
        let cases: Vec<(&str, Vec<PaidOrder>, Vec<BillRow>, Class)> = vec![
            (
                "amount",
                vec![paid("ORDER0001", 100, None)],
                vec![payment("ORDER0001", 101, TXID)],
                Class::AmountMismatch,
            ),
            (
                "transaction",
                vec![paid("ORDER0001", 100, Some("4200000009"))],
                vec![payment("ORDER0001", 100, TXID)],
                Class::TransactionMismatch,
            ),
            (
                "duplicate",
                vec![paid("ORDER0001", 100, None)],
                vec![payment("ORDER0001", 100, TXID), payment("ORDER0001", 100, TXID)],
                Class::DuplicateRow,
            ),
            ("missing at WeChat", vec![paid("ORDER0001", 100, None)], vec![], Class::MissingAtWechat),
            (
                "revoked",
                vec![paid("ORDER0001", 100, None)],
                vec![BillRow { trade_state: "REVOKED".into(), ..payment("ORDER0001", 100, TXID) }],
                Class::StatusMismatch,
            ),
        ];
        for (name, ours, rows, class) in cases {
            let found = compare(&ours, &[], &rows, 0);
            assert_eq!(classes(&found), vec![(class, Resolution::Unexplained)], "{name}");
        }
    }

    #[test]
    fn a_payment_we_do_not_have_is_left_for_the_database() {
        let found = compare(&[], &[], &[payment("ORDER0002", 100, TXID)], 0);
        assert_eq!(classes(&found), vec![]);
        let unmatched = found.unmatched.first().expect("unmatched");
        assert_eq!((unmatched.line, unmatched.report.out_trade_no.as_str()), (2, "ORDER0002"));
        assert_eq!(unmatched.report.amount, Some(Fen(100)));
    }

    #[test]
    fn an_order_an_earlier_run_healed_is_reported_healed_again() {
        let found = compare(&[paid("HEALED0001", 100, None)], &[], &[payment("HEALED0001", 100, TXID)], 0);
        assert_eq!(classes(&found), vec![(Class::MissingHere, Resolution::Healed)]);
    }

    #[test]
    fn refunds_must_be_ours_of_the_day_and_agree() {
        // The payment was on an earlier day: only its refunds are in this bill.
        let ours = [];
        let row = |amount| refund("ORDER0001", "R1", amount);
        assert_eq!(classes(&compare(&ours, &[("R1", "ORDER0001", 40)], &[row(40)], 0)), vec![]);
        let differs = compare(&ours, &[("R1", "ORDER0001", 40)], &[row(39)], 0);
        assert_eq!(classes(&differs), vec![(Class::RefundMismatch, Resolution::Unexplained)]);
        let not_ours = compare(&ours, &[], &[row(40)], 0);
        assert_eq!(classes(&not_ours), vec![(Class::RefundMismatch, Resolution::Unexplained)]);
        let absent = compare(&ours, &[("R1", "ORDER0001", 40)], &[], 0);
        assert_eq!(classes(&absent), vec![(Class::RefundMismatch, Resolution::Unexplained)]);
    }

    /// With a coupon, WeChat pays back less than was asked (settled 30 of a requested 40): the
    /// comparison is on the settled column, against the settled amount WeChat's answer gave.
    #[test]
    fn refunds_are_compared_on_what_wechat_paid_back() {
        let couponed = BillRow { refund_fen: 30, refund_request_fen: 40, ..refund("ORDER0001", "R1", 30) };
        let run = |ours: RefundOfDay| {
            let mut c = Comparator::new(HashSet::new());
            c.add_our_refund(ours);
            c.row(2, &couponed).expect("row");
            c.finish()
        };
        assert_eq!(classes(&run(our_refund("R1", "ORDER0001", Some(30), 40))), vec![]);
        // Compared on the requested column this would be clean; on the settled one it is not.
        let unknown_settled = run(our_refund("R1", "ORDER0001", None, 30));
        assert_eq!(classes(&unknown_settled), vec![], "no coupon known: requested stands in for settled");
        let differs = run(our_refund("R1", "ORDER0001", None, 40));
        assert_eq!(classes(&differs), vec![(Class::RefundMismatch, Resolution::Unexplained)]);
        let d = &differs.discrepancies[0];
        assert_eq!((d.ours.as_deref(), d.theirs.as_deref()), (Some("ORDER0001 40"), Some("ORDER0001 30")));
        assert!(d.detail.contains("requested: ours 40, WeChat 40"), "{}", d.detail);
    }

    #[test]
    fn a_summary_that_does_not_add_up_is_found() {
        let ours = [paid("ORDER0001", 100, None)];
        let found = compare(&ours, &[], &[payment("ORDER0001", 100, TXID)], 7);
        assert_eq!(classes(&found), vec![(Class::SummaryMismatch, Resolution::Unexplained)]);
        // What differs, readably: the rows' sum is ours, the stated value theirs.
        let d = &found.discrepancies[0];
        assert_eq!(d.ours.as_deref(), Some("settlement total (paid) 1.00"));
        assert_eq!(d.theirs.as_deref(), Some("settlement total (paid) 1.07"));
    }

    #[test]
    fn a_row_that_is_no_payment_refund_or_revocation_is_refused() {
        let mut c = Comparator::new(HashSet::new());
        let row = BillRow { trade_state: "PAID".into(), ..payment("ORDER0001", 100, TXID) };
        let err = c.row(2, &row).expect_err("unknown state");
        assert!(err.to_string().contains("PAID"), "{err}");
    }
}
