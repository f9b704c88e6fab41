//! One rate limit for every call to the WeChat Pay API. WeChat limits calls per merchant, not
//! per process, so on the cluster profile the budget is also shared by all replicas through a
//! per-second counter in Redis. Inside a process a GCRA limiter (`governor`) smooths calls.
//!
//! Redis being down must not stop payments: the shared check is skipped (logged) and the
//! process keeps its own limit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};
use redis::aio::ConnectionManager;

use crate::telemetry::metrics::Metrics;

/// Redis round trips slower than this skip the shared check rather than delay the call.
const SHARED_TIMEOUT: Duration = Duration::from_millis(250);
/// Give up on the shared budget after waiting this long (the local limit still applies).
const SHARED_MAX_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct RateLimiter {
    per_sec: u32,
    local: Arc<DefaultDirectRateLimiter>,
    shared: Option<Shared>,
    metrics: Metrics,
}

#[derive(Clone)]
struct Shared {
    conn: ConnectionManager,
    key_prefix: String,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimiter({}/s, shared: {})", self.per_sec, self.shared.is_some())
    }
}

impl RateLimiter {
    /// `per_sec` calls per second; `None` when 0 (unlimited).
    pub fn new(per_sec: u32, metrics: Metrics) -> Option<Self> {
        let rate = NonZeroU32::new(per_sec)?;
        let local = Arc::new(DefaultDirectRateLimiter::direct(Quota::per_second(rate)));
        Some(Self { per_sec, local, shared: None, metrics })
    }

    /// Also counts calls in Redis under `key_prefix`, so every replica draws from one budget.
    #[must_use]
    pub fn shared_through(mut self, conn: ConnectionManager, key_prefix: &str) -> Self {
        self.shared = Some(Shared { conn, key_prefix: format!("{key_prefix}:wechat-ratelimit") });
        self
    }

    /// Waits until one more call is allowed.
    pub async fn acquire(&self) {
        let started = Instant::now();
        if self.local.check().is_err() {
            self.local.until_ready().await;
            self.record_wait("local", started);
        }
        if let Some(shared) = &self.shared {
            let before = Instant::now();
            if self.acquire_shared(shared).await {
                self.record_wait("shared", before);
            }
        }
    }

    fn record_wait(&self, scope: &str, since: Instant) {
        self.metrics.rate_limit_waits.with_label_values(&[scope]).inc();
        self.metrics.rate_limit_wait_seconds.inc_by(since.elapsed().as_secs_f64());
    }

    /// Takes one slot of the current second's shared budget, waiting for the next second while
    /// it is spent. Returns whether it had to wait.
    async fn acquire_shared(&self, shared: &Shared) -> bool {
        let deadline = Instant::now() + SHARED_MAX_WAIT;
        let mut waited = false;
        loop {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let second = now.as_secs();
            let key = format!("{}:{second}", shared.key_prefix);
            let mut conn = shared.conn.clone();
            let counted = tokio::time::timeout(
                SHARED_TIMEOUT,
                redis::pipe().atomic().incr(&key, 1).expire(&key, 5).ignore().query_async::<(u64,)>(&mut conn),
            )
            .await;
            let count = match counted {
                Ok(Ok((count,))) => count,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "shared WeChat rate limit unavailable; using the local limit only");
                    return waited;
                }
                Err(_) => {
                    tracing::warn!("shared WeChat rate limit timed out; using the local limit only");
                    return waited;
                }
            };
            if count <= u64::from(self.per_sec) || Instant::now() >= deadline {
                return waited;
            }
            waited = true;
            // Sleep to the next second, plus a little jitter so replicas do not stampede.
            let to_next = Duration::from_secs(1).saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
            let jitter = Duration::from_millis(rand::random::<u64>() % 20);
            tokio::time::sleep(to_next + jitter).await;
        }
    }
}
