//! What operators and probes ask of the running system: readiness of the database and the
//! queue, the job queues and the dead letters, and the gauges that describe the books rather
//! than this process. Handlers reach storage and the queue only through here.
//!
//! Probes are public-facing and cheap by construction: the database gauges are computed by a
//! background task ([`Operations::run_gauges`]) every `gauges.refresh_interval_ms`, with a
//! statement timeout the database enforces, and a scrape only renders the cached values;
//! `/readyz` answers from a result at most [`READINESS_TTL`] old, and concurrent probes share
//! one check. So no rate of scrapes or probes turns into a rate of queries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Days;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::GaugeSettings;
use crate::domain::job::DeadJob;
use crate::domain::time::wechat_date;
use crate::domain::{JobKind, OrderStatus};
use crate::queue::{JobQueue, QueueName, QueueStat};
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;

/// Longest the refresher waits for its pool probe.
const ACQUIRE_PROBE_CAP: Duration = Duration::from_millis(500);

/// How long a readiness result is reused: load balancers probe every few seconds, an attacker
/// as often as they like; either way the database and queue see at most one check a second.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// (database, queue): each `Ok` or the reason it is not reachable.
pub type Readiness = (Result<(), String>, Result<(), String>);

/// A result reused for a while: concurrent callers wait for the one check in flight (the lock)
/// instead of starting their own, and callers within `ttl` of it get it without a check.
#[derive(Debug)]
struct SharedCheck<T>(Arc<Mutex<Option<(Instant, T)>>>);

impl<T> Clone for SharedCheck<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Default for SharedCheck<T> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }
}

impl<T: Clone> SharedCheck<T> {
    async fn get<F: std::future::Future<Output = T>>(&self, ttl: Duration, check: impl FnOnce() -> F) -> T {
        let mut cached = self.0.lock().await;
        if let Some((at, result)) = cached.as_ref()
            && at.elapsed() < ttl
        {
            return result.clone();
        }
        let result = check().await;
        *cached = Some((Instant::now(), result.clone()));
        result
    }
}

/// One queue as an operator sees it: its name and apalis' statistics (or why they are missing).
#[derive(Debug)]
pub struct QueueReport {
    pub name: String,
    pub stats: Result<Vec<QueueStat>, String>,
}

#[derive(Debug, Clone)]
pub struct Operations {
    db: Db,
    /// The same database with a server-side statement timeout, for the gauge queries.
    gauge_db: Db,
    queue: JobQueue,
    clock: Clock,
    metrics: Metrics,
    /// Days the reconcile gauges look back over (the scheduler's catch-up window).
    reconcile_window_days: u32,
    gauges: GaugeSettings,
    /// The last readiness result, shared by concurrent probes.
    readiness: SharedCheck<Readiness>,
    /// Set once the process stops accepting work: `/readyz` then answers 503 while open
    /// requests drain, so a load balancer stops sending before the process is gone.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Operations {
    pub fn new(
        db: Db,
        queue: JobQueue,
        clock: Clock,
        metrics: Metrics,
        reconcile_window_days: u32,
        gauges: GaugeSettings,
    ) -> Self {
        let gauge_db = db.with_statement_timeout(Duration::from_millis(gauges.query_timeout_ms));
        let readiness = SharedCheck::default();
        let draining = Arc::default();
        Self { db, gauge_db, queue, clock, metrics, reconcile_window_days, gauges, readiness, draining }
    }

