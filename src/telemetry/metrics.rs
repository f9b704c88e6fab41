//! Every metric the service exports, as one typed struct of handles.
//!
//! Names follow Prometheus conventions: a `wxpay_` namespace, base units in the name
//! (`_seconds`), `_total` on counters. Label values are bounded sets (route templates, job
//! kinds, outcome classes): never an order number, openid or raw URL.

use crate::domain::{AnomalyKind, BillRunStatus, DiscrepancyClass, EventSource, JobKind, OrderStatus, Resolution};
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

const NAMESPACE: &str = "wxpay";

/// Latency buckets from 1 ms to 10 s: notify must answer in < 5 s, WeChat calls time out at 5 s.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Handles to every metric. Cloned into every service and, through the HTTP state, on every
/// request: one `Arc` around all of them, so a clone is one atomic increment rather than one per
/// metric (cloning forty handles per request cost ~15 % of the notify path's CPU).
#[derive(Clone)]
pub struct Metrics(Arc<MetricHandles>);

impl std::ops::Deref for Metrics {
    type Target = MetricHandles;
    fn deref(&self) -> &MetricHandles {
        &self.0
    }
}

/// The metric handles themselves (reached through [`Metrics`]).
pub struct MetricHandles {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub notify_received: IntCounter,
    pub notify_accepted: IntCounterVec,
    pub notify_rejected: IntCounterVec,
    pub notify_commit_batch: Histogram,
    pub notify_ingest_duration: Histogram,
    pub notify_rejection_samples: IntCounterVec,
    pub notify_rejections_pruned: IntCounter,
    pub apply_batch: Histogram,
    pub apply_batch_failures: IntCounterVec,
    pub inbox_deferred: IntCounter,
    pub inbox_applied: IntCounterVec,
    pub inbox_unprocessed: IntGauge,
    pub inbox_oldest_unprocessed_age: IntGauge,
    pub inbox_swept: IntCounter,
    pub jobs_started: IntCounterVec,
    pub jobs_finished: IntCounterVec,
    pub job_duration: HistogramVec,
    pub jobs_dead: IntGaugeVec,
    pub queue_jobs: IntGaugeVec,
    pub wechat_calls: IntCounterVec,
    pub wechat_call_duration: HistogramVec,
    pub orders_created: IntCounter,
    pub order_transitions: IntCounterVec,
    pub orders_by_status: IntGaugeVec,
    pub orders_oldest_pending_age: IntGauge,
    pub poll_claimed: IntCounter,
    pub poll_checks: IntCounterVec,
    pub rate_limit_waits: IntCounterVec,
    pub rate_limit_wait_seconds: prometheus::Counter,
    pub wechat_budget_admissions: IntCounterVec,
    pub wechat_budget_wait_seconds: prometheus::CounterVec,
    pub quota_refusals: IntCounterVec,
    pub sessions_purged: IntCounter,
    pub refunds: IntCounterVec,
    pub refunds_abnormal: IntGauge,
    pub reconcile_runs: IntCounterVec,
    pub reconcile_rows: IntCounter,
    pub reconcile_discrepancies: IntCounterVec,
    pub reconcile_healed: IntCounter,
    pub reconcile_last_success: IntGauge,
    pub reconcile_unexplained: IntGauge,
    pub anomalies: IntCounterVec,
    pub logins: IntCounterVec,
    pub db_pool_connections: IntGaugeVec,
    pub db_pool_max_connections: IntGauge,
    pub db_pool_acquire: Histogram,
    pub db_pool_acquire_timeouts: IntCounter,
    pub gauges_refreshed: IntGauge,
    pub gauges_refresh_failures: IntCounter,
    pub certificates_in_use: IntGauge,
    pub certificate_expiry: IntGauge,
    pub certificate_last_refresh: IntGauge,
    pub build_info: IntGaugeVec,
    pub http_connections: IntCounterVec,
    pub http_connections_open: IntGaugeVec,
    pub http_shed: IntCounterVec,
    /// Every metric family this registry exports, for tests that check none is missing.
    family_names: Vec<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds and registers every metric on a fresh registry (one per process or test app).
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = MetricHandles {
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests answered, by matched route, method and status class.",
                &["route", "method", "status"],
            ),
            http_duration: histogram_vec(
                "http_request_duration_seconds",
                "Time to answer an HTTP request, by matched route.",
                &["route"],
            ),
            notify_received: counter(
                "notify_received_total",
                "Notification POSTs received from WeChat (before any check).",
            ),
            notify_accepted: counter_vec(
                "notify_accepted_total",
                "Notifications stored durably and acknowledged; kind is new or duplicate (same notification id again).",
                &["kind"],
            ),
            notify_rejected: counter_vec(
                "notify_rejected_total",
                "Notifications answered with a failure, by reason.",
                &["reason"],
            ),
            notify_commit_batch: histogram(
                "notify_commit_batch_size",
                "Notifications made durable by one inbox commit.",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            notify_ingest_duration: histogram(
                "notify_ingest_duration_seconds",
                "Time from receiving a notification to answering it.",
                LATENCY_BUCKETS,
            ),
            notify_rejection_samples: counter_vec(
                "notify_rejection_samples_total",
                "Rejected notifications offered to the notify_rejections sample, by outcome (stored; rate_limited, queue_full: not kept; write_failed).",
                &["outcome"],
            ),
            notify_rejections_pruned: counter(
                "notify_rejections_pruned_total",
                "Oldest notify_rejections rows deleted to keep the table under notify.rejection_max_rows.",
            ),
            apply_batch: histogram(
                "apply_batch_size",
                "Inbox entries applied by one batch transaction.",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            apply_batch_failures: counter_vec(
                "apply_batch_failures_total",
                "Inbox batches that failed, by reason (unavailable: database; failed: an error; panicked).",
                &["reason"],
            ),
            inbox_deferred: counter(
                "inbox_deferred_total",
                "Inbox entries the batch could not apply, handed to their own retried job.",
            ),
            inbox_applied: counter_vec(
                "inbox_applied_total",
                "Inbox entries processed by the worker, by outcome.",
                &["outcome"],
            ),
            inbox_unprocessed: gauge("inbox_unprocessed", "Inbox entries stored but not yet processed."),
            inbox_oldest_unprocessed_age: gauge(
                "inbox_oldest_unprocessed_age_seconds",
                "Age of the oldest inbox entry not yet processed (0 when none).",
            ),
            inbox_swept: counter(
                "inbox_swept_total",
                "Deferred inbox entries re-enqueued by the sweeper because their job was lost.",
            ),
            jobs_started: counter_vec("jobs_started_total", "Job executions started, by kind.", &["kind"]),
            jobs_finished: counter_vec(
                "jobs_finished_total",
                "Job executions finished, by kind and outcome (succeeded, retried, dead).",
                &["kind", "outcome"],
            ),
            job_duration: histogram_vec("job_duration_seconds", "Time one job execution took, by kind.", &["kind"]),
            jobs_dead: gauge_vec(
                "jobs_dead",
                "Jobs in the dead-letter state waiting for an operator, by kind.",
                &["kind"],
            ),
            queue_jobs: gauge_vec(
                "queue_jobs",
                "Jobs in the queue backend, by queue and state (pending, scheduled, running, failed, done), refreshed in the background.",
                &["queue", "state"],
            ),
            wechat_calls: counter_vec(
                "wechat_calls_total",
                "Calls to WeChat, by endpoint and outcome class.",
                &["endpoint", "outcome"],
            ),
            wechat_call_duration: histogram_vec(
                "wechat_call_duration_seconds",
                "Latency of calls to WeChat, by endpoint.",
                &["endpoint"],
            ),
            orders_created: counter("orders_created_total", "Orders created through the API."),
            order_transitions: counter_vec(
                "order_transitions_total",
                "Order status changes applied, by new status and source of evidence.",
                &["to", "source"],
            ),
            orders_by_status: gauge_vec("orders", "Orders by current status.", &["status"]),
            orders_oldest_pending_age: gauge(
                "orders_oldest_pending_age_seconds",
                "Age of the oldest order still NOTPAY (0 when none); past time_expire the poller should have closed it.",
            ),
            poll_claimed: counter("poll_claimed_total", "Unpaid orders the poll sweep queued for a check at WeChat."),
            poll_checks: counter_vec(
                "poll_checks_total",
                "Checks of unpaid orders at WeChat, by outcome (success, closed, payerror, pending, already_final, error).",
                &["outcome"],
            ),
            rate_limit_waits: counter_vec(
                "wechat_rate_limit_waits_total",
                "Calls to WeChat that waited for the rate limit, by scope (local: this process; shared: all replicas).",
                &["scope"],
            ),
            rate_limit_wait_seconds: float_counter(
                "wechat_rate_limit_wait_seconds_total",
                "Time calls to WeChat spent waiting for the rate limit.",
            ),
            wechat_budget_admissions: counter_vec(
                "wechat_budget_admissions_total",
                "Calls admitted to (or refused by) the WeChat call budget, by priority (user, settling) and outcome (immediate, waited, refused).",
                &["priority", "outcome"],
            ),
            wechat_budget_wait_seconds: prometheus::CounterVec::new(
                name(
                    "wechat_budget_wait_seconds_total",
                    "Time calls spent waiting for the WeChat call budget (refused ones included), by priority.",
                ),
                &["priority"],
            )
            .unwrap_or_else(|_| unreachable_metric("wechat_budget_wait_seconds_total")),
            quota_refusals: counter_vec(
                "quota_refusals_total",
                "Requests refused 429 by a quota, by quota (login_ip, login_code, login_concurrency, login_global, orders_create, orders_refresh, open_orders).",
                &["quota"],
            ),
            sessions_purged: counter("sessions_purged_total", "Expired sessions deleted."),
            refunds: counter_vec(
                "refunds_total",
                "Refunds by event: requested, succeeded, closed, abnormal, refused (by WeChat or for the amount left).",
                &["event"],
            ),
            refunds_abnormal: gauge(
                "refunds_abnormal",
                "Refunds WeChat reports ABNORMAL now (refreshed in the background): money not paid back until an operator resolves them in the merchant console; polled slowly until SUCCESS.",
            ),
            reconcile_runs: counter_vec(
                "reconcile_runs_total",
                "Reconciliation runs of a day's bill, by outcome (clean, discrepancies, no_bill, assumed_empty, not_ready, failed).",
                &["outcome"],
            ),
            reconcile_rows: counter("reconcile_bill_rows_total", "Bill rows compared with our orders."),
            reconcile_discrepancies: counter_vec(
                "reconcile_discrepancies_total",
                "Differences between WeChat's bill and our books, by class and resolution (healed, unexplained).",
                &["class", "resolution"],
            ),
            reconcile_healed: counter(
                "reconcile_healed_total",
                "Payments missed here and applied from the bill (source bill).",
            ),
            reconcile_last_success: gauge(
                "reconcile_last_success_timestamp_seconds",
                "When a reconciliation last finished (clean, with discrepancies, or no bill); 0 if never.",
            ),
            reconcile_unexplained: gauge(
                "reconcile_unexplained_discrepancies",
                "Unexplained discrepancies in the runs of the last reconcile.catch_up_days days.",
            ),
            anomalies: counter_vec(
                "anomalies_total",
                "Evidence that was not applied because it contradicts our order (amount, appid, mchid, payer, unknown order, paid after close).",
                &["kind"],
            ),
            logins: counter_vec("logins_total", "Mini-program logins, by outcome.", &["outcome"]),
            db_pool_connections: gauge_vec(
                "db_pool_connections",
                "Connections of this process's database pool(s), by state (idle, in_use), read when scraped.",
                &["state"],
            ),
            db_pool_max_connections: gauge(
                "db_pool_max_connections",
                "Most connections this process's database pool(s) may open.",
            ),
            db_pool_acquire: histogram(
                "db_pool_acquire_seconds",
                "Time to get a connection from the writer pool, probed once per scrape: how long any statement waits for a connection.",
                LATENCY_BUCKETS,
            ),
            db_pool_acquire_timeouts: counter(
                "db_pool_acquire_timeouts_total",
                "Statements that gave up waiting for a database connection (database.acquire_timeout_ms).",
            ),
            gauges_refreshed: gauge(
                "gauges_refreshed_timestamp_seconds",
                "When this process last computed the database gauges (orders, inbox, queue, refunds, reconcile, dead jobs) with every query answering; scrapes read these cached values. 0 before the first full refresh.",
            ),
            gauges_refresh_failures: counter(
                "gauges_refresh_failures_total",
                "Database gauge queries that failed or hit gauges.query_timeout_ms (their gauges keep the previous value).",
            ),
            certificates_in_use: gauge(
                "platform_certificates_in_use",
                "1 when WeChat's signatures are checked with platform certificates (which rotate), 0 on public keys only.",
            ),
            certificate_expiry: gauge(
                "platform_certificate_expiry_timestamp_seconds",
                "When the newest valid platform certificate expires; 0 if none is valid (only meaningful when in use).",
            ),
            certificate_last_refresh: gauge(
                "platform_certificates_last_refresh_timestamp_seconds",
                "When a replica last downloaded WeChat's certificate list (as saved in the database); 0 if never.",
            ),
            build_info: gauge_vec("build_info", "Always 1; labels carry the running version.", &["version"]),
            http_connections: counter_vec(
                "http_connections_total",
                "Connection events by listener (public, ops) and outcome: accepted; refused (at server.max_connections, \
                 every connection busy); evicted (an older connection without a request cut to make room); \
                 header_timeout (no complete request head within server.header_read_timeout_ms, idle keep-alive \
                 included); header_too_large; bad_request (unparsable head); accept_error.",
                &["listener", "outcome"],
            ),
            http_connections_open: gauge_vec(
                "http_connections_open",
                "Connections open now, by listener.",
                &["listener"],
            ),
            http_shed: counter_vec(
                "http_requests_shed_total",
                "Requests answered 503 at once because their share (api, notify) was at its in-flight cap.",
                &["share"],
            ),
            family_names: Vec::new(),
            registry,
        };
        let mut m = m;
        m.family_names = m.register_all();
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.touch_known_series();
        Metrics(Arc::new(m))
    }
}

