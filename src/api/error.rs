//! The API's one error type and its one conversion to HTTP. Bodies are client-safe
//! (`{code, message}`); the internal cause is attached to the request's span and logged once,
//! on the line the HTTP layer writes for the answer, never returned.

use std::time::Duration;

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::services::login::LoginFailure;
use crate::services::orders::OrderError;
use crate::services::quota::Refusal;
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
    PaymentUnavailable { out_trade_no: String, retry_after: Duration },
    /// A quota refused the request (429).
    #[error("{refusal}")]
    RateLimited { refusal: Refusal },
    /// Our share of the WeChat call budget is spent for now (503): nothing was sent to WeChat.
    #[error("the payment provider is busy; retry shortly")]
    Busy { retry_after: Duration },
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
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            ApiError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_BUSY"),
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR"),
            ApiError::Misconfigured(_) => (StatusCode::INTERNAL_SERVER_ERROR, "SERVER_MISCONFIGURED"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        let out_trade_no = match &self {
            ApiError::PaymentUnavailable { out_trade_no, .. } => Some(out_trade_no.as_str()),
            _ => None,
        };
        let retry_after = match &self {
            ApiError::PaymentUnavailable { retry_after, .. } | ApiError::Busy { retry_after } => Some(*retry_after),
            ApiError::RateLimited { refusal } => Some(refusal.retry_after),
            _ => None,
        };
        let mut response = (status, Json(ErrorBody { code, message: self.to_string(), out_trade_no })).into_response();
        if let Some(wait) = retry_after {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
        }
        response
    }
}

/// `Retry-After` in whole seconds (RFC 9110 takes no fractions), rounded up and at least 1: a 0
/// would invite an immediate retry that the same limit refuses.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::RateLimited { refusal }
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
            LoginFailure::Limited(refusal) => refusal.into(),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(err: OrderError) -> Self {
        match err {
            OrderError::UnknownProduct(_) | OrderError::BadQuantity => ApiError::BadRequest(err.to_string()),
            OrderError::NotPayable(_) => ApiError::Conflict(err.to_string()),
            OrderError::PaymentUnavailable { out_trade_no, why } => {
                note_cause(&format_args!("order {out_trade_no}: {why}"));
                ApiError::PaymentUnavailable { out_trade_no, retry_after: why.retry_after() }
            }
            OrderError::Limited(refusal) => refusal.into(),
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
            SyncError::Wechat(e) if e.busy_retry_after().is_some() => {
                note_cause(&e);
                ApiError::Busy { retry_after: e.busy_retry_after().unwrap_or(Duration::from_secs(1)) }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }
}
