//! `/sim/*`: what a real user and WeChat's back office would do, as HTTP calls: get a login
//! code (`wx.login`), pay an order (the user taps "pay"), resolve an ABNORMAL refund (the
//! merchant's operator in the console), and look at what was sent.

use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::SimContext;
use super::chaos::Chaos;
use super::notifier::{self, Outgoing, PlainNotification};
use super::pay::transaction_of;
use super::state::{LoginCode, SimOrder};
use crate::wechat::wire::pay::{JsapiPrepayRequest, Payer, PrepayAmount};

pub fn router() -> Router<SimContext> {
    Router::new()
        .route("/sim/login-codes", post(issue_code))
        .route("/sim/pay", post(pay))
        .route("/sim/pay-batch", post(pay_batch))
        .route("/sim/orders", post(seed_orders))
        .route("/sim/orders/{out_trade_no}", get(order))
        .route("/sim/notifications", get(notifications))
        .route("/sim/stats", get(stats))
        .route("/sim/chaos", get(get_chaos).put(put_chaos))
        .route("/sim/calls", get(calls))
        .route("/sim/refunds/{out_refund_no}/resolve", post(super::refunds::resolve))
        .route("/sim/key-mode", axum::routing::put(super::certificates::set_mode))
        .route("/sim/certificates", get(super::certificates::show))
        .route("/sim/certificates/rotate", post(super::certificates::rotate))
}

async fn get_chaos(State(sim): State<SimContext>) -> Json<Chaos> {
    Json(sim.chaos.read().await.clone())
}

/// Replaces the chaos settings; a `seed` restarts the seeded generator so a run replays.
async fn put_chaos(State(sim): State<SimContext>, Json(chaos): Json<Chaos>) -> Response {
    if let Err(message) = chaos.validate() {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
    }
    if let Some(seed) = chaos.seed {
        sim.reseed(seed);
    }
    *sim.chaos.write().await = chaos.clone();
    Json(chaos).into_response()
}

#[derive(Debug, Deserialize)]
struct CallsQuery {
    out_trade_no: Option<String>,
}

/// The `/v3` calls received, optionally for one order.
async fn calls(State(sim): State<SimContext>, Query(q): Query<CallsQuery>) -> Json<serde_json::Value> {
    let state = sim.state.lock().await;
    let calls: Vec<_> =
        state.calls.iter().filter(|c| q.out_trade_no.is_none() || c.out_trade_no == q.out_trade_no).collect();
    Json(json!(calls))
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
    match settle(&sim, &request.out_trade_no).await {
        Ok((notification, notify_url)) => {
            let transaction_id = transaction_id_of(&notification);
            notifier::send(sim.clone(), notification, request.out_trade_no, notify_url, 1).await;
            Json(json!({ "transaction_id": transaction_id })).into_response()
        }
        Err((status, message)) => (status, Json(json!({ "error": message }))).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct PayBatchRequest {
    out_trade_nos: Vec<String>,
    /// Deliveries of each notification (WeChat duplicates; 3 means two extra copies).
    #[serde(default = "one")]
    copies: usize,
    /// Deliver in a seeded random order rather than payment order.
    #[serde(default)]
    shuffle: bool,
}

fn one() -> usize {
    1
}

/// Many users pay at once; their notifications (and duplicates) go out concurrently, in a
/// seeded random order when asked.
async fn pay_batch(State(sim): State<SimContext>, Json(request): Json<PayBatchRequest>) -> Response {
    let mut outgoing = Vec::with_capacity(request.out_trade_nos.len());
    let mut refused = Vec::new();
    for no in &request.out_trade_nos {
        match settle(&sim, no).await {
            Ok((notification, notify_url)) => outgoing.push(Outgoing {
                notification,
                out_trade_no: no.clone(),
                notify_url,
                copies: request.copies.max(1),
            }),
            Err((_, message)) => refused.push(json!({ "out_trade_no": no, "error": message })),
        }
    }
    let paid = outgoing.len();
    notifier::send_all(sim.clone(), outgoing, request.shuffle).await;
    Json(json!({ "paid": paid, "refused": refused })).into_response()
}

fn transaction_id_of(notification: &PlainNotification) -> Option<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&notification.resource_json)
        .ok()
        .and_then(|v| v.get("transaction_id").cloned())
}

/// Marks an order paid and builds its `TRANSACTION.SUCCESS` notification.
async fn settle(sim: &SimContext, out_trade_no: &str) -> Result<(PlainNotification, String), (StatusCode, String)> {
    let now = sim.clock.now();
    let mut state = sim.state.lock().await;
    let prepay_fresh = super::pay::check_prepay_fresh(&state, out_trade_no, now);
    state.next_transaction += 1;
    let serial = state.next_transaction;
    let Some(order) = state.orders.get_mut(out_trade_no) else {
        return Err((StatusCode::NOT_FOUND, "unknown order".into()));
    };
    if order.trade_state != "NOTPAY" {
        return Err((StatusCode::CONFLICT, format!("order is {}", order.trade_state)));
    }
    if order.time_expire.is_some_and(|t| t <= now) {
        return Err((StatusCode::CONFLICT, "order expired".into()));
    }
    // The payment sheet opens only with a live prepay_id (2 hours).
    prepay_fresh.map_err(|e| (StatusCode::CONFLICT, e))?;
    let prefix: u16 = sim.random::<u16>() % 1000;
    order.trade_state = "SUCCESS".into();
    order.transaction_id = Some(format!("4200001{prefix:03}{}{serial:010}", now.format("%Y%m%d")));
    order.success_time = Some(now);
    let resource = serde_json::to_string(&transaction_of(order)).unwrap_or_default();
    let id = uuid::Uuid::from_u128(sim.random()).to_string();
    Ok((PlainNotification::transaction_success(id, resource, now), order.request.notify_url.clone()))
}

#[derive(Debug, Deserialize)]
struct SeedOrder {
    out_trade_no: String,
    total: i64,
    openid: String,
    notify_url: String,
    description: String,
}

/// Registers orders as if each had gone through JSAPI prepay (load tests seed thousands of
/// orders this way instead of paying for three RSA signatures each).
async fn seed_orders(State(sim): State<SimContext>, Json(orders): Json<Vec<SeedOrder>>) -> Json<serde_json::Value> {
    let now = sim.clock.now();
    let mut state = sim.state.lock().await;
    for order in &orders {
        let request = JsapiPrepayRequest {
            appid: sim.keys.appid.clone(),
            mchid: sim.keys.mchid.clone(),
            description: order.description.clone(),
            out_trade_no: order.out_trade_no.clone(),
            time_expire: None,
            attach: None,
            notify_url: order.notify_url.clone(),
            amount: PrepayAmount { total: order.total, currency: Some("CNY".into()) },
            payer: Payer { openid: order.openid.clone() },
        };
        state.orders.insert(
            order.out_trade_no.clone(),
            SimOrder {
                request,
                prepay_id: format!("wx{:034x}", sim.random::<u128>()),
                created_at: now,
                time_expire: None,
                trade_state: "NOTPAY".into(),
                transaction_id: None,
                success_time: None,
            },
        );
    }
    Json(json!({ "seeded": orders.len() }))
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
        "notifications_dropped": state.notifications.iter().filter(|n| n.dropped).count(),
        "calls": state.calls.len(),
    }))
}
