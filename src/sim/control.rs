//! `/sim/*`: what a real user and WeChat's back office would do, as HTTP calls: get a login
//! code (`wx.login`), pay an order (the user taps "pay"), and look at what was sent.

use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::SimContext;
use super::notifier::{self, PlainNotification};
use super::pay::transaction_of;
use super::state::LoginCode;

pub fn router() -> Router<SimContext> {
    Router::new()
        .route("/sim/login-codes", post(issue_code))
        .route("/sim/pay", post(pay))
        .route("/sim/orders/{out_trade_no}", get(order))
        .route("/sim/notifications", get(notifications))
        .route("/sim/stats", get(stats))
}

#[derive(Debug, Deserialize, Default)]
struct CodeRequest {
    openid: Option<String>,
}

/// What `wx.login` returns to a mini-program: a fresh single-use code for a (new) user.
async fn issue_code(State(sim): State<SimContext>, body: Option<Json<CodeRequest>>) -> Json<serde_json::Value> {
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let openid =
        request.openid.unwrap_or_else(|| format!("o{}", hex::encode(sim.random::<[u8; 14]>())[..27].to_owned()));
    let code = hex::encode(sim.random::<[u8; 16]>());
    sim.state
        .lock()
        .await
        .codes
        .insert(code.clone(), LoginCode { openid: openid.clone(), issued_at: sim.clock.now(), used: false });
    Json(json!({ "code": code, "openid": openid }))
}

#[derive(Debug, Deserialize)]
struct PayRequest {
    out_trade_no: String,
}

/// The user pays: the order becomes SUCCESS and WeChat starts notifying.
async fn pay(State(sim): State<SimContext>, Json(request): Json<PayRequest>) -> Response {
    let now = sim.clock.now();
    let (notification, notify_url) = {
        let mut state = sim.state.lock().await;
        state.next_transaction += 1;
        let serial = state.next_transaction;
        let Some(order) = state.orders.get_mut(&request.out_trade_no) else {
            return (StatusCode::NOT_FOUND, Json(json!({"error": "unknown order"}))).into_response();
        };
        if order.trade_state != "NOTPAY" {
            return (StatusCode::CONFLICT, Json(json!({"error": format!("order is {}", order.trade_state)})))
                .into_response();
        }
        if order.time_expire.is_some_and(|t| t <= now) {
            return (StatusCode::CONFLICT, Json(json!({"error": "order expired"}))).into_response();
        }
        let prefix: u16 = sim.random::<u16>() % 1000;
        order.trade_state = "SUCCESS".into();
        order.transaction_id = Some(format!("4200001{prefix:03}{}{serial:010}", now.format("%Y%m%d")));
        order.success_time = Some(now);
        let resource = serde_json::to_string(&transaction_of(order)).unwrap_or_default();
        let id = uuid::Uuid::from_u128(sim.random()).to_string();
        (PlainNotification::transaction_success(id, resource, now), order.request.notify_url.clone())
    };
    let transaction_id = serde_json::from_str::<serde_json::Value>(&notification.resource_json)
        .ok()
        .and_then(|v| v.get("transaction_id").cloned());
    notifier::send(sim.clone(), notification, request.out_trade_no, notify_url).await;
    Json(json!({ "transaction_id": transaction_id })).into_response()
}

async fn order(State(sim): State<SimContext>, Path(out_trade_no): Path<String>) -> Response {
    match sim.state.lock().await.orders.get(&out_trade_no) {
        Some(order) => Json(json!(order)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn notifications(State(sim): State<SimContext>) -> Json<serde_json::Value> {
    Json(json!(sim.state.lock().await.notifications))
}

async fn stats(State(sim): State<SimContext>) -> Json<serde_json::Value> {
    let state = sim.state.lock().await;
    let delivered = state.notifications.iter().filter(|n| n.delivered).count();
    let attempts: usize = state.notifications.iter().map(|n| n.attempts.len()).sum();
    Json(json!({
        "orders": state.orders.len(),
        "paid": state.orders.values().filter(|o| o.trade_state == "SUCCESS").count(),
        "notifications": state.notifications.len(),
        "notifications_delivered": delivered,
        "delivery_attempts": attempts,
        "sign_errors": sim.sign_errors.load(Ordering::Relaxed),
    }))
}
