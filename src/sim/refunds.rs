//! Refunds as WeChat runs them: an application is accepted as PROCESSING (idempotent by
//! out_refund_no) under WeChat's rules (protocol §5.5: documented fields only, a reason of at
//! most 80 bytes, within 365 days of the payment, at most 50 refunds per order, a minute
//! between two refunds of one order, never more than the order's total in all, and the
//! merchant's balance, which chaos can make short), completes a little later (60 s divided by
//! the time scale; chaos can make it end CLOSED or ABNORMAL instead), turns the order's trade
//! state to REFUND, and is announced by a signed, encrypted `REFUND.<status>` notification.
//! An ABNORMAL refund waits for the operator (`resolve`, the merchant console's stand-in).
//! Refund rows appear in the bill of the day WeChat accepted the refund (`create_time`).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::domain::time::to_wechat_rfc3339;
use crate::wechat::wire::refund::{Refund, RefundAmount, RefundNotice, RefundNoticeAmount, RefundRequest};

use super::SimContext;
use super::auth::wechat_error;
use super::notifier::{self, PlainNotification};

/// How long a refund stays PROCESSING at WeChat (divided by the simulator's time scale).
const PROCESSING_SECS: u64 = 60;
/// Refunds are accepted up to this long after the payment.
const REFUND_WINDOW: TimeDelta = TimeDelta::days(365);
/// Refund applications one order may have.
const MAX_REFUNDS_PER_ORDER: usize = 50;
/// Shortest time between two refund applications of one order.
const MIN_REFUND_GAP: TimeDelta = TimeDelta::minutes(1);
/// Longest `reason`, in UTF-8 bytes.
const REASON_MAX_BYTES: usize = 80;

/// The documented fields of a refund application (protocol §5.5), as JSON pointers below
/// `/body`: anything else is refused the way WeChat refuses it.
const BODY_FIELDS: [&str; 8] = [
    "transaction_id",
    "out_trade_no",
    "out_refund_no",
    "reason",
    "notify_url",
    "funds_account",
    "amount",
    "goods_detail",
];
const AMOUNT_FIELDS: [&str; 4] = ["refund", "total", "currency", "from"];
const FROM_FIELDS: [&str; 2] = ["account", "amount"];
const GOODS_FIELDS: [&str; 6] =
    ["merchant_goods_id", "wechatpay_goods_id", "goods_name", "unit_price", "refund_amount", "refund_quantity"];

/// JSON pointers (`/body/...`) of every key of `body` the refund API does not define.
pub fn undocumented_fields(body: &Value) -> Vec<String> {
    fn keys(value: &Value, allowed: &[&str], at: &str, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            out.extend(map.keys().filter(|k| !allowed.contains(&k.as_str())).map(|k| format!("{at}/{k}")));
        }
    }
    let mut out = Vec::new();
    keys(body, &BODY_FIELDS, "/body", &mut out);
    if let Some(amount) = body.get("amount") {
        keys(amount, &AMOUNT_FIELDS, "/body/amount", &mut out);
        for (i, from) in amount.get("from").and_then(Value::as_array).into_iter().flatten().enumerate() {
            keys(from, &FROM_FIELDS, &format!("/body/amount/from/{i}"), &mut out);
        }
    }
    for (i, goods) in body.get("goods_detail").and_then(Value::as_array).into_iter().flatten().enumerate() {
        keys(goods, &GOODS_FIELDS, &format!("/body/goods_detail/{i}"), &mut out);
    }
    out
}

/// A `400 PARAM_ERROR` with WeChat's `detail` object.
fn param_error(message: &str, detail: Value) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"code": "PARAM_ERROR", "message": message, "detail": detail})))
        .into_response()
}

/// WeChat's memory of one refund.
#[derive(Debug, Clone, Serialize)]
pub struct SimRefund {
    pub request: RefundRequest,
    pub refund_id: String,
    pub transaction_id: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub success_time: Option<DateTime<Utc>>,
    pub notify_url: String,
}

impl SimRefund {
    pub fn to_wire(&self) -> Refund {
        Refund {
            refund_id: self.refund_id.clone(),
            out_refund_no: self.request.out_refund_no.clone(),
            transaction_id: self.transaction_id.clone(),
            out_trade_no: self.request.out_trade_no.clone(),
            channel: "ORIGINAL".into(),
            user_received_account: "支付用户零钱".into(),
            success_time: self.success_time.map(to_wechat_rfc3339),
            create_time: to_wechat_rfc3339(self.created_at),
            status: self.status.clone(),
            amount: RefundAmount {
                total: self.request.amount.total,
                refund: self.request.amount.refund,
                payer_total: self.request.amount.total,
                payer_refund: self.request.amount.refund,
                // No coupons here: WeChat pays back all that was asked.
                settlement_refund: Some(self.request.amount.refund),
                currency: "CNY".into(),
            },
        }
    }
}

