//! JSAPI prepay, query by out_trade_no, and close, with WeChat's validation and error codes:
//! undocumented keys refused by JSON pointer, limits in UTF-8 bytes, https-only notify_url,
//! `OPENID_MISMATCH` for a payer this appid never saw, `time_expire` clamped as WeChat does
//! (§7.3), and prepay_ids that open the payment sheet for 2 hours.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::domain::time::{parse_rfc3339, to_wechat_rfc3339};
use crate::domain::wechat_text::{ATTACH_MAX_BYTES, DESCRIPTION_MAX_BYTES, is_accepted_char};
use crate::wechat::wire::pay::{CloseRequest, JsapiPrepayRequest, Payer, Transaction, TransactionAmount};

use super::SimContext;
use super::auth::wechat_error;
use super::schema::{self, Shape};
use super::state::{SimOrder, SimState};

/// How long a prepay_id opens the payment sheet (protocol §5.1; it cannot be extended).
pub const PREPAY_TTL: Duration = Duration::hours(2);

/// `time_expire` bounds relative to the order call (§7.3): earlier than 1 minute is raised to
/// 1 minute, later than 90 days lowered to 90 days, absent means 7 days.
const EXPIRE_MIN: Duration = Duration::minutes(1);
const EXPIRE_MAX: Duration = Duration::days(90);
const EXPIRE_DEFAULT: Duration = Duration::days(7);

/// The request body as `T`, after refusing keys the API does not document (WeChat names them
/// all by JSON pointer); documented keys our wire type does not model are dropped first.
#[expect(clippy::result_large_err, reason = "the error is the response itself")]
fn parse_documented<T: DeserializeOwned>(body: &[u8], shape: &Shape, ignored: &[&str]) -> Result<T, Response> {
    let format_error =
        |e: serde_json::Error| wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", &format!("输入源格式错误: {e}"));
    let mut value: Value = serde_json::from_slice(body).map_err(format_error)?;
    let unknown = schema::unknown_fields(&value, shape);
    if !unknown.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(json!({
                "code": "PARAM_ERROR",
                "message": "请求中含有未在API文档中定义的参数",
                "detail": {"location": "body", "value": unknown},
            })),
        )
            .into_response());
    }
    if let Value::Object(map) = &mut value {
        map.retain(|key, _| !ignored.contains(&key.as_str()));
    }
    serde_json::from_value(value).map_err(format_error)
}

/// The instant the payer can no longer pay, as WeChat sets it from the requested one.
pub fn clamp_time_expire(requested: Option<DateTime<Utc>>, ordered_at: DateTime<Utc>) -> DateTime<Utc> {
    match requested {
        None => ordered_at + EXPIRE_DEFAULT,
        Some(at) => at.clamp(ordered_at + EXPIRE_MIN, ordered_at + EXPIRE_MAX),
    }
}

/// Whether the payment sheet of `out_trade_no` can still open: its latest prepay_id is less
/// than 2 hours old. The error is what `/sim/pay` answers.
pub fn check_prepay_fresh(state: &SimState, out_trade_no: &str, now: DateTime<Utc>) -> Result<(), String> {
    match state.prepay_issued_at.get(out_trade_no) {
        Some(issued) if now - *issued >= PREPAY_TTL => Err(format!(
            "prepay_id expired: issued at {} and valid for 2 hours; the merchant must request payment again",
            to_wechat_rfc3339(*issued)
        )),
        _ => Ok(()),
    }
}

