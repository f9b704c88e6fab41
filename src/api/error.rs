//! The API's one error type and its one conversion to HTTP. Bodies are client-safe
//! (`{code, message}`); the internal cause is attached to the request's span and logged once,
//! on the line the HTTP layer writes for the answer, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::services::login::LoginFailure;
use crate::services::orders::OrderError;
use crate::services::sync::SyncError;
use crate::storage::StorageError;
use crate::wechat::login::LoginError;

use super::observe::note_cause;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("payment provider unavailable; retry payment for order {out_trade_no}")]
    PaymentUnavailable { out_trade_no: String },
    #[error("{0}")]
    Upstream(String),
    /// Our own configuration is wrong (WeChat refuses our appid or secret): a 500, since the
    /// client can do nothing about it, and not a 503, since retrying cannot help either.
    #[error("{0}")]
    Misconfigured(String),
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_trade_no: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            ApiError::PaymentUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "PAYMENT_UNAVAILABLE"),
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR"),
            ApiError::Misconfigured(_) => (StatusCode::INTERNAL_SERVER_ERROR, "SERVER_MISCONFIGURED"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        let out_trade_no = match &self {
            ApiError::PaymentUnavailable { out_trade_no } => Some(out_trade_no.as_str()),
            _ => None,
        };
        (status, Json(ErrorBody { code, message: self.to_string(), out_trade_no })).into_response()
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::NotFound => ApiError::NotFound,
            StorageError::Unavailable(_) => {
                note_cause(&err);
                ApiError::Unavailable("database unavailable, retry shortly".into())
            }
            other => {
                note_cause(&other);
                ApiError::Internal
            }
        }
    }
}

impl From<LoginFailure> for ApiError {
    fn from(err: LoginFailure) -> Self {
        match err {
            LoginFailure::MalformedCode => ApiError::BadRequest(err.to_string()),
            LoginFailure::Wechat(LoginError::BadCode { .. }) => {
                ApiError::Unauthorized("login code invalid, expired or already used: call wx.login again".into())
            }
            LoginFailure::Wechat(LoginError::Blocked { .. }) => {
                ApiError::Conflict("this WeChat user cannot log in".into())
            }
            LoginFailure::Wechat(LoginError::Misconfigured { .. }) => {
                ApiError::Misconfigured("login is misconfigured on the server; retrying will not help".into())
            }
            LoginFailure::Wechat(other) => {
                note_cause(&other);
                ApiError::Unavailable("WeChat login unavailable, retry shortly".into())
            }
            LoginFailure::Storage(e) => e.into(),
            LoginFailure::Seal => ApiError::Internal,
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(err: OrderError) -> Self {
        match err {
            OrderError::UnknownProduct(_) | OrderError::BadQuantity => ApiError::BadRequest(err.to_string()),
            OrderError::NotPayable(_) => ApiError::Conflict(err.to_string()),
            OrderError::PaymentUnavailable { out_trade_no, source } => {
                note_cause(&format_args!("order {out_trade_no}: {source}"));
                ApiError::PaymentUnavailable { out_trade_no }
            }
            OrderError::Refused(source) if source.is_openid_mismatch() => {
                note_cause(&source);
                ApiError::Upstream(
                    "WeChat Pay refused the order (OPENID_MISMATCH): this account's WeChat identity does not belong \
                     to this mini-program; log in again from the mini-program"
                        .into(),
                )
            }
            OrderError::Refused(source) => {
                note_cause(&source);
                ApiError::Upstream(format!("WeChat Pay refused the order ({})", source.code().unwrap_or("error")))
            }
            OrderError::Storage(e) => e.into(),
            OrderError::Sign(_) => ApiError::Internal,
        }
    }
}

impl From<SyncError> for ApiError {
    fn from(err: SyncError) -> Self {
        match err {
            SyncError::Storage(e) => e.into(),
            SyncError::Wechat(e) if e.retryable() => {
                note_cause(&e);
                ApiError::Unavailable("WeChat Pay is not reachable right now; try again".into())
            }
            SyncError::Wechat(e) => {
                note_cause(&e);
                ApiError::Upstream(format!("WeChat Pay refused ({})", e.code().unwrap_or("error")))
            }
        }
    }
}

impl ApiError {
    /// The 401 for a missing, unknown or expired bearer token.
    pub fn bad_token() -> Self {
        ApiError::Unauthorized("missing, invalid or expired bearer token".into())
    }
}
