//! What every HTTP request leaves behind: a span carrying its request id and client address
//! (so every line logged while answering it can be found and attributed), one log line when
//! the answer is an error (4xx or 5xx) with the latency as a number, the request id echoed to
//! the caller, and the `http_*` metrics with bounded labels. It also hands handlers what it
//! worked out: the client's address ([`super::extract::ClientIp`]) and when the request
//! arrived ([`RequestStart`], for deadlines measured from arrival).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::telemetry::metrics::Metrics;

/// Header carrying the request id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id accepted from a caller; longer (or odd) ones are replaced, so a client
/// cannot put arbitrary text into our logs.
const MAX_REQUEST_ID: usize = 128;

/// "request refused" (4xx) and "unavailable" (503) lines written per second at most, together;
/// the rest are written at debug. Anyone on the internet can make 4xx answers as fast as they
/// can send requests, and a flood that is shed makes a 503 per request: without a bound either
/// would fill the log disk. Every request is still counted in `http_requests_total`, and other
/// 5xx (our failures) are always logged.
const REFUSAL_LINES_PER_SEC: u32 = 20;

/// When the request reached the middleware (as early as the router sees it): deadlines of the
/// work done for it count from here, not from when a handler got round to it.
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub Instant);

/// What the middleware needs besides the request.
#[derive(Debug)]
pub struct HttpObserver {
    metrics: Metrics,
    /// Header set by the trusted reverse proxy with the client's address (`server.client_ip_header`).
    client_ip_header: Option<HeaderName>,
    refusal_lines: governor::DefaultDirectRateLimiter,
}

impl HttpObserver {
    pub fn new(metrics: Metrics, client_ip_header: Option<HeaderName>) -> Arc<Self> {
        let rate = std::num::NonZeroU32::new(REFUSAL_LINES_PER_SEC).unwrap_or(std::num::NonZeroU32::MIN);
        let refusal_lines = governor::RateLimiter::direct(governor::Quota::per_second(rate));
        Arc::new(Self { metrics, client_ip_header, refusal_lines })
    }
}

/// Records one request: span, metrics, error line, echoed request id.
pub async fn observe(State(observer): State<Arc<HttpObserver>>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = method_label(req.method());
    let request_id = request_id(req.headers());
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client_ip = client_ip(req.headers(), observer.client_ip_header.as_ref(), peer);
    // Handlers (the login quota) key on the same address the logs show.
    req.extensions_mut().insert(super::extract::ClientIp(client_ip));
    let started = Instant::now();
    req.extensions_mut().insert(RequestStart(started));
    let span = tracing::info_span!(
        "http",
        http.method = method,
        http.route = %route,
        http.request_id = %request_id,
        client.ip = client_ip.as_ref().map(tracing::field::display),
        error.cause = tracing::field::Empty,
    );
    let mut response = next.run(req).instrument(span.clone()).await;
    let latency = started.elapsed();
    let status = response.status().as_u16();

    let class = status_class(status);
    observer.metrics.http_requests.with_label_values(&[&route, method, class]).inc();
    observer.metrics.http_duration.with_label_values(&[&route]).observe(latency.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let latency_ms = latency.as_secs_f64() * 1000.0;
    span.in_scope(|| match status {
        // 503 is our "retry shortly" (database or WeChat briefly away, or load shed), not a bug.
        503 if observer.refusal_lines.check().is_ok() => {
            tracing::warn!(http.status = status, latency_ms, "request answered: unavailable");
        }
        503 => tracing::debug!(http.status = status, latency_ms, "request answered: unavailable (over the log rate)"),
        500.. => tracing::error!(http.status = status, latency_ms, "request failed"),
        400..500 if observer.refusal_lines.check().is_ok() => {
            tracing::info!(http.status = status, latency_ms, "request refused");
        }
        400..500 => tracing::debug!(http.status = status, latency_ms, "request refused (over the log rate)"),
        _ => tracing::debug!(http.status = status, latency_ms, "request answered"),
    });
    response
}

/// Attaches why a request failed to its span, so the one line logged for the answer says it
/// (instead of a second line logged where the error was converted).
pub fn note_cause(cause: &dyn std::fmt::Display) {
    tracing::Span::current().record("error.cause", tracing::field::display(cause));
}

/// The method as a metric label: the standard ones as themselves, anything else as `other`
/// (a made-up method must not create a new series).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..200 => "1xx",
        200..300 => "2xx",
        300..400 => "3xx",
        400..500 => "4xx",
        _ => "5xx",
    }
}

/// The caller's request id when it is short and plain (letters, digits, `-_.:`), else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// The client's address: from the trusted proxy's header when one is configured and present,
/// else the TCP peer. Only what our proxy appended counts: the *last* line of the header (a
/// proxy such as HAProxy adds its own line after any the client sent) and, for
/// `X-Forwarded-For`, that line's last entry (earlier ones are whatever the client sent).
fn client_ip(headers: &HeaderMap, trusted: Option<&HeaderName>, peer: Option<IpAddr>) -> Option<IpAddr> {
    let from_proxy = trusted
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok());
    from_proxy.or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_plain_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(request_id(&headers(&[("x-request-id", "req-42.a:b_c")])), "req-42.a:b_c");
        for bad in ["", "has space", "<script>", &"x".repeat(129)] {
            let id = request_id(&headers(&[("x-request-id", bad)]));
            assert_eq!(id.len(), 32, "{bad:?} -> {id}");
            assert_ne!(id, bad);
        }
        let generated = request_id(&HeaderMap::new());
        assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()) && generated.len() == 32, "{generated}");
    }

    #[test]
    fn client_ip_comes_from_the_trusted_header_last_entry_else_the_peer() {
        let peer = Some("10.0.0.9".parse().unwrap());
        let xff = HeaderName::from_static("x-forwarded-for");
        let spoofed = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]);
        assert_eq!(client_ip(&spoofed, Some(&xff), peer), Some("203.0.113.7".parse().unwrap()));
        // Not trusted: the header is ignored.
        assert_eq!(client_ip(&spoofed, None, peer), peer);
        // Trusted but absent or garbage: the peer.
        assert_eq!(client_ip(&HeaderMap::new(), Some(&xff), peer), peer);
        assert_eq!(client_ip(&headers(&[("x-forwarded-for", "nonsense")]), Some(&xff), peer), peer);
    }

    #[test]
    fn client_ip_comes_from_the_last_line_of_the_trusted_header() {
        let xff = HeaderName::from_static("x-forwarded-for");
        // The client sent its own line; the proxy appended a second one.
        let two_lines = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "6.6.6.7, 203.0.113.7")]);
        assert_eq!(client_ip(&two_lines, Some(&xff), None), Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::from_bytes(b"M123").unwrap()), "other");
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(599), "5xx");
    }
}
