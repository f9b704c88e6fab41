//! `POST /api/orders/{no}/refund` and `GET /api/orders/{no}/refunds` (operators only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::domain::time::from_ms;
use crate::domain::{Fen, Refund, RefundStatus};
use crate::services::refunds::{RefundError, RefundRequest};

use super::error::ApiError;
use super::extract::{Admin, ApiJson};
use super::state::AppState;

/// WeChat's limit on `reason`: 80 bytes of UTF-8 (protocol §5.5), not 80 characters (a Chinese
/// character takes 3). A longer reason would pass here and be refused by WeChat as PARAM_ERROR,
/// closing the refund.
const REASON_MAX_BYTES: usize = 80;

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

/// A refund as operators see it.
#[derive(Debug, Serialize)]
struct RefundView {
    out_refund_no: String,
    out_trade_no: String,
    amount_fen: i64,
    reason: Option<String>,
    status: RefundStatus,
    refund_id: Option<String>,
    requested_at: String,
    success_at: Option<String>,
}

impl From<Refund> for RefundView {
    fn from(r: Refund) -> Self {
        Self {
            out_refund_no: r.out_refund_no.into(),
            out_trade_no: r.out_trade_no.into(),
            amount_fen: r.amount.0,
            reason: r.reason,
            status: r.status,
            refund_id: r.refund_id,
            requested_at: from_ms(r.requested_at_ms).to_rfc3339(),
            success_at: r.success_at_ms.map(|ms| from_ms(ms).to_rfc3339()),
        }
    }
}

/// 201 when WeChat accepted the application (PROCESSING or SUCCESS), 202 when it is recorded
/// but WeChat could not be reached yet (the poller applies again with the same number).
async fn refund(
    State(state): State<AppState>,
    _admin: Admin,
    Path(out_trade_no): Path<String>,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<(StatusCode, Json<RefundView>), ApiError> {
    if body.reason.as_deref().is_some_and(|r| r.len() > REASON_MAX_BYTES) {
        return Err(ApiError::BadRequest(format!(
            "reason: at most {REASON_MAX_BYTES} bytes of UTF-8 (WeChat's limit; a Chinese character takes 3)"
        )));
    }
    let request = RefundRequest {
        out_trade_no: &out_trade_no,
        amount: Fen(body.amount_fen),
        reason: body.reason.as_deref(),
        out_refund_no: body.out_refund_no.as_deref(),
    };
    let refund = state.refunds.request(&request).await?;
    let status = if refund.status == RefundStatus::Requested { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(refund.into())))
}

async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Path(out_trade_no): Path<String>,
) -> Result<Json<Vec<RefundView>>, ApiError> {
    let refunds = state.refunds.of_order(&out_trade_no).await?;
    Ok(Json(refunds.into_iter().map(RefundView::from).collect()))
}

impl From<RefundError> for ApiError {
    fn from(err: RefundError) -> Self {
        match err {
            RefundError::NoOrder => ApiError::NotFound,
            RefundError::BadRefundNo(_) => ApiError::BadRequest(err.to_string()),
            RefundError::Refused(crate::domain::refund::RefundRefusal::BadAmount) => {
                ApiError::BadRequest(err.to_string())
            }
            RefundError::RefundNoReused(_) | RefundError::Refused(_) => ApiError::Conflict(err.to_string()),
            RefundError::RefusedByWechat(e) => {
                super::observe::note_cause(&e);
                ApiError::Upstream(format!("WeChat Pay refused the refund ({})", e.code().unwrap_or("error")))
            }
            RefundError::Wechat(e) => {
                super::observe::note_cause(&e);
                ApiError::Unavailable("WeChat Pay is not reachable right now".into())
            }
            RefundError::Storage(e) => e.into(),
        }
    }
}