impl MetricHandles {
    /// Series whose label values are known up front exist (at 0) from the first scrape.
    fn touch_known_series(&self) {
        let outcomes: &[&[&str]] =
            &[&["success"], &["closed"], &["payerror"], &["pending"], &["already_final"], &["error"]];
        self.touch(&self.poll_checks, outcomes);
        self.touch(&self.rate_limit_waits, &[&["local"], &["shared"]]);
        self.touch(
            &self.notify_rejection_samples,
            &[&["stored"], &["rate_limited"], &["queue_full"], &["write_failed"]],
        );
        self.touch(&self.refunds, &[&["requested"], &["succeeded"], &["closed"], &["abnormal"], &["refused"]]);
        for status in BillRunStatus::ALL {
            let _ = self.reconcile_runs.with_label_values(&[status.as_str()]);
        }
        for kind in AnomalyKind::ALL {
            let _ = self.anomalies.with_label_values(&[kind.as_str()]);
        }
        for class in DiscrepancyClass::ALL {
            for resolution in Resolution::ALL {
                let _ = self.reconcile_discrepancies.with_label_values(&[class.as_str(), resolution.as_str()]);
            }
        }
        for to in OrderStatus::ALL {
            for source in EventSource::ALL {
                let _ = self.order_transitions.with_label_values(&[to.as_str(), source.as_str()]);
            }
        }
        for listener in ["public", "ops"] {
            let _ = self.http_connections_open.with_label_values(&[listener]);
            for outcome in ["accepted", "refused", "evicted", "header_timeout", "header_too_large", "bad_request"] {
                let _ = self.http_connections.with_label_values(&[listener, outcome]);
            }
        }
        for share in ["api", "notify"] {
            let _ = self.http_shed.with_label_values(&[share]);
        }
        for state in ["idle", "in_use"] {
            let _ = self.db_pool_connections.with_label_values(&[state]);
        }
        for kind in JobKind::ALL.map(JobKind::as_str) {
            let _ = self.job_duration.with_label_values(&[kind]);
            let _ = self.jobs_dead.with_label_values(&[kind]);
            let _ = self.jobs_started.with_label_values(&[kind]);
            for outcome in ["succeeded", "retried", "dead"] {
                let _ = self.jobs_finished.with_label_values(&[kind, outcome]);
            }
        }
    }

