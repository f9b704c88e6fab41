//! `POST /api/orders`, `GET /api/orders/{no}` (asks WeChat while unpaid, single-flight),
//! `POST /api/orders/{no}/payment` (pay again), `POST /api/orders/{no}/close` (cancel).

use std::time::Instant;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::domain::time::from_ms;
use crate::domain::{Order, OrderStatus};
use crate::services::orders::PaymentParams;
use crate::services::sync::CloseOutcome;

use super::error::ApiError;
use super::extract::{ApiJson, CurrentUser};
use super::observe::RequestStart;
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/orders", post(create))
        .route("/api/orders/{out_trade_no}", get(show))
        .route("/api/orders/{out_trade_no}/payment", post(payment))
        .route("/api/orders/{out_trade_no}/close", post(close))
}

/// The client names a product and a quantity, never a price.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    product_id: String,
    #[serde(default = "one")]
    quantity: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Serialize)]
pub struct OrderView {
    out_trade_no: String,
    status: OrderStatus,
    product_id: String,
    quantity: i64,
    amount_fen: i64,
    description: String,
    created_at: String,
    time_expire: String,
    paid_at: Option<String>,
    transaction_id: Option<String>,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            out_trade_no: o.out_trade_no.into(),
            status: o.status,
            product_id: o.product_id,
            quantity: o.quantity,
            amount_fen: o.amount.0,
            description: o.description,
            created_at: from_ms(o.created_at_ms).to_rfc3339(),
            time_expire: from_ms(o.time_expire_ms).to_rfc3339(),
            paid_at: o.paid_at_ms.map(|ms| from_ms(ms).to_rfc3339()),
            transaction_id: o.transaction_id.map(String::from),
        }
    }
}

#[derive(Debug, Serialize)]
struct Created {
    #[serde(flatten)]
    order: OrderView,
    payment: PaymentParams,
}

/// When the request arrived (the deadline of a prepay counts from it); now when no `observe`
/// layer recorded it (router tests).
fn arrival(start: Option<Extension<RequestStart>>) -> Instant {
    start.map_or_else(Instant::now, |Extension(RequestStart(at))| at)
}

async fn create(
    State(state): State<AppState>,
    start: Option<Extension<RequestStart>>,
    CurrentUser(user_id): CurrentUser,
    ApiJson(body): ApiJson<CreateOrder>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let created = state.orders.create(user_id, &body.product_id, body.quantity, arrival(start)).await?;
    Ok((StatusCode::CREATED, Json(Created { order: created.order.into(), payment: created.payment })))
}

async fn show(
    State(state): State<AppState>,
    CurrentUser(user_id): CurrentUser,
    Path(out_trade_no): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let order = state.orders.get_for_user(user_id, &out_trade_no).await?.ok_or(ApiError::NotFound)?;
    // Only a status that makes us ask WeChat counts against the user's quota.
    if order.is_awaiting_payment() {
        state.orders.allow_request(user_id)?;
    }
    Ok(Json(state.sync.refresh(order).await?.into()))
}

/// The owner cancels an unpaid order: closed at WeChat first (so it can no longer be paid),
/// then here. 409 if it is already final, including when the payer was faster.
async fn close(
    State(state): State<AppState>,
    CurrentUser(user_id): CurrentUser,
    Path(out_trade_no): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let order = state.orders.get_for_user(user_id, &out_trade_no).await?.ok_or(ApiError::NotFound)?;
    state.orders.allow_request(user_id)?;
    let outcome = state.sync.close(&order).await?;
    let current = state.orders.get_for_user(user_id, &out_trade_no).await?.ok_or(ApiError::NotFound)?;
    match outcome {
        CloseOutcome::Closed => Ok(Json(current.into())),
        CloseOutcome::AlreadyPaid => Err(ApiError::Conflict(format!("order {out_trade_no} is already paid"))),
        CloseOutcome::NotOpen(status) => Err(ApiError::Conflict(format!("order {out_trade_no} is {status}"))),
    }
}

async fn payment(
    State(state): State<AppState>,
    start: Option<Extension<RequestStart>>,
    CurrentUser(user_id): CurrentUser,
    Path(out_trade_no): Path<String>,
) -> Result<Json<PaymentParams>, ApiError> {
    let order = state.orders.get_for_user(user_id, &out_trade_no).await?.ok_or(ApiError::NotFound)?;
    state.orders.allow_request(user_id)?;
    Ok(Json(state.orders.request_payment(&order, arrival(start)).await?))
}
