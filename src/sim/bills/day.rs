//! Which day a bill covers, when WeChat hands it out, and which orders it lists.
//!
//! WeChat's day is the Asia/Shanghai calendar day: a payment at 23:59:59 Beijing time and one a
//! second later belong to different bills even though both are the same UTC date. Bills for a
//! day exist from 09:00 the next morning and for three months; asking outside that window gets
//! the error WeChat gives (protocol §5.7).

use chrono::{DateTime, Days, Months, NaiveDate, TimeDelta, Utc};

use crate::bill::{BillRow, format_trade_time};
use crate::domain::time::{wechat_date, wechat_day_start};
use crate::sim::refunds::SimRefund;
use crate::sim::state::SimOrder;

/// Hour (Asia/Shanghai) of day D+1 from which day D's bill can be fetched: WeChat generates
/// it from 09:00 and tells merchants to fetch it after 10:00 (protocol §5.7); the simulator
/// holds to the later, documented promise.
pub const READY_HOUR: i64 = 10;
/// How far back bills can be fetched.
pub const KEEP_MONTHS: u32 = 3;
/// Fee rate of the simulated merchant, in ‰ (0.60 %), and as the bill prints it.
const FEE_PER_MILLE: i64 = 6;
const RATE_TEXT: &str = "0.60%";

/// Why a `bill_date` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayRefusal {
    /// Not `yyyy-MM-dd`.
    Malformed,
    /// Today or later: the day is not over.
    NotPast,
    /// Older than [`KEEP_MONTHS`].
    TooOld,
    /// The day is over but the bill is ready at 10:00 the next morning.
    Creating,
}

/// The day `raw` names, if its bill can be fetched at `now`.
pub fn check_bill_date(raw: &str, now: DateTime<Utc>) -> Result<NaiveDate, DayRefusal> {
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    let day = NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok().filter(|_| shaped).ok_or(DayRefusal::Malformed)?;
    let today = wechat_date(now);
    if day >= today {
        return Err(DayRefusal::NotPast);
    }
    if today.checked_sub_months(Months::new(KEEP_MONTHS)).is_some_and(|oldest| day < oldest) {
        return Err(DayRefusal::TooOld);
    }
    let next_day = day.checked_add_days(Days::new(1)).ok_or(DayRefusal::Malformed)?;
    if now < wechat_day_start(next_day) + TimeDelta::hours(READY_HOUR) {
        return Err(DayRefusal::Creating);
    }
    Ok(day)
}

/// One payment row per order paid on `day` (trade state SUCCESS, or REFUND: a refund does not
/// remove the payment from the day it was paid), in payment-time order.
pub fn rows_for_day<'a>(orders: impl IntoIterator<Item = &'a SimOrder>, day: NaiveDate) -> Vec<BillRow> {
    let mut paid: Vec<(DateTime<Utc>, &SimOrder)> = orders
        .into_iter()
        .filter(|o| matches!(o.trade_state.as_str(), "SUCCESS" | "REFUND"))
        .filter_map(|o| o.success_time.map(|t| (t, o)))
        .filter(|(t, _)| wechat_date(*t) == day)
        .collect();
    paid.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.request.out_trade_no.cmp(&b.1.request.out_trade_no)));
    paid.into_iter().map(|(t, o)| payment_row(o, t)).collect()
}