    /// The process is shutting down: readiness is refused from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Computes the database gauges now and then every `gauges.refresh_interval_ms` until
    /// `stop`; spawned once per process at start-up.
    pub async fn run_gauges(self, stop: CancellationToken) {
        let interval = Duration::from_millis(self.gauges.refresh_interval_ms);
        loop {
            tokio::select! {
                () = self.refresh_gauges() => {}
                () = stop.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// [`Self::readiness`], reused for [`READINESS_TTL`]; concurrent callers share one check.
    pub async fn readiness_cached(&self, timeout: Duration) -> Readiness {
        self.readiness.get(READINESS_TTL, || self.readiness(timeout)).await
    }

    /// (database, queue): each `Ok` or the reason it is not reachable, each checked on its own
    /// within `timeout` (a queue that hangs must not make the database look down).
    pub async fn readiness(&self, timeout: Duration) -> (Result<(), String>, Result<(), String>) {
        let (db, queue) = tokio::join!(
            tokio::time::timeout(timeout, self.db.ping()),
            tokio::time::timeout(timeout, self.queue.ping())
        );
        let answer = |result: Result<Result<(), String>, _>| result.unwrap_or_else(|_| Err("timed out".to_owned()));
        (answer(db.map(|r| r.map_err(|e| e.to_string()))), answer(queue.map(|r| r.map_err(|e| e.to_string()))))
    }

    pub async fn dead_jobs(&self) -> Result<Vec<DeadJob>, StorageError> {
        self.db.dead_jobs().await
    }

    pub async fn queues(&self) -> Vec<QueueReport> {
        let mut reports = Vec::new();
        for queue in QueueName::ALL {
            let stats = self.queue.stats(queue).await.map_err(|e| e.to_string());
            reports.push(QueueReport { name: self.queue.queue_name(queue), stats });
        }
        reports
    }

    /// Pool occupancy and the acquire timeouts counted since the last scrape: no I/O, so they
    /// are computed at scrape time and current even when the pool is exhausted (exactly when
    /// they matter).
    pub fn refresh_pool_gauges(&self) {
        let m = &self.metrics;
        let pool = self.db.pool_stats();
        m.db_pool_connections.with_label_values(&["idle"]).set(i64::from(pool.idle));
        m.db_pool_connections.with_label_values(&["in_use"]).set(i64::from(pool.in_use));
        m.db_pool_max_connections.set(i64::from(pool.max));
        let (total, seen) = (crate::storage::acquire_timeouts(), m.db_pool_acquire_timeouts.get());
        if total > seen {
            m.db_pool_acquire_timeouts.inc_by(total - seen);
        }
    }

    /// One acquire of a writer connection, timed; a probe still waiting after
    /// [`ACQUIRE_PROBE_CAP`] is recorded at the cap (the slowest waits must not be the ones
    /// missing from the histogram).
    async fn probe_pool(&self) {
        let waited =
            tokio::time::timeout(ACQUIRE_PROBE_CAP, self.db.probe_acquire()).await.unwrap_or(ACQUIRE_PROBE_CAP);
        self.metrics.db_pool_acquire.observe(waited.as_secs_f64());
    }

    /// One bounded query for a gauge: `None` (counted, logged once) when it failed or outlived
    /// `gauges.query_timeout_ms` (PostgreSQL stops it itself; the timer here also covers the
    /// queue and SQLite), so that gauge keeps its previous value.
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &'static str,
        query: impl std::future::Future<Output = Result<T, E>>,
    ) -> Option<T> {
        let limit = Duration::from_millis(self.gauges.query_timeout_ms);
        let failure = match tokio::time::timeout(limit, query).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {} ms (gauges.query_timeout_ms)", limit.as_millis()),
        };
        self.metrics.gauges_refresh_failures.inc();
        tracing::warn!(gauge = what, error = %failure, "gauge not refreshed; it keeps its previous value");
        None
    }

    /// Computes every database gauge once (the background refresher's step; tests call it to
    /// read gauges without waiting for the interval). Each query is bounded on its own, so one
    /// slow query delays only itself; the pool probe goes last.
    pub async fn refresh_gauges(&self) {
        let m = &self.metrics;
        let db = &self.gauge_db;
        let failures_before = m.gauges_refresh_failures.get();
        self.refresh_pool_gauges();
        if let Some(counts) = self.bounded("orders", db.order_counts()).await {
            for status in OrderStatus::ALL {
                let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
                m.orders_by_status.with_label_values(&[status.as_str()]).set(n);
            }
        }
        let now_ms = self.clock.now_ms();
        let age_secs = |oldest: Option<i64>| oldest.map_or(0, |t| now_ms.saturating_sub(t).max(0) / 1000);
        if let Some((count, oldest)) = self.bounded("inbox", db.inbox_backlog()).await {
            m.inbox_unprocessed.set(count);
            m.inbox_oldest_unprocessed_age.set(age_secs(oldest));
        }
        if let Some((_, oldest)) = self.bounded("pending_orders", db.pending_orders()).await {
            m.orders_oldest_pending_age.set(age_secs(oldest));
        }
        if let Some(abnormal) = self.bounded("refunds_abnormal", db.abnormal_refund_count()).await {
            m.refunds_abnormal.set(abnormal);
        }
        let since = wechat_date(self.clock.now())
            .checked_sub_days(Days::new(u64::from(self.reconcile_window_days)))
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        if let Some((last, unexplained)) = self.bounded("reconcile", db.reconcile_health(&since)).await {
            m.reconcile_last_success.set(last.map_or(0, |ms| ms / 1000));
            m.reconcile_unexplained.set(unexplained);
        }
        for queue in QueueName::ALL {
            let Some(stats) = self.bounded("queue", self.queue.stats(queue)).await else { continue };
            for stat in stats {
                let state_label = match stat.title.as_str() {
                    "PENDING_JOBS" => "pending",
                    "SCHEDULED_JOBS" => "scheduled",
                    "RUNNING_JOBS" => "running",
                    "FAILED_JOBS" => "failed",
                    "DONE_JOBS" => "done",
                    _ => continue,
                };
                if let Ok(n) = stat.value.trim().parse::<f64>() {
                    #[expect(clippy::cast_possible_truncation, reason = "job counts are whole numbers")]
                    m.queue_jobs.with_label_values(&[queue.as_str(), state_label]).set(n as i64);
                }
            }
        }
        if let Some(dead) = self.bounded("jobs_dead", db.dead_job_counts()).await {
            m.jobs_dead.reset();
            // Known kinds stay exported at 0, so "dead jobs > 0" alerts see a series at all times.
            for kind in JobKind::ALL {
                m.jobs_dead.with_label_values(&[kind.as_str()]).set(0);
            }
            for (kind, n) in dead {
                m.jobs_dead.with_label_values(&[kind.as_str()]).set(n);
            }
        }
        self.probe_pool().await;
        // The time of the last refresh in which every query answered: a failing database shows
        // as this timestamp falling behind (alert DatabaseGaugesStale), not as fresh old values.
        if m.gauges_refresh_failures.get() == failures_before {
            m.gauges_refreshed.set(self.clock.now().timestamp());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_probes_share_one_check_and_reuse_it_within_the_ttl() {
        const TTL: Duration = Duration::from_millis(200);
        let shared = SharedCheck::<usize>::default();
        let checks = Arc::new(AtomicUsize::new(0));
        let probe = || {
            let (shared, checks) = (shared.clone(), Arc::clone(&checks));
            async move {
                shared
                    .get(TTL, || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        checks.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
            }
        };
        let answers = futures::future::join_all((0..100).map(|_| probe())).await;
        assert!(answers.iter().all(|n| *n == 1), "every probe got the first check's answer");
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        assert_eq!(probe().await, 1, "within the TTL: the same answer, no check");
        tokio::time::sleep(TTL).await;
        assert_eq!(probe().await, 2, "an answer older than the TTL is checked again");
    }
}