pub async fn jsapi(State(sim): State<SimContext>, body: Bytes) -> Response {
    let request: JsapiPrepayRequest = match parse_documented(&body, &schema::JSAPI_PREPAY, schema::JSAPI_IGNORED) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if let Err(response) = validate(&sim, &request) {
        return response;
    }
    let now = sim.clock.now();
    let prepay_id = format!(
        "wx{}{:020x}",
        now.format("%d%H%M%S%f").to_string().chars().take(14).collect::<String>(),
        sim.random::<u64>()
    );
    let mut state = sim.state.lock().await;
    // The payer must be a user of this appid. The simulator plays one app, so "of this appid"
    // means an openid its jscode2session has answered; a made-up openid, or one our database
    // kept from another app (or another simulator run), is refused as WeChat refuses an openid
    // of another appid: HTTP 500 with a final code.
    if !state.openids.contains(&request.payer.openid) {
        return wechat_error(StatusCode::INTERNAL_SERVER_ERROR, "OPENID_MISMATCH", "openid和appid不匹配");
    }
    if let Some(existing) = state.orders.get_mut(&request.out_trade_no) {
        if existing.trade_state == "SUCCESS" || existing.trade_state == "REFUND" {
            return wechat_error(StatusCode::BAD_REQUEST, "ORDERPAID", "该订单已支付");
        }
        if existing.trade_state == "CLOSED" {
            return wechat_error(StatusCode::BAD_REQUEST, "ORDER_CLOSED", "订单已关闭");
        }
        if existing.request != request {
            return wechat_error(StatusCode::FORBIDDEN, "OUT_TRADE_NO_USED", "商户订单号重复");
        }
        existing.prepay_id.clone_from(&prepay_id);
        state.prepay_issued_at.insert(request.out_trade_no.clone(), now);
        return Json(json!({ "prepay_id": prepay_id })).into_response();
    }
    let time_expire = Some(clamp_time_expire(request.time_expire.as_deref().and_then(parse_rfc3339), now));
    state.prepay_issued_at.insert(request.out_trade_no.clone(), now);
    state.orders.insert(
        request.out_trade_no.clone(),
        SimOrder {
            request,
            prepay_id: prepay_id.clone(),
            created_at: now,
            time_expire,
            trade_state: "NOTPAY".into(),
            transaction_id: None,
            success_time: None,
        },
    );
    Json(json!({ "prepay_id": prepay_id })).into_response()
}

#[expect(clippy::result_large_err, reason = "the error is the response itself")]
fn validate(sim: &SimContext, r: &JsapiPrepayRequest) -> Result<(), Response> {
    let param = |field: &str, issue: &str| {
        Err((
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "PARAM_ERROR", "message": format!("{field} {issue}"), "detail": {"location": "body", "field": field}})),
        )
            .into_response())
    };
    if r.mchid != sim.keys.mchid {
        return Err(wechat_error(StatusCode::BAD_REQUEST, "MCH_NOT_EXISTS", "商户号不存在"));
    }
    if r.appid != sim.keys.appid {
        return Err(wechat_error(StatusCode::BAD_REQUEST, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配"));
    }
    let no = &r.out_trade_no;
    if !(6..=32).contains(&no.len()) || !no.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b)) {
        return param("/out_trade_no", "格式错误");
    }
    // Lengths are UTF-8 bytes; the real answer names the byte count in `detail.value`
    // (a 69-character Chinese description was refused with `value: 135`).
    let too_long = |field: &str, name: &str, bytes: usize, max: usize| {
        Err((
            StatusCode::BAD_REQUEST,
            Json(json!({
                "code": "PARAM_ERROR",
                "message": format!("输入源“/body{field}”映射到值字段“{name}”字符串规则校验失败，字节数 {bytes}，大于最大值 {max}"),
                "detail": {"location": "body", "field": field, "value": bytes},
            })),
        )
            .into_response())
    };
    if r.description.is_empty() {
        return param("/description", "必填");
    }
    if r.description.len() > DESCRIPTION_MAX_BYTES {
        return too_long("/description", "商品描述", r.description.len(), DESCRIPTION_MAX_BYTES);
    }
    if let Some(attach) = &r.attach
        && attach.len() > ATTACH_MAX_BYTES
    {
        return too_long("/attach", "附加数据", attach.len(), ATTACH_MAX_BYTES);
    }
    // WeChat takes characters of 1 to 3 UTF-8 bytes only (no emoji).
    for (field, text) in [("/description", Some(&r.description)), ("/attach", r.attach.as_ref())] {
        if text.is_some_and(|t| !t.chars().all(is_accepted_char)) {
            return param(field, "含有不支持的字符(4字节UTF-8)");
        }
    }
    if r.amount.total <= 0 {
        return param("/amount/total", "必须大于0");
    }
    if r.amount.currency.as_deref().is_some_and(|c| c != "CNY") {
        return param("/amount/currency", "仅支持CNY");
    }
    if r.payer.openid.is_empty() || r.payer.openid.len() > 128 {
        return param("/payer/openid", "长度不符合要求");
    }
    // https only (http is for leased-line merchants, §3.1); the simulator accepts http when
    // told to, since tests, the demo and benches run our API on plain http.
    let scheme_ok =
        r.notify_url.starts_with("https://") || (sim.allow_http_notify && r.notify_url.starts_with("http://"));
    if !scheme_ok || r.notify_url.len() > 255 || r.notify_url.contains('?') {
        return param("/notify_url", "格式错误: 须为https地址, 不超过255字节, 不能携带参数");
    }
    if let Some(expire) = &r.time_expire
        && parse_rfc3339(expire).is_none()
    {
        return param("/time_expire", "格式错误");
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct MchidQuery {
    mchid: Option<String>,
}

pub async fn query(
    State(sim): State<SimContext>,
    Path(out_trade_no): Path<String>,
    Query(q): Query<MchidQuery>,
) -> Response {
    if q.mchid.as_deref() != Some(sim.keys.mchid.as_str()) {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "mchid参数错误");
    }
    let state = sim.state.lock().await;
    let Some(order) = state.orders.get(&out_trade_no) else {
        return wechat_error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在");
    };
    Json(transaction_of(order)).into_response()
}