/// The row WeChat prints for a paid mini-program order with no coupon.
fn payment_row(order: &SimOrder, paid_at: DateTime<Utc>) -> BillRow {
    let request = &order.request;
    let total = request.amount.total;
    BillRow {
        trade_time: format_trade_time(paid_at),
        appid: request.appid.clone(),
        mchid: request.mchid.clone(),
        sub_mchid: "0".into(),
        device_info: String::new(),
        transaction_id: order.transaction_id.clone().unwrap_or_default(),
        out_trade_no: request.out_trade_no.clone(),
        openid: request.payer.openid.clone(),
        trade_type: "JSAPI".into(),
        trade_state: "SUCCESS".into(),
        bank_type: "OTHERS".into(),
        currency: "CNY".into(),
        settlement_total_fen: total,
        coupon_fen: 0,
        refund_id: "0".into(),
        out_refund_no: "0".into(),
        refund_fen: 0,
        recharge_coupon_refund_fen: 0,
        refund_type: String::new(),
        refund_status: String::new(),
        product_name: request.description.clone(),
        attach: request.attach.clone().unwrap_or_default(),
        fee_e5: fee_fen(total).saturating_mul(1000),
        rate: RATE_TEXT.into(),
        order_total_fen: total,
        refund_request_fen: 0,
        rate_note: String::new(),
    }
}

/// One REFUND row per refund WeChat accepted on `day` (its `create_time`; the row's time is
/// that acceptance, its status the refund's status when the bill is made), in time order. The fee share returned
/// is negative, as WeChat prints it.
pub fn refund_rows_for_day<'a>(
    refunds: impl IntoIterator<Item = &'a SimRefund>,
    orders: &std::collections::HashMap<String, SimOrder>,
    day: NaiveDate,
) -> Vec<BillRow> {
    let mut applied: Vec<&SimRefund> =
        refunds.into_iter().filter(|r| r.status != "CLOSED" && wechat_date(r.created_at) == day).collect();
    applied.sort_by(|a, b| {
        a.created_at.cmp(&b.created_at).then_with(|| a.request.out_refund_no.cmp(&b.request.out_refund_no))
    });
    applied.into_iter().filter_map(|r| orders.get(&r.request.out_trade_no).map(|o| refund_row(o, r))).collect()
}

fn refund_row(order: &SimOrder, refund: &SimRefund) -> BillRow {
    let mut row = payment_row(order, refund.created_at);
    row.trade_state = "REFUND".into();
    row.settlement_total_fen = 0;
    row.order_total_fen = 0;
    row.refund_id.clone_from(&refund.refund_id);
    row.out_refund_no.clone_from(&refund.request.out_refund_no);
    row.refund_fen = refund.request.amount.refund;
    row.refund_request_fen = refund.request.amount.refund;
    row.refund_type = "ORIGINAL".into();
    row.refund_status.clone_from(&refund.status);
    row.fee_e5 = -fee_fen(refund.request.amount.refund).saturating_mul(1000);
    row
}

/// The fee on `total_fen` at 0.60 %, rounded half up to whole fen as WeChat charges it.
pub fn fee_fen(total_fen: i64) -> i64 {
    total_fen.saturating_mul(FEE_PER_MILLE).saturating_add(500) / 1000
}

#[cfg(test)]
mod tests {
    use crate::domain::time::parse_rfc3339;
    use crate::wechat::wire::pay::{JsapiPrepayRequest, Payer, PrepayAmount};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_rfc3339(s).expect("time")
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    fn order(no: &str, total: i64, state: &str, paid: Option<&str>) -> SimOrder {
        SimOrder {
            request: JsapiPrepayRequest {
                appid: "wxd678efh567hg6787".into(),
                mchid: "1230000109".into(),
                description: "拿铁, 大杯".into(),
                out_trade_no: no.into(),
                time_expire: None,
                attach: Some("cart:7".into()),
                notify_url: "https://shop.example/notify".into(),
                amount: PrepayAmount { total, currency: Some("CNY".into()) },
                payer: Payer { openid: format!("o-{no}") },
            },
            prepay_id: format!("wx{no}"),
            created_at: at("2026-11-23T00:00:00Z"),
            time_expire: None,
            trade_state: state.into(),
            transaction_id: paid.map(|_| format!("42000{no}")),
            success_time: paid.map(at),
        }
    }

