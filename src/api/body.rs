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
//! same error. At most `limit` + 1 bytes are copied and allocated per body: the buffer starts at
//! the declared length (at most `limit` + 1), grows by doubling but never past `limit` + 1, and of a
//! chunk (hyper hands over up to its read buffer, ~400 KiB, at once) only what fits is copied.
//!
//! The price: bodies are now buffered by every open connection, not only by those holding a
//! share, so the worst case is `server.max_connections` x (`server.body_limit_bytes` + 1) (256 MiB
//! at the defaults), each held at most `server.body_read_timeout_ms`; hyper's own read buffer per
//! connection comes on top. While a connection reads its body it stays evictable at the
//! connection cap ([`super::connections`]); once the body is buffered it is busy.

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

use super::connections::ReadingBody;
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
    // Set by our accept loop: the connection is busy (not evictable) once we have the body.
    let reading = parts.extensions.get::<ReadingBody>().cloned();
    let handling = || {
        if let Some(reading) = &reading {
            reading.done();
        }
    };
    // Nothing to wait for: no body, or a declared length the extractor refuses at once (413).
    let limit = u64::try_from(read.limit).unwrap_or(u64::MAX);
    if body.is_end_stream() || body.size_hint().lower() > limit {
        handling();
        return next.run(Request::from_parts(parts, body)).await;
    }
    let body = match tokio::time::timeout(read.timeout, buffer(body, read.limit)).await {
        Ok(Ok(bytes)) => Body::from(bytes),
        Ok(Err(err)) => Body::from_stream(futures::stream::iter([Err::<Bytes, _>(err)])),
        Err(_) => return too_slow(parts.uri.path(), &read.metrics),
    };
    handling();
    next.run(Request::from_parts(parts, body)).await
}

/// The body's bytes, stopping one byte past `limit`.
async fn buffer(body: Body, limit: usize) -> Result<Bytes, axum::Error> {
    let declared = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    let stream = body.into_data_stream();
    Ok(buffer_stream(stream, declared, limit).await?.freeze())
}

/// [`buffer`]'s loop: `declared` is the body's announced length (0 when unknown).
async fn buffer_stream<S, E>(mut stream: S, declared: usize, limit: usize) -> Result<BytesMut, E>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
{
    let most = limit.saturating_add(1);
    let mut bytes = BytesMut::with_capacity(declared.min(most));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let take = chunk.len().min(most - bytes.len());
        let needed = bytes.len() + take;
        if needed > bytes.capacity() {
            // Grow as `BytesMut` would (doubling), but never past `limit` + 1.
            let mut grown = BytesMut::with_capacity(needed.max(bytes.capacity().saturating_mul(2)).min(most));
            grown.extend_from_slice(&bytes);
            bytes = grown;
        }
        bytes.extend_from_slice(&chunk[..take]);
        if bytes.len() == most {
            break;
        }
    }
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin {
        futures::stream::iter(sizes.iter().map(|&n| Ok(Bytes::from(vec![b'x'; n]))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn a_huge_chunk_is_not_copied_whole_and_the_buffer_never_exceeds_limit_plus_one() {
        const LIMIT: usize = 64 * 1024;
        // One 1 MiB chunk (undeclared length), then more that must not be read.
        let bytes = buffer_stream(chunks(&[1024 * 1024, 10]), 0, LIMIT).await.unwrap();
        assert_eq!(bytes.len(), LIMIT + 1);
        assert!(bytes.capacity() <= LIMIT + 1, "capacity {}", bytes.capacity());
        // A declared length far above the limit does not size the buffer past it.
        let bytes = buffer_stream(chunks(&[LIMIT, LIMIT]), usize::MAX, LIMIT).await.unwrap();
        assert_eq!((bytes.len(), bytes.capacity()), (LIMIT + 1, LIMIT + 1));
        // Many small chunks: doubling stops at limit + 1.
        let bytes = buffer_stream(chunks(&[1000; 100]), 0, LIMIT).await.unwrap();
        assert_eq!(bytes.len(), LIMIT + 1);
        assert!(bytes.capacity() <= LIMIT + 1, "capacity {}", bytes.capacity());
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let bytes = buffer_stream(chunks(&[300, 700]), 1000, 65536).await.unwrap();
        assert_eq!((bytes.len(), bytes.capacity()), (1000, 1000));
        let bytes = buffer_stream(chunks(&[]), 0, 65536).await.unwrap();
        assert!(bytes.is_empty());
    }
}
