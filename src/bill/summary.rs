//! The bill's last line: the row count and the column totals WeChat states for the day.
//!
//! Reconciliation compares this stated summary with the one recomputed from the rows (a file
//! whose own totals disagree is corrupt, whatever our orders say) and with our books.

use serde::{Deserialize, Serialize};

use super::amount::{AmountError, parse_count, parse_fee_e5, parse_yuan, render_fee_e5, render_yuan};
use super::row::BillRow;

/// The summary header line.
pub const SUMMARY_HEADER: [&str; SUMMARY_COLUMNS] =
    ["总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额", "申请退款总金额"];

/// Values on the summary line.
pub const SUMMARY_COLUMNS: usize = 7;

/// What each summary value is, in English, for people reading our output.
pub const SUMMARY_LABELS: [&str; SUMMARY_COLUMNS] = [
    "trades",
    "settlement total (paid)",
    "refunded",
    "recharge-coupon refunds",
    "fees",
    "order total",
    "refunds requested",
];

/// One value of a stated summary that the rows above it do not add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryDisagreement {
    /// Index into [`SUMMARY_HEADER`] and [`SUMMARY_LABELS`].
    pub column: usize,
    /// The value on the summary line, in the official text form (yuan with 2 decimals...).
    pub stated: String,
    /// The sum of the rows, in the same form.
    pub rows: String,
}

impl SummaryDisagreement {
    pub fn label(&self) -> &'static str {
        SUMMARY_LABELS.get(self.column).copied().unwrap_or("?")
    }
}

impl std::fmt::Display for SummaryDisagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: stated {}, rows add up to {}", self.label(), self.stated, self.rows)
    }
}

/// Count of detail rows and sums of the amount columns 13, 17, 18, 23, 25 and 26.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillSummary {
    pub count: u64,
    pub settlement_total_fen: i64,
    pub refund_total_fen: i64,
    pub recharge_coupon_refund_fen: i64,
    /// In units of 0.00001 yuan, like [`BillRow::fee_e5`].
    pub fee_e5: i64,
    pub order_total_fen: i64,
    pub refund_request_fen: i64,
}

