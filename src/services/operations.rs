//! What operators and probes ask of the running system: readiness of the database and the
//! queue, the job queues and the dead letters, and the gauges that describe the books rather
//! than this process (refreshed when `/metrics` is scraped). Handlers reach storage and the
//! queue only through here.

use std::time::Duration;

use chrono::Days;

use crate::clock::Clock;
use crate::domain::job::DeadJob;
use crate::domain::time::wechat_date;
use crate::domain::{JobKind, OrderStatus};
use crate::queue::{JobQueue, QueueName, QueueStat};
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;

/// One queue as an operator sees it: its name and apalis' statistics (or why they are missing).
/// Longest a scrape waits for its pool probe (well inside `/metrics`' 2 s deadline).
const ACQUIRE_PROBE_CAP: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct QueueReport {
    pub name: String,
    pub stats: Result<Vec<QueueStat>, String>,
}

#[derive(Debug, Clone)]
pub struct Operations {
    db: Db,
    queue: JobQueue,
    clock: Clock,
    metrics: Metrics,
    /// Days the reconcile gauges look back over (the scheduler's catch-up window).
    reconcile_window_days: u32,
}

impl Operations {
    pub fn new(db: Db, queue: JobQueue, clock: Clock, metrics: Metrics, reconcile_window_days: u32) -> Self {
        Self { db, queue, clock, metrics, reconcile_window_days }
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

    /// Gauges that describe the database, not this process: computed when scraped.
    /// Pool occupancy and the acquire timeouts counted since the last scrape: no I/O, so they
    /// are current even when the pool is exhausted (exactly when they matter).
    fn refresh_pool_gauges(&self) {
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

    /// Runs within the caller's deadline (`/metrics` gives it 2 s): the cheap, I/O-free gauges
    /// first and the pool probe last, so a slow pool delays nothing else.
    pub async fn refresh_gauges(&self) {
        let m = &self.metrics;
        self.refresh_pool_gauges();
        if let Ok(counts) = self.db.order_counts().await {
            for status in OrderStatus::ALL {
                let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
                m.orders_by_status.with_label_values(&[status.as_str()]).set(n);
            }
        }
        let now_ms = self.clock.now_ms();
        let age_secs = |oldest: Option<i64>| oldest.map_or(0, |t| (now_ms - t).max(0) / 1000);
        if let Ok((count, oldest)) = self.db.inbox_backlog().await {
            m.inbox_unprocessed.set(count);
            m.inbox_oldest_unprocessed_age.set(age_secs(oldest));
        }
        if let Ok((_, oldest)) = self.db.pending_orders().await {
            m.orders_oldest_pending_age.set(age_secs(oldest));
        }
        if let Ok(abnormal) = self.db.abnormal_refund_count().await {
            m.refunds_abnormal.set(abnormal);
        }
        let since = wechat_date(self.clock.now())
            .checked_sub_days(Days::new(u64::from(self.reconcile_window_days)))
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        if let Ok((last, unexplained)) = self.db.reconcile_health(&since).await {
            m.reconcile_last_success.set(last.map_or(0, |ms| ms / 1000));
            m.reconcile_unexplained.set(unexplained);
        }
        for queue in QueueName::ALL {
            let Ok(stats) = self.queue.stats(queue).await else { continue };
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
        if let Ok(dead) = self.db.dead_job_counts().await {
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
    }
}