/// The transaction object WeChat returns for an order in its current state.
pub fn transaction_of(order: &SimOrder) -> Transaction {
    let paid = matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND");
    let desc = match order.trade_state.as_str() {
        "SUCCESS" => "支付成功",
        "CLOSED" => "订单已关闭",
        "REFUND" => "转入退款",
        _ => "订单未支付",
    };
    Transaction {
        appid: order.request.appid.clone(),
        mchid: order.request.mchid.clone(),
        out_trade_no: order.request.out_trade_no.clone(),
        transaction_id: order.transaction_id.clone(),
        trade_type: paid.then(|| "JSAPI".into()),
        trade_state: order.trade_state.clone(),
        trade_state_desc: desc.into(),
        bank_type: paid.then(|| "OTHERS".into()),
        attach: Some(order.request.attach.clone().unwrap_or_default()),
        success_time: order.success_time.map(to_wechat_rfc3339),
        payer: paid.then(|| Payer { openid: order.request.payer.openid.clone() }),
        amount: Some(TransactionAmount {
            total: Some(order.request.amount.total),
            payer_total: paid.then_some(order.request.amount.total),
            currency: Some("CNY".into()),
            payer_currency: Some("CNY".into()),
        }),
    }
}

pub async fn close(State(sim): State<SimContext>, Path(out_trade_no): Path<String>, body: Bytes) -> Response {
    let request: CloseRequest = match parse_documented(&body, &schema::CLOSE, &[]) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if request.mchid != sim.keys.mchid {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "mchid参数错误");
    }
    let mut state = sim.state.lock().await;
    let Some(order) = state.orders.get_mut(&out_trade_no) else {
        return wechat_error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在");
    };
    match order.trade_state.as_str() {
        "SUCCESS" | "REFUND" => wechat_error(StatusCode::BAD_REQUEST, "ORDERPAID", "订单已支付"),
        _ => {
            order.trade_state = "CLOSED".into();
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        parse_rfc3339(text).expect("rfc3339")
    }

    #[test]
    fn time_expire_is_clamped_as_wechat_does() {
        let ordered = at("2026-12-02T10:00:00+08:00");
        assert_eq!(clamp_time_expire(None, ordered), ordered + Duration::days(7), "absent: 7 days");
        assert_eq!(clamp_time_expire(Some(ordered), ordered), ordered + Duration::minutes(1), "too soon: +1 min");
        let past = ordered - Duration::hours(1);
        assert_eq!(clamp_time_expire(Some(past), ordered), ordered + Duration::minutes(1));
        let far = ordered + Duration::days(200);
        assert_eq!(clamp_time_expire(Some(far), ordered), ordered + Duration::days(90), "too late: +90 days");
        let two_hours = ordered + Duration::hours(2);
        assert_eq!(clamp_time_expire(Some(two_hours), ordered), two_hours, "within bounds: kept");
    }

    #[test]
    fn a_prepay_id_opens_the_payment_sheet_for_two_hours() {
        let issued = at("2026-12-02T10:00:00+08:00");
        let mut state = SimState::default();
        assert!(check_prepay_fresh(&state, "NO1", issued + Duration::days(1)).is_ok(), "seeded: no prepay_id");
        state.prepay_issued_at.insert("NO1".into(), issued);
        assert!(check_prepay_fresh(&state, "NO1", issued + Duration::minutes(119)).is_ok());
        let err = check_prepay_fresh(&state, "NO1", issued + Duration::hours(2)).expect_err("expired");
        assert!(err.contains("prepay_id expired"), "{err}");
    }
}
