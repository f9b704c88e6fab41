//! The request body is read whole, under a short deadline, *before* a share of the in-flight
//! capacity is taken ([`super::shed`]). Otherwise a few hundred clients that send a request
//! head and then trickle the body one byte at a time would each hold a slot until the request
//! timeout, and every genuine notification behind them would be shed (503).
//!
//! A body not received within `server.body_read_timeout_ms` is answered `408` and the
//! connection closed: in our error shape, or `{"code":"FAIL",...}` on the notify route (WeChat
//! retries it). Everything else is left to the extractors, so their answers stay as they were:
//! a body over the limit is passed on cut to one byte past it (the `Bytes`/`Json` extractors,
//! bounded by `DefaultBodyLimit`, answer 413), and a body that broke off is passed on as the
//! same error. Nothing larger than the limit (plus one read) is ever buffered.
//!
//! The price: bodies are now buffered by every open connection, not only by those holding a
//! share, so the worst case is `server.max_connections` x `server.body_limit_bytes` (256 MiB at
//! the defaults), each held at most `server.body_read_timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::StreamExt;
use serde_json::json;

use super::notify;
use crate::services::ingest;
use crate::telemetry::metrics::Metrics;

/// How request bodies are read.
#[derive(Debug, Clone)]
pub struct BodyRead {
    /// `server.body_limit_bytes`.
    pub limit: usize,
    /// `server.body_read_timeout_ms`.
    pub timeout: Duration,
    pub metrics: Metrics,
}

/// Reads the body (at most `limit` + 1 bytes) within `timeout`, then runs the request with it.
pub async fn read_first(State(read): State<Arc<BodyRead>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    // Nothing to wait for: no body, or a declared length the extractor refuses at once (413).
    let limit = u64::try_from(read.limit).unwrap_or(u64::MAX);
    if body.is_end_stream() || body.size_hint().lower() > limit {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let body = match tokio::time::timeout(read.timeout, buffer(body, read.limit)).await {
        Ok(Ok(bytes)) => Body::from(bytes),
        Ok(Err(err)) => Body::from_stream(futures::stream::iter([Err::<Bytes, _>(err)])),
        Err(_) => return too_slow(parts.uri.path(), &read.metrics),
    };
    next.run(Request::from_parts(parts, body)).await
}

/// The body's bytes, stopping one byte past `limit`.
async fn buffer(body: Body, limit: usize) -> Result<Bytes, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() > limit {
            bytes.truncate(limit.saturating_add(1));
            break;
        }
    }
    Ok(bytes.freeze())
}

/// 408, and the connection closed (the rest of the body will not be read).
fn too_slow(path: &str, metrics: &Metrics) -> Response {
    const MESSAGE: &str = "request body not received in time";
    let mut response = if path == notify::PATH {
        // Counted like any unreadable notification body; not logged one by one.
        metrics.notify_received.inc();
        metrics.notify_rejected.with_label_values(&[ingest::BODY_UNREADABLE]).inc();
        notify::fail(StatusCode::REQUEST_TIMEOUT, notify::REFUSED)
    } else {
        (StatusCode::REQUEST_TIMEOUT, Json(json!({ "code": "REQUEST_TIMEOUT", "message": MESSAGE }))).into_response()
    };
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