    #[test]
    fn the_day_is_shanghai_midnight_to_midnight() {
        let orders = [
            order("LATE-PREV", 100, "SUCCESS", Some("2026-11-23T15:59:59Z")), // 23:59:59 on the 23rd
            order("FIRST", 100, "SUCCESS", Some("2026-11-23T16:00:00Z")),     // 00:00:00 on the 24th
            order("REFUNDED", 200, "REFUND", Some("2026-11-24T02:00:00Z")),
            order("LAST", 300, "SUCCESS", Some("2026-11-24T15:59:59Z")), // 23:59:59 on the 24th
            order("NEXT", 100, "SUCCESS", Some("2026-11-24T16:00:00Z")),
            order("UNPAID", 100, "NOTPAY", None),
            order("CLOSED", 100, "CLOSED", None),
        ];
        let rows = rows_for_day(orders.iter().rev(), day("2026-11-24"));
        let nos: Vec<&str> = rows.iter().map(|r| r.out_trade_no.as_str()).collect();
        assert_eq!(nos, ["FIRST", "REFUNDED", "LAST"]);
        assert_eq!(rows[0].trade_time, "2026-11-24 00:00:00");
        assert_eq!(rows[2].trade_time, "2026-11-24 23:59:59");
        assert!(rows.iter().all(|r| r.trade_state == "SUCCESS"));
    }

    #[test]
    fn payment_rows_look_like_wechat_s() {
        let rows = rows_for_day([&order("A1", 2999, "SUCCESS", Some("2026-11-24T02:00:00Z"))], day("2026-11-24"));
        let row = &rows[0];
        assert_eq!(row.trade_time, "2026-11-24 10:00:00");
        assert_eq!((row.sub_mchid.as_str(), row.trade_type.as_str(), row.bank_type.as_str()), ("0", "JSAPI", "OTHERS"));
        assert_eq!((row.settlement_total_fen, row.order_total_fen, row.refund_fen), (2999, 2999, 0));
        assert_eq!((row.refund_id.as_str(), row.out_refund_no.as_str(), row.refund_type.as_str()), ("0", "0", ""));
        assert_eq!((row.fee_e5, row.rate.as_str()), (18_000, "0.60%"));
        assert_eq!(row.transaction_id, "42000A1");
        assert_eq!(row.openid, "o-A1");
        assert_eq!(row.attach, "cart:7");
    }

    #[test]
    fn fee_rounds_half_up_to_fen() {
        assert_eq!([1, 83, 84, 100, 2999, 10_000].map(fee_fen), [0, 0, 1, 1, 18, 60]);
    }

    #[test]
    fn bill_dates_follow_wechat_s_window() {
        // 2026-11-25 09:59:59 and 10:00:00 in Shanghai.
        let before_ten = at("2026-11-25T01:59:59Z");
        let at_ten = at("2026-11-25T02:00:00Z");
        assert_eq!(check_bill_date("2026-11-24", before_ten), Err(DayRefusal::Creating));
        assert_eq!(check_bill_date("2026-11-24", at_ten), Ok(day("2026-11-24")));
        assert_eq!(check_bill_date("2026-11-25", at_ten), Err(DayRefusal::NotPast));
        assert_eq!(check_bill_date("2026-12-01", at_ten), Err(DayRefusal::NotPast));
        // Shanghai's today, not UTC's: at 00:30 on the 25th in Shanghai UTC still says the 24th.
        assert_eq!(check_bill_date("2026-11-24", at("2026-11-24T16:30:00Z")), Err(DayRefusal::Creating));
        assert_eq!(check_bill_date("2026-08-25", at_ten), Ok(day("2026-08-25")));
        assert_eq!(check_bill_date("2026-08-24", at_ten), Err(DayRefusal::TooOld));
        for bad in ["2026-11-5", "20261124", "2026/11/24", "2026-13-01", "", "2026-11-24 "] {
            assert_eq!(check_bill_date(bad, at_ten), Err(DayRefusal::Malformed), "{bad:?}");
        }
    }
}