/// Why a summary line could not be read; the reader adds the line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    #[error("summary line: expected {SUMMARY_COLUMNS} values, found {0}")]
    ColumnCount(usize),
    #[error("summary value {column} ({name}): {source}")]
    Amount { column: usize, name: &'static str, source: AmountError },
    /// The rows' total of one column leaves `i64`: no real day comes near (9.2e16 fen), so the
    /// file is hostile or corrupt, and a wrapped or saturated total would only hide that.
    #[error("the rows' total of summary value {column} ({name}) overflows")]
    Overflow { column: usize, name: &'static str },
}

impl BillSummary {
    /// Adds one row. Sums are checked: a hostile file must neither wrap around to a plausible
    /// total nor saturate into one that merely "disagrees"; an overflow is an error naming the
    /// column, and on error `self` is left as it was (no column half-added).
    pub fn add(&mut self, row: &BillRow) -> Result<(), SummaryError> {
        let sum = |column: usize, total: i64, value: i64| {
            total.checked_add(value).ok_or(SummaryError::Overflow { column: column + 1, name: SUMMARY_HEADER[column] })
        };
        *self = BillSummary {
            count: self.count.checked_add(1).ok_or(SummaryError::Overflow { column: 1, name: SUMMARY_HEADER[0] })?,
            settlement_total_fen: sum(1, self.settlement_total_fen, row.settlement_total_fen)?,
            refund_total_fen: sum(2, self.refund_total_fen, row.refund_fen)?,
            recharge_coupon_refund_fen: sum(3, self.recharge_coupon_refund_fen, row.recharge_coupon_refund_fen)?,
            fee_e5: sum(4, self.fee_e5, row.fee_e5)?,
            order_total_fen: sum(5, self.order_total_fen, row.order_total_fen)?,
            refund_request_fen: sum(6, self.refund_request_fen, row.refund_request_fen)?,
        };
        Ok(())
    }

    /// The summary WeChat should have printed for these rows (an error when a total overflows).
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a BillRow>) -> Result<Self, SummaryError> {
        rows.into_iter().try_fold(Self::default(), |mut summary, row| {
            summary.add(row)?;
            Ok(summary)
        })
    }

    /// Reads the summary values (backticks removed), in either style WeChat prints
    /// (`12,0.06,…,0.00000,…` or `45.0,0.47,…,0.08,…`).
    pub fn from_values(values: &[&str]) -> Result<Self, SummaryError> {
        let v: &[&str; SUMMARY_COLUMNS] = values.try_into().map_err(|_| SummaryError::ColumnCount(values.len()))?;
        let amount = |index: usize, parse: fn(&str) -> Result<i64, AmountError>| {
            parse(v[index]).map_err(|source| SummaryError::Amount {
                column: index + 1,
                name: SUMMARY_HEADER[index],
                source,
            })
        };
        Ok(BillSummary {
            count: parse_count(v[0]).map_err(|source| SummaryError::Amount {
                column: 1,
                name: SUMMARY_HEADER[0],
                source,
            })?,
            settlement_total_fen: amount(1, parse_yuan)?,
            refund_total_fen: amount(2, parse_yuan)?,
            recharge_coupon_refund_fen: amount(3, parse_yuan)?,
            fee_e5: amount(4, parse_fee_e5)?,
            order_total_fen: amount(5, parse_yuan)?,
            refund_request_fen: amount(6, parse_yuan)?,
        })
    }

    /// Where this stated summary disagrees with `rows` (the summary recomputed from the rows,
    /// [`BillSummary::from_rows`] or the reader's running totals), value by value: every one
    /// of the seven, since a file whose own totals disagree is corrupt whichever it is.
    ///
    /// Compared in the official text form, which is exact (integers rendered with a decimal
    /// point, no rounding), so equal text means equal values and the report reads as the bill.
    pub fn disagreements(&self, rows: &BillSummary) -> Vec<SummaryDisagreement> {
        self.to_values()
            .into_iter()
            .zip(rows.to_values())
            .enumerate()
            .filter(|(_, (stated, rows))| stated != rows)
            .map(|(column, (stated, rows))| SummaryDisagreement { column, stated, rows })
            .collect()
    }

    /// The values in the official style: integer count, 2-dp yuan, 5-dp fee total.
    pub fn to_values(&self) -> [String; SUMMARY_COLUMNS] {
        [
            self.count.to_string(),
            render_yuan(self.settlement_total_fen),
            render_yuan(self.refund_total_fen),
            render_yuan(self.recharge_coupon_refund_fen),
            render_fee_e5(self.fee_e5),
            render_yuan(self.order_total_fen),
            render_yuan(self.refund_request_fen),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_number_styles_are_read() {
        let official = BillSummary::from_values(&["12", "0.06", "0.06", "0.00", "0.00000", "0.06", "0.06"]);
        assert_eq!(
            official,
            Ok(BillSummary {
                count: 12,
                settlement_total_fen: 6,
                refund_total_fen: 6,
                recharge_coupon_refund_fen: 0,
                fee_e5: 0,
                order_total_fen: 6,
                refund_request_fen: 6,
            })
        );
        let fixture = BillSummary::from_values(&["45.0", "0.47", "0.14", "0.0", "0.08", "0.47", "0.14"]).expect("sdk");
        assert_eq!((fixture.count, fixture.settlement_total_fen, fixture.fee_e5), (45, 47, 8000));
        assert_eq!(fixture.recharge_coupon_refund_fen, 0);
    }

    #[test]
    fn summary_errors_name_the_value() {
        assert_eq!(BillSummary::from_values(&["1"]), Err(SummaryError::ColumnCount(1)));
        let err = BillSummary::from_values(&["1", "x", "0", "0", "0", "0", "0"]).expect_err("bad");
        assert!(err.to_string().contains("应结订单总金额"), "{err}");
    }

    #[test]
    fn disagreements_name_each_value_that_differs() {
        let pay =
            BillRow { settlement_total_fen: 10_700, order_total_fen: 10_700, fee_e5: 64_200, ..BillRow::default() };
        let rows = BillSummary::from_rows([&pay]).expect("sums");
        assert_eq!(rows.disagreements(&rows), vec![]);
        let stated = BillSummary { count: 2, settlement_total_fen: 10_800, ..rows };
        let found = stated.disagreements(&rows);
        assert_eq!(
            found,
            vec![
                SummaryDisagreement { column: 0, stated: "2".into(), rows: "1".into() },
                SummaryDisagreement { column: 1, stated: "108.00".into(), rows: "107.00".into() },
            ]
        );
        assert_eq!(found[1].to_string(), "settlement total (paid): stated 108.00, rows add up to 107.00");
        // The two columns the reconciler used to skip are compared too.
        let requested = BillSummary { refund_request_fen: 1, recharge_coupon_refund_fen: 2, ..rows };
        let columns: Vec<usize> = requested.disagreements(&rows).iter().map(|d| d.column).collect();
        assert_eq!(columns, vec![3, 6]);
    }

    #[test]
    fn sums_rows() {
        let pay = BillRow { settlement_total_fen: 100, order_total_fen: 100, fee_e5: 1000, ..BillRow::default() };
        let refund = BillRow { refund_fen: 40, refund_request_fen: 40, ..BillRow::default() };
        let summary = BillSummary::from_rows([&pay, &pay, &refund]).expect("sums");
        assert_eq!(summary.count, 3);
        assert_eq!(summary.settlement_total_fen, 200);
        assert_eq!(summary.refund_total_fen, 40);
        assert_eq!(summary.fee_e5, 2000);
        assert_eq!(summary.to_values()[4], "0.02000");
    }

    #[test]
    fn overflowing_totals_are_an_error_naming_the_column_not_a_wrap() {
        let huge = BillRow { settlement_total_fen: i64::MAX, order_total_fen: 1, ..BillRow::default() };
        let err = BillSummary::from_rows([&huge, &huge]).expect_err("overflow");
        assert_eq!(err, SummaryError::Overflow { column: 2, name: SUMMARY_HEADER[1] });
        assert!(err.to_string().contains("应结订单总金额"), "{err}");
        let negative = BillRow { refund_fen: i64::MIN, ..BillRow::default() };
        assert!(matches!(
            BillSummary::from_rows([&negative, &negative]),
            Err(SummaryError::Overflow { column: 3, .. })
        ));
        // A failed add leaves the running totals as they were.
        let mut summary = BillSummary::from_rows([&huge]).expect("one row fits");
        let before = summary;
        assert!(summary.add(&huge).is_err());
        assert_eq!(summary, before);
        let fee = BillRow { fee_e5: i64::MAX, ..BillRow::default() };
        assert!(matches!(BillSummary::from_rows([&fee, &fee]), Err(SummaryError::Overflow { column: 5, .. })));
    }
}