    /// Registers every handle (and the process collector); returns the family names.
    fn register_all(&self) -> Vec<String> {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_duration.clone()),
            Box::new(self.notify_received.clone()),
            Box::new(self.notify_accepted.clone()),
            Box::new(self.notify_rejected.clone()),
            Box::new(self.notify_commit_batch.clone()),
            Box::new(self.notify_ingest_duration.clone()),
            Box::new(self.notify_rejection_samples.clone()),
            Box::new(self.notify_rejections_pruned.clone()),
            Box::new(self.apply_batch.clone()),
            Box::new(self.apply_batch_failures.clone()),
            Box::new(self.inbox_deferred.clone()),
            Box::new(self.inbox_applied.clone()),
            Box::new(self.inbox_unprocessed.clone()),
            Box::new(self.inbox_oldest_unprocessed_age.clone()),
            Box::new(self.inbox_swept.clone()),
            Box::new(self.jobs_started.clone()),
            Box::new(self.jobs_finished.clone()),
            Box::new(self.job_duration.clone()),
            Box::new(self.jobs_dead.clone()),
            Box::new(self.queue_jobs.clone()),
            Box::new(self.wechat_calls.clone()),
            Box::new(self.wechat_call_duration.clone()),
            Box::new(self.orders_created.clone()),
            Box::new(self.order_transitions.clone()),
            Box::new(self.orders_by_status.clone()),
            Box::new(self.orders_oldest_pending_age.clone()),
            Box::new(self.poll_claimed.clone()),
            Box::new(self.poll_checks.clone()),
            Box::new(self.rate_limit_waits.clone()),
            Box::new(self.rate_limit_wait_seconds.clone()),
            Box::new(self.wechat_budget_admissions.clone()),
            Box::new(self.wechat_budget_wait_seconds.clone()),
            Box::new(self.quota_refusals.clone()),
            Box::new(self.sessions_purged.clone()),
            Box::new(self.refunds.clone()),
            Box::new(self.refunds_abnormal.clone()),
            Box::new(self.reconcile_runs.clone()),
            Box::new(self.reconcile_rows.clone()),
            Box::new(self.reconcile_discrepancies.clone()),
            Box::new(self.reconcile_healed.clone()),
            Box::new(self.reconcile_last_success.clone()),
            Box::new(self.reconcile_unexplained.clone()),
            Box::new(self.anomalies.clone()),
            Box::new(self.logins.clone()),
            Box::new(self.db_pool_connections.clone()),
            Box::new(self.db_pool_max_connections.clone()),
            Box::new(self.db_pool_acquire.clone()),
            Box::new(self.db_pool_acquire_timeouts.clone()),
            Box::new(self.gauges_refreshed.clone()),
            Box::new(self.gauges_refresh_failures.clone()),
            Box::new(self.certificates_in_use.clone()),
            Box::new(self.certificate_expiry.clone()),
            Box::new(self.certificate_last_refresh.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.http_connections.clone()),
            Box::new(self.http_connections_open.clone()),
            Box::new(self.http_shed.clone()),
            Box::new(super::process::ProcessCollector::new()),
        ];
        let mut names = Vec::new();
        for collector in collectors {
            names.extend(collector.desc().iter().map(|d| d.fq_name.clone()));
            // Names are distinct constants, so registration cannot fail; a failure would
            // only drop that one metric from the scrape, never take the service down.
            if let Err(err) = self.registry.register(collector) {
                tracing::error!(error = %err, "metric registration failed");
            }
        }
        names
    }

    /// The name of every metric family registered (process metrics included).
    pub fn family_names(&self) -> &[String] {
        &self.family_names
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Pre-creates label sets so every series exists (at 0) from the first scrape, which
    /// alert expressions such as `increase(x[5m]) > 0` and dashboards rely on.
    pub fn touch(&self, vec: &IntCounterVec, label_sets: &[&[&str]]) {
        for labels in label_sets {
            let _ = vec.with_label_values(labels);
        }
    }
}

