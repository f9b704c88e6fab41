//! `POST /api/pay/notify`: WeChat's payment and refund notifications.
//!
//! 204 only after the notification is committed to the inbox; otherwise a 4xx/5xx with
//! `{"code":"FAIL","message":...}` so WeChat retries on its schedule.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::services::ingest::{self, IngestError};
use crate::wechat::client::signed_headers;
use crate::wechat::wire::notify::NotifyAnswer;

use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/pay/notify", post(notify))
}

async fn notify(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            state.metrics.notify_received.inc();
            state.metrics.notify_rejected.with_label_values(&[ingest::BODY_UNREADABLE]).inc();
            tracing::warn!(reason = %rejection.body_text(), "notification body rejected");
            return fail(rejection.status(), &rejection.body_text());
        }
    };
    match state.ingest.ingest(&signed_headers(&headers), &body).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(IngestError::Rejected { reason, detail }) => {
            let status = match reason {
                "malformed_body" | "malformed_resource" | "unsupported_resource" => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            };
            fail(status, &format!("{reason}: {detail}"))
        }
        Err(IngestError::Unavailable(_)) => {
            fail(StatusCode::INTERNAL_SERVER_ERROR, "temporarily unable to store the notification")
        }
    }
}

fn fail(status: StatusCode, message: &str) -> Response {
    (status, Json(NotifyAnswer { code: "FAIL".into(), message: message.to_owned() })).into_response()
}
