//! One detail line of the `ALL` trade bill (protocol §9.1): 27 columns, as typed data.
//!
//! Field order is the file's column order, and this file is the only place that knows it, so
//! the reader and the writer cannot disagree about which column holds which amount.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use serde::{Deserialize, Serialize};

use super::amount::{AmountError, parse_fee_e5, parse_yuan, render_fee_e5, render_yuan};

/// The header line of an `ALL` bill, column names in file order.
pub const HEADER: [&str; COLUMNS] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];

/// Columns of an `ALL` bill; a `SUCCESS` bill has 20 and a `REFUND` bill 29, so a count
/// mismatch usually means the wrong bill type was fetched.
pub const COLUMNS: usize = 27;

/// `trade_time`'s format; WeChat writes the Asia/Shanghai wall clock without an offset.
pub const TRADE_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// The values of column 10 (`交易状态`) an `ALL` bill may hold: a payment row, a refund row, or a
/// revoked (micropay) payment. Anything else means we misread the file.
pub const TRADE_STATES: [&str; 3] = ["SUCCESS", "REFUND", "REVOKED"];

/// One detail row of the trade bill. Amounts are integer fen (fee: 0.00001 yuan) so sums are
/// exact; text columns keep WeChat's strings, empty when the column is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillRow {
    /// Col 1: payment success time (refund rows: refund initiation time), `yyyy-MM-dd HH:mm:ss`
    /// in Asia/Shanghai.
    pub trade_time: String,
    pub appid: String,
    pub mchid: String,
    /// `0` for a direct merchant.
    pub sub_mchid: String,
    pub device_info: String,
    pub transaction_id: String,
    pub out_trade_no: String,
    pub openid: String,
    /// `JSAPI` for mini-program payments.
    pub trade_type: String,
    /// One of [`TRADE_STATES`].
    pub trade_state: String,
    pub bank_type: String,
    pub currency: String,
    /// Col 13 `应结订单金额`: order amount minus non-recharge coupons; 0 on refund rows.
    pub settlement_total_fen: i64,
    /// Col 14 `代金券金额`.
    pub coupon_fen: i64,
    /// `0` on payment rows.
    pub refund_id: String,
    /// `0` on payment rows.
    pub out_refund_no: String,
    /// Col 17 `退款金额`; 0 on payment rows.
    pub refund_fen: i64,
    /// Col 18 `充值券退款金额`.
    pub recharge_coupon_refund_fen: i64,
    /// e.g. `ORIGINAL`; empty on payment rows.
    pub refund_type: String,
    /// Refund status at bill time; empty on payment rows.
    pub refund_status: String,
    pub product_name: String,
    pub attach: String,
    /// Col 23 `手续费` in units of 0.00001 yuan (WeChat prints 5 decimals).
    pub fee_e5: i64,
    /// e.g. `0.60%`.
    pub rate: String,
    /// Col 25 `订单金额`; 0 on refund rows.
    pub order_total_fen: i64,
    /// Col 26 `申请退款金额`; 0 on payment rows.
    pub refund_request_fen: i64,
    pub rate_note: String,
}

/// Why a detail line's values do not make a row; the reader adds the line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("expected {COLUMNS} columns, found {0}")]
    ColumnCount(usize),
    #[error("column {column} ({name}): {source}")]
    Amount { column: usize, name: &'static str, source: AmountError },
    #[error("column 1 (交易时间): `{0}` is not yyyy-MM-dd HH:mm:ss")]
    TradeTime(String),
    #[error("column 10 (交易状态): unknown trade_state `{0}`")]
    TradeState(String),
}

