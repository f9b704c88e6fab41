//! `POST /api/orders/{no}/refund` (operators only): refund part or all of a paid order.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::services::refunds::RefundError;
use crate::storage::refunds::RefundRow;

use super::error::ApiError;
use super::extract::{Admin, ApiJson};
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/orders/{out_trade_no}/refund", post(refund))
        .route("/api/orders/{out_trade_no}/refunds", get(list))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    amount_fen: i64,
    #[serde(default)]
    reason: Option<String>,
    /// Optional idempotency key: the same number again returns the refund already recorded.
    #[serde(default)]
    out_refund_no: Option<String>,
}

/// 201 when WeChat accepted the application (PROCESSING or SUCCESS), 202 when it is recorded
/// but WeChat could not be reached yet (the poller applies again with the same number).
async fn refund(
    State(state): State<AppState>,
    _admin: Admin,
    Path(out_trade_no): Path<String>,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<(StatusCode, Json<RefundRow>), ApiError> {
    if body.reason.as_deref().is_some_and(|r| r.chars().count() > 80) {
        return Err(ApiError::BadRequest("reason: at most 80 characters".into()));
    }
    let row = state
        .refunds
        .request(&out_trade_no, body.amount_fen, body.reason.as_deref(), body.out_refund_no.as_deref())
        .await?;
    let status = if row.status == "REQUESTED" { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(row)))
}

async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Path(out_trade_no): Path<String>,
) -> Result<Json<Vec<RefundRow>>, ApiError> {
    let order = state.db.order_by_no(&out_trade_no).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(state.db.refunds_of_order(order.id).await?))
}

impl From<RefundError> for ApiError {
    fn from(err: RefundError) -> Self {
        match err {
            RefundError::NoOrder => ApiError::NotFound,
            RefundError::BadAmount | RefundError::BadRefundNo => ApiError::BadRequest(err.to_string()),
            RefundError::RefundNoReused(_) => ApiError::Conflict(err.to_string()),
            RefundError::NotPaid(_) | RefundError::TooMuch(..) => ApiError::Conflict(err.to_string()),
            RefundError::Refused(e) => {
                tracing::error!(error = %e, "WeChat refused the refund");
                ApiError::Upstream(format!("WeChat Pay refused the refund ({})", e.code().unwrap_or("error")))
            }
            RefundError::Wechat(e) => {
                tracing::warn!(error = %e, "WeChat unavailable for refund");
                ApiError::Unavailable("WeChat Pay is not reachable right now".into())
            }
            RefundError::Storage(e) => e.into(),
        }
    }
}