fn name(n: &str, help: &str) -> Opts {
    Opts::new(n, help).namespace(NAMESPACE)
}

fn counter(n: &str, help: &str) -> IntCounter {
    IntCounter::with_opts(name(n, help)).unwrap_or_else(|_| unreachable_metric(n))
}

fn float_counter(n: &str, help: &str) -> prometheus::Counter {
    prometheus::Counter::with_opts(name(n, help)).unwrap_or_else(|_| unreachable_metric(n))
}

fn counter_vec(n: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(name(n, help), labels).unwrap_or_else(|_| unreachable_metric(n))
}

fn gauge(n: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(name(n, help)).unwrap_or_else(|_| unreachable_metric(n))
}

fn gauge_vec(n: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(name(n, help), labels).unwrap_or_else(|_| unreachable_metric(n))
}

fn histogram(n: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(n, help).namespace(NAMESPACE).buckets(buckets.to_vec()))
        .unwrap_or_else(|_| unreachable_metric(n))
}

fn histogram_vec(n: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(n, help).namespace(NAMESPACE).buckets(LATENCY_BUCKETS.to_vec()), labels)
        .unwrap_or_else(|_| unreachable_metric(n))
}

/// Metric options are compile-time constants checked by the unit test below.
#[expect(clippy::panic, reason = "static metric definitions are validated by unit tests")]
pub(super) fn unreachable_metric(n: &str) -> ! {
    panic!("invalid metric definition {n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_namespace_and_help() {
        let metrics = Metrics::new();
        metrics.notify_rejected.with_label_values(&["bad_signature"]).inc();
        metrics.wechat_call_duration.with_label_values(&["query_order"]).observe(0.01);
        let text = metrics.render();
        assert!(text.contains("wxpay_notify_rejected_total{reason=\"bad_signature\"} 1"), "{text}");
        assert!(text.contains("# HELP wxpay_build_info"));
        assert!(text.contains("wxpay_wechat_call_duration_seconds_bucket"));
        // Ours carry the namespace; the standard process metrics keep their standard names.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("wxpay_") || line.starts_with("process_"), "{line}");
        }
        for name in metrics.family_names() {
            assert!(name.starts_with("wxpay_") || name.starts_with("process_"), "{name}");
        }
        assert!(metrics.family_names().iter().any(|n| n == "wxpay_db_pool_acquire_seconds"));
    }
}
