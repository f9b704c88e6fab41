//! Our own HTTP accept loop (in place of `axum::serve`), for the limits an internet-facing
//! listener needs and `axum::serve` cannot set:
//!
//! - **Header-read timeout.** hyper's `header_read_timeout` only works with a timer, which
//!   `axum::serve` does not give it. hyper starts that clock whenever it begins waiting for a
//!   request head: when the connection is accepted and again after each answer, so the same
//!   setting cuts a slowloris client trickling header bytes *and* bounds how long an idle
//!   keep-alive connection is kept. Body reading is bounded by `server.body_read_timeout_ms`
//!   ([`super::body`]) and handling by the request timeout (the router's layers), not by this.
//! - **Head size.** hyper accepts ~400 KiB of request head by default; we take
//!   `server.max_header_bytes` (431 beyond).
//! - **Connection cap** with eviction of connections that have no request being handled
//!   ([`super::connections`]): header-less ones first, then those still reading a body (oldest
//!   first), then the longest idle (idle at least 1 s).
//! - **Shutdown**: the listening socket is closed as soon as the stop signal arrives, so the
//!   kernel refuses new connections (the proxy retries them elsewhere) while open ones drain.
//!
//! HTTP/1.1 only: the TLS reverse proxy in front speaks HTTP/1.1 to its upstreams (nginx does),
//! and WeChat's notifications arrive over it; HTTP/2 would add stream multiplexing (and its
//! rapid-reset class of abuse) for no client of ours. `ConnectInfo<SocketAddr>` is set on every
//! request, as `into_make_service_with_connect_info` did (the observe layer reads it).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::connections::{Admission, InFlight, Slot, Slots};
use crate::telemetry::metrics::Metrics;

/// How one listener treats its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// `public` or `ops`: the `listener` label of the connection metrics.
    pub listener: &'static str,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Longest a shutdown waits for open connections to finish their request.
    pub drain_timeout: Duration,
}

/// How long to back off after `accept` fails for lack of file descriptors (or memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop` fires, then lets open connections finish their
/// current request (at most `drain_timeout`). The listener is closed before that drain.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Metrics,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let slots = Slots::new(limits.max_connections);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let counted = |outcome: &str| metrics.http_connections.with_label_values(&[limits.listener, outcome]).inc();
    let open = metrics.http_connections_open.with_label_values(&[limits.listener]);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE / ENFILE / ENOMEM: nothing to do but wait for connections to close;
                // errors of one connection (reset before accept) need no pause.
                counted("accept_error");
                if !is_connection_error(&err) {
                    tracing::warn!(error = %err, listener = limits.listener, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let Some((slot, admission)) = slots.acquire() else {
            // Every open connection is answering a request: closing this one at once is kinder
            // to the others than queueing it.
            counted("refused");
            drop(stream);
            continue;
        };
        counted("accepted");
        if admission == Admission::Evicted {
            counted("evicted");
        }
        let _ = stream.set_nodelay(true);
        let (builder, router, stop, metrics, open) =
            (Arc::clone(&builder), router.clone(), stop.clone(), metrics.clone(), open.clone());
        let listener_name = limits.listener;
        tokio::spawn(async move {
            // Decremented when the task ends however it ends (a panic or an abort included).
            let _open = OpenConnection::new(open);
            let outcome = serve_connection(&builder, stream, peer, router, &slot, &stop).await;
            if let Some(outcome) = outcome {
                metrics.http_connections.with_label_values(&[listener_name, outcome]).inc();
            }
            drop(slot);
        });
    }
    // Close the socket now, not after the drain: connections the kernel would otherwise keep
    // completing in the backlog would hang until the drain ends, where a refused one is retried
    // by the proxy on another instance at once.
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, slots.drained()).await.is_err() {
        tracing::warn!(listener = limits.listener, open = slots.open(), "shutdown: connections still open, dropped");
    }
    Ok(())
}

/// Serves one connection; returns how it ended when that is worth counting.
async fn serve_connection(
    builder: &http1::Builder,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    slot: &Slot,
    stop: &CancellationToken,
) -> Option<&'static str> {
    let service = hyper::service::service_fn(|mut req: hyper::Request<Incoming>| {
        // Reading (evictable) until `body::read_first` has the body; busy at once without one.
        let (in_flight, body_read) = slot.request_started(!req.body().is_end_stream());
        req.extensions_mut().insert(body_read);
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = router.oneshot(req).await?;
            // Busy until the answer is written: hyper drops the body after its last frame.
            Ok::<_, std::convert::Infallible>(response.map(|inner| Body::new(Answer { inner, _in_flight: in_flight })))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = slot.evicted() => return None,
        () = stop.cancelled() => {
            // Finish the request in progress (bounded by the request timeout), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match result {
        Ok(()) => None,
        Err(err) if err.is_timeout() => Some("header_timeout"),
        Err(err) if err.is_parse_too_large() => Some("header_too_large"),
        Err(err) if err.is_parse() => Some("bad_request"),
        Err(_) => None,
    }
}

/// The open-connections gauge of one connection: up while this lives.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An answer's body, holding its connection busy until it is written (or abandoned).
struct Answer {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Errors that concern only the connection being accepted.
fn is_connection_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(err.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}

/// File descriptors kept aside from the connection cap: database and Redis pools, WeChat
/// calls, SQLite files, the ops listener's own connections.
const FD_RESERVE: u64 = 256;

/// `configured`, lowered (with a warning) so the public listener cannot use up the process's
/// open-file limit: at that limit `accept` fails for everyone, notify included, and so do the
/// database's new connections. Linux reports the limit in `/proc/self/limits`; elsewhere the
/// configured value is kept.
pub fn fit_to_fd_limit(configured: usize) -> usize {
    let Some(limit) = open_file_limit() else { return configured };
    let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX).max(1);
    if configured > room {
        tracing::warn!(
            configured,
            open_file_limit = limit,
            using = room,
            "server.max_connections lowered to fit the open-file limit (raise ulimit -n to allow more)"
        );
        return room;
    }
    configured
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` ("Max open files  <soft>  <hard>  files").
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}