pub async fn apply(State(sim): State<SimContext>, body: Bytes) -> Response {
    let raw: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", &format!("输入源格式错误: {e}")),
    };
    let unknown = undocumented_fields(&raw);
    if !unknown.is_empty() {
        return param_error("请求中含有未在API文档中定义的参数", json!({"location": "body", "value": unknown}));
    }
    let request: RefundRequest = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", &format!("输入源格式错误: {e}")),
    };
    if let Some(bytes) = request.reason.as_ref().map(String::len).filter(|n| *n > REASON_MAX_BYTES) {
        return param_error(
            "输入源“/body/reason”映射到值字段“退款原因”字符串规则校验失败，字节数超过最大值80",
            json!({"location": "body", "field": "/body/reason", "value": bytes}),
        );
    }
    // Refund notify_url: https, at most 256 bytes, no query string (§3.1, §5.5); http only when
    // the simulator is told to accept it, as for payments.
    if let Some(url) = &request.notify_url {
        let scheme_ok = url.starts_with("https://") || (sim.allow_http_notify && url.starts_with("http://"));
        if !scheme_ok || url.len() > 256 || url.contains('?') {
            return param_error(
                "notify_url 格式错误: 须为https地址, 不超过256字节, 不能携带参数",
                json!({"location": "body", "field": "/body/notify_url", "value": url.len()}),
            );
        }
    }
    let no = &request.out_refund_no;
    if no.is_empty() || no.len() > 64 || !no.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b)) {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "out_refund_no 格式错误");
    }
    if request.amount.refund <= 0 || request.amount.currency != "CNY" {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "amount 参数错误");
    }
    let now = sim.clock.now();
    let mut state = sim.state.lock().await;
    if let Some(existing) = state.refunds.get(no) {
        if existing.request.amount != request.amount || existing.request.out_trade_no != request.out_trade_no {
            return wechat_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "退款单号已存在且参数不一致");
        }
        return Json(existing.to_wire()).into_response();
    }
    let Some(order) = state.orders.get(&request.out_trade_no) else {
        return wechat_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "订单不存在");
    };
    if !matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND") {
        return wechat_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "订单未支付");
    }
    if order.success_time.is_some_and(|paid| now - paid > REFUND_WINDOW) {
        return wechat_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "订单已超过退款期限(支付后一年内)");
    }
    let earlier: Vec<&SimRefund> =
        state.refunds.values().filter(|r| r.request.out_trade_no == request.out_trade_no).collect();
    // The code and status of these two refusals are not documented (UNCONFIRMED); the rules are.
    if earlier.len() >= MAX_REFUNDS_PER_ORDER {
        return wechat_error(StatusCode::FORBIDDEN, "RULE_LIMIT", "退款次数超过限制, 一笔订单最多退款50次");
    }
    if earlier.iter().any(|r| now - r.created_at < MIN_REFUND_GAP) {
        return wechat_error(StatusCode::TOO_MANY_REQUESTS, "FREQUENCY_LIMITED", "同一笔订单两次退款间隔需大于1分钟");
    }
    if sim.chaos.read().await.refund_not_enough {
        return wechat_error(StatusCode::FORBIDDEN, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起");
    }
    let total = order.request.amount.total;
    if request.amount.total != total {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "订单金额与原订单不一致");
    }
    let refunded: i64 = state
        .refunds
        .values()
        .filter(|r| r.request.out_trade_no == request.out_trade_no && r.status != "CLOSED")
        .map(|r| r.request.amount.refund)
        .sum();
    if refunded + request.amount.refund > total {
        return wechat_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "申请退款金额超过订单可退金额");
    }
    let transaction_id = order.transaction_id.clone().unwrap_or_default();
    let notify_url = request.notify_url.clone().unwrap_or_else(|| order.request.notify_url.clone());
    let refund_id = format!("50{:027}", sim.random::<u64>() % 10u64.pow(18));
    let refund = SimRefund {
        request: request.clone(),
        refund_id,
        transaction_id,
        status: "PROCESSING".into(),
        created_at: now,
        success_time: None,
        notify_url,
    };
    let answer = refund.to_wire();
    state.refunds.insert(no.clone(), refund);
    if let Some(order) = state.orders.get_mut(&request.out_trade_no) {
        order.trade_state = "REFUND".into();
    }
    drop(state);
    let delay = Duration::from_secs(PROCESSING_SECS).div_f64(sim.time_scale);
    tokio::spawn(complete_later(sim.clone(), no.clone(), delay));
    Json(answer).into_response()
}