impl BillRow {
    /// Builds a row from the 27 values of a line (backticks already removed).
    pub fn from_values(values: &[&str]) -> Result<Self, RowError> {
        let v: &[&str; COLUMNS] = values.try_into().map_err(|_| RowError::ColumnCount(values.len()))?;
        let amount = |index: usize, parse: fn(&str) -> Result<i64, AmountError>| {
            parse(v[index]).map_err(|source| RowError::Amount { column: index + 1, name: HEADER[index], source })
        };
        if NaiveDateTime::parse_from_str(v[0], TRADE_TIME_FORMAT).is_err() {
            return Err(RowError::TradeTime(v[0].to_owned()));
        }
        if !TRADE_STATES.contains(&v[9]) {
            return Err(RowError::TradeState(v[9].to_owned()));
        }
        let text = |index: usize| v[index].to_owned();
        Ok(BillRow {
            trade_time: text(0),
            appid: text(1),
            mchid: text(2),
            sub_mchid: text(3),
            device_info: text(4),
            transaction_id: text(5),
            out_trade_no: text(6),
            openid: text(7),
            trade_type: text(8),
            trade_state: text(9),
            bank_type: text(10),
            currency: text(11),
            settlement_total_fen: amount(12, parse_yuan)?,
            coupon_fen: amount(13, parse_yuan)?,
            refund_id: text(14),
            out_refund_no: text(15),
            refund_fen: amount(16, parse_yuan)?,
            recharge_coupon_refund_fen: amount(17, parse_yuan)?,
            refund_type: text(18),
            refund_status: text(19),
            product_name: text(20),
            attach: text(21),
            fee_e5: amount(22, parse_fee_e5)?,
            rate: text(23),
            order_total_fen: amount(24, parse_yuan)?,
            refund_request_fen: amount(25, parse_yuan)?,
            rate_note: text(26),
        })
    }

    /// The 27 values as WeChat prints them (amounts as yuan text), in column order, unsanitised.
    pub fn to_values(&self) -> [String; COLUMNS] {
        [
            self.trade_time.clone(),
            self.appid.clone(),
            self.mchid.clone(),
            self.sub_mchid.clone(),
            self.device_info.clone(),
            self.transaction_id.clone(),
            self.out_trade_no.clone(),
            self.openid.clone(),
            self.trade_type.clone(),
            self.trade_state.clone(),
            self.bank_type.clone(),
            self.currency.clone(),
            render_yuan(self.settlement_total_fen),
            render_yuan(self.coupon_fen),
            self.refund_id.clone(),
            self.out_refund_no.clone(),
            render_yuan(self.refund_fen),
            render_yuan(self.recharge_coupon_refund_fen),
            self.refund_type.clone(),
            self.refund_status.clone(),
            self.product_name.clone(),
            self.attach.clone(),
            render_fee_e5(self.fee_e5),
            self.rate.clone(),
            render_yuan(self.order_total_fen),
            render_yuan(self.refund_request_fen),
            self.rate_note.clone(),
        ]
    }

    /// The instant of `trade_time`, read as Asia/Shanghai wall-clock time (`None` if the text is
    /// not a valid time, which the reader already refuses).
    pub fn trade_instant(&self) -> Option<DateTime<Utc>> {
        let local = NaiveDateTime::parse_from_str(&self.trade_time, TRADE_TIME_FORMAT).ok()?;
        Shanghai.from_local_datetime(&local).single().map(|t| t.with_timezone(&Utc))
    }
}

/// Formats an instant the way column 1 shows it (Asia/Shanghai wall clock).
pub fn format_trade_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&Shanghai).format(TRADE_TIME_FORMAT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<&'static str> {
        "2020-03-02 14:17:55,wx1,1562960801,0,,42000,A1,o1,JSAPI,SUCCESS,OTHERS,CNY,0.01,0.00,0,0,0.00,0.00,,,p,a,0.00000,0.30%,0.01,0.00,"
            .split(',')
            .collect()
    }

    #[test]
    fn values_round_trip() {
        let row = BillRow::from_values(&values()).expect("row");
        assert_eq!(row.to_values().to_vec(), values().iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    }

    #[test]
    fn bad_values_name_the_column() {
        let mut v = values();
        v[12] = "abc";
        let err = BillRow::from_values(&v).expect_err("bad amount");
        assert!(err.to_string().starts_with("column 13 (应结订单金额)"), "{err}");
        let mut v = values();
        v[9] = "PAID";
        assert_eq!(BillRow::from_values(&v), Err(RowError::TradeState("PAID".into())));
        let mut v = values();
        v[0] = "2020-03-02T14:17:55";
        assert!(matches!(BillRow::from_values(&v), Err(RowError::TradeTime(_))));
        assert_eq!(BillRow::from_values(&values()[..26]), Err(RowError::ColumnCount(26)));
    }

    #[test]
    fn trade_time_is_shanghai_wall_clock() {
        let row = BillRow { trade_time: "2026-11-24 00:00:00".into(), ..BillRow::default() };
        let instant = row.trade_instant().expect("instant");
        assert_eq!(instant.to_rfc3339(), "2026-11-23T16:00:00+00:00");
        assert_eq!(format_trade_time(instant), "2026-11-24 00:00:00");
    }
}
