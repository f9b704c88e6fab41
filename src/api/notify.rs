//! `POST /api/pay/notify`: WeChat's payment and refund notifications.
//!
//! 204 only after the notification is committed to the inbox; otherwise a 4xx/5xx with
//! `{"code":"FAIL","message":...}` so WeChat retries on its schedule. The message is generic:
//! an anonymous prober must not learn which check failed (the reason is in the metrics, and in
//! the sampled log and `notify_rejections`).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::services::ingest::{self, IngestError};
use crate::services::rejection_sampler::Provenance;
use crate::wechat::client::signed_headers;
use crate::wechat::wire::notify::NotifyAnswer;

use super::state::AppState;

/// The route WeChat posts notifications to.
pub const PATH: &str = "/api/pay/notify";

pub fn router() -> Router<AppState> {
    Router::new().route(PATH, post(notify))
}

async fn notify(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            // Counted, not logged: a flood of oversized bodies would otherwise flood the log.
            state.metrics.notify_received.inc();
            state.metrics.notify_rejected.with_label_values(&[ingest::BODY_UNREADABLE]).inc();
            return fail(rejection.status(), REFUSED);
        }
    };
    match state.ingest.ingest(&signed_headers(&headers), &body).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        // 400 only for a resource we cannot parse after a valid signature (only WeChat gets
        // that far); 401 for everything else, whichever check it was.
        Err(IngestError::Rejected {
            provenance: Provenance::Signed,
            reason: "malformed_body" | "malformed_resource" | "unsupported_resource",
            ..
        }) => fail(StatusCode::BAD_REQUEST, REFUSED),
        Err(IngestError::Rejected { .. }) => fail(StatusCode::UNAUTHORIZED, REFUSED),
        Err(IngestError::Unavailable(_)) => fail(StatusCode::INTERNAL_SERVER_ERROR, UNAVAILABLE),
    }
}

/// The message of every refusal, whatever the check that failed.
pub const REFUSED: &str = "notification refused";
/// The message when we could not store it (WeChat retries).
pub const UNAVAILABLE: &str = "temporarily unable to store the notification";

/// A refusal in WeChat's answer shape.
pub(super) fn fail(status: StatusCode, message: &str) -> Response {
    (status, Json(NotifyAnswer { code: "FAIL".into(), message: message.to_owned() })).into_response()
}