/// The bank side finishes: SUCCESS, and WeChat notifies.
async fn complete_later(sim: SimContext, out_refund_no: String, delay: Duration) {
    tokio::select! {
        () = sim.stop.cancelled() => return,
        () = tokio::time::sleep(delay) => {}
    }
    let now = sim.clock.now();
    let outcome = sim.chaos.read().await.refund_outcome.clone().unwrap_or_else(|| "SUCCESS".into());
    let succeeded = outcome == "SUCCESS";
    let mut state = sim.state.lock().await;
    let Some(refund) = state.refunds.get_mut(&out_refund_no) else { return };
    if refund.status != "PROCESSING" {
        return;
    }
    refund.status.clone_from(&outcome);
    refund.success_time = succeeded.then_some(now);
    let notice = RefundNotice {
        mchid: sim.keys.mchid.clone(),
        out_trade_no: refund.request.out_trade_no.clone(),
        transaction_id: refund.transaction_id.clone(),
        out_refund_no: refund.request.out_refund_no.clone(),
        refund_id: refund.refund_id.clone(),
        refund_status: outcome.clone(),
        success_time: succeeded.then(|| to_wechat_rfc3339(now)),
        user_received_account: "支付用户零钱".into(),
        amount: RefundNoticeAmount {
            total: refund.request.amount.total,
            refund: refund.request.amount.refund,
            payer_total: refund.request.amount.total,
            payer_refund: refund.request.amount.refund,
        },
    };
    let out_trade_no = refund.request.out_trade_no.clone();
    let notify_url = refund.notify_url.clone();
    drop(state);
    let id = uuid::Uuid::from_u128(sim.random()).to_string();
    let resource = serde_json::to_string(&notice).unwrap_or_default();
    let notification = PlainNotification {
        id,
        event_type: format!("REFUND.{outcome}"),
        summary: match outcome.as_str() {
            "SUCCESS" => "退款成功",
            "CLOSED" => "退款关闭",
            _ => "退款异常",
        }
        .into(),
        original_type: "refund".into(),
        associated_data: "refund".into(),
        resource_json: resource,
        create_time: now,
    };
    notifier::send(sim, notification, out_trade_no, notify_url, 1).await;
}

pub async fn query(State(sim): State<SimContext>, Path(out_refund_no): Path<String>) -> Response {
    match sim.state.lock().await.refunds.get(&out_refund_no) {
        Some(refund) => Json(refund.to_wire()).into_response(),
        None => wechat_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "退款单不存在"),
    }
}

/// `POST /sim/refunds/{out_refund_no}/resolve`: the operator handles an ABNORMAL refund in the
/// merchant console (or through `apply-abnormal-refund`) and the money reaches the payer: the
/// refund becomes SUCCESS. No notification is sent: neither the official docs nor the SDKs
/// (wechatpay-go/java) say whether WeChat sends a `REFUND.SUCCESS` after a resolved ABNORMAL
/// refund, so the simulator takes the harder case, where only a query can see it.
/// `{"outcome": "CLOSED"}` stands for an operator who gives up instead: the money goes back
/// to the merchant's account and the refund ends CLOSED.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolveRequest {
    outcome: Option<String>,
}

pub async fn resolve(
    State(sim): State<SimContext>,
    Path(out_refund_no): Path<String>,
    body: Option<Json<ResolveRequest>>,
) -> Response {
    let outcome = body.and_then(|Json(r)| r.outcome).unwrap_or_else(|| "SUCCESS".into());
    if !matches!(outcome.as_str(), "SUCCESS" | "CLOSED") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "outcome must be SUCCESS or CLOSED"}))).into_response();
    }
    let now = sim.clock.now();
    let mut state = sim.state.lock().await;
    let Some(refund) = state.refunds.get_mut(&out_refund_no) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "unknown refund"}))).into_response();
    };
    if refund.status != "ABNORMAL" {
        let message = format!("refund is {}, only ABNORMAL ones are resolved", refund.status);
        return (StatusCode::CONFLICT, Json(json!({"error": message}))).into_response();
    }
    refund.success_time = (outcome == "SUCCESS").then_some(now);
    refund.status = outcome;
    Json(refund.to_wire()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undocumented_fields_are_named_by_json_pointer() {
        let body = json!({
            "out_trade_no": "A1", "out_refund_no": "R1", "reason": "x", "foo": 1,
            "amount": {"refund": 1, "total": 2, "currency": "CNY", "bar": true, "from": [{"account": "AVAILABLE", "amount": 1, "baz": 0}]},
            "goods_detail": [{"goods_name": "g", "qux": 1}],
        });
        let mut found = undocumented_fields(&body);
        found.sort();
        assert_eq!(
            found,
            ["/body/amount/bar", "/body/amount/from/0/baz", "/body/foo", "/body/goods_detail/0/qux"].map(String::from)
        );
    }

    /// Everything our client sends is documented (its fields are the wire struct's).
    #[test]
    fn our_refund_request_has_no_undocumented_field() {
        let request = RefundRequest {
            transaction_id: Some("4200".into()),
            out_trade_no: "A1".into(),
            out_refund_no: "R1".into(),
            reason: Some("破损".into()),
            notify_url: Some("https://shop.example/notify".into()),
            amount: crate::wechat::wire::refund::RefundRequestAmount { refund: 1, total: 2, currency: "CNY".into() },
        };
        let body = serde_json::to_value(&request).expect("json");
        assert_eq!(undocumented_fields(&body), Vec::<String>::new());
    }
}
