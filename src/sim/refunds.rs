//! Refunds as WeChat runs them: an application is accepted as PROCESSING (idempotent by
//! out_refund_no, never more than the order's total in all), completes a little later (60 s
//! divided by the time scale; chaos can make it end CLOSED or ABNORMAL instead), turns the order's
//! trade state to REFUND, and is announced by a signed, encrypted `REFUND.<status>` notification. Refund rows appear in the bill of the day
//! the refund was applied for.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::time::to_wechat_rfc3339;
use crate::wechat::wire::refund::{Refund, RefundAmount, RefundNotice, RefundNoticeAmount, RefundRequest};

use super::SimContext;
use super::auth::wechat_error;
use super::notifier::{self, PlainNotification};

/// How long a refund stays PROCESSING at WeChat (divided by the simulator's time scale).
const PROCESSING_SECS: u64 = 60;

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
                currency: "CNY".into(),
            },
        }
    }
}

pub async fn apply(State(sim): State<SimContext>, body: Bytes) -> Response {
    let request: RefundRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", &format!("输入源格式错误: {e}")),
    };
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
