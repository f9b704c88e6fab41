//! JSAPI prepay, query by out_trade_no, and close, with WeChat's validation and error codes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::domain::time::{parse_rfc3339, to_wechat_rfc3339};
use crate::wechat::wire::pay::{CloseRequest, JsapiPrepayRequest, Payer, Transaction, TransactionAmount};

use super::SimContext;
use super::auth::wechat_error;
use super::state::SimOrder;

pub async fn jsapi(State(sim): State<SimContext>, body: Bytes) -> Response {
    let request: JsapiPrepayRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", &format!("输入源格式错误: {e}"));
        }
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
        return Json(json!({ "prepay_id": prepay_id })).into_response();
    }
    let time_expire = request.time_expire.as_deref().and_then(parse_rfc3339);
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
    if r.description.is_empty()
        || r.description.chars().count() > 127
        || r.description.chars().any(|c| c.len_utf8() > 3)
    {
        return param("/description", "长度或字符不符合要求");
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
    let url_ok = (r.notify_url.starts_with("https://") || r.notify_url.starts_with("http://"))
        && r.notify_url.len() <= 255
        && !r.notify_url.contains('?');
    if !url_ok {
        return param("/notify_url", "格式错误");
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
    let request: CloseRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", &format!("输入源格式错误: {e}"));
        }
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
