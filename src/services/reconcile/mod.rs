//! Daily reconciliation: WeChat's trade bill is the ground truth of what money moved. For one
//! WeChat day (Asia/Shanghai) we fetch the bill (`fetch`: verified before it is read), stream it
//! row by row through the comparison with our payments of that day (`compare`), heal payments
//! we missed (applied with source `bill` through the same checks as a notification), and store
//! every difference (`bill_runs`, `discrepancies`) plus a CSV and JSON report (`report`).
//! Re-running a date replaces its results; healing is idempotent.

pub mod compare;
pub mod fetch;
pub mod ours;
pub mod report;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{Days, NaiveDate};
use tracing::Instrument;

use crate::bill::{BillItem, BillReader};
use crate::clock::Clock;
use crate::config::ReconcileSettings;
use crate::domain::time::{from_ms, to_ms, to_wechat_rfc3339, wechat_date, wechat_day_start};
use crate::domain::{
    AnomalyKind, BillRun, BillRunStatus, Discrepancy, DiscrepancyClass as Class, EventSource, Evidence, OrderStatus,
    Resolution,
};
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;
use crate::wechat::{PayClient, WechatError};

use super::apply::{Applier, ApplyOutcome};
use compare::{Comparator, Comparison, RefundOfDay, Unmatched};
use fetch::Fetched;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0} is not a day that can be reconciled yet (bills exist for past Shanghai days)")]
    NotYet(String),
    #[error(transparent)]
    Wechat(WechatError),
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    #[error("bill hash mismatch: WeChat announced {expected}, the file hashes to {actual}; nothing applied")]
    HashMismatch { expected: String, actual: String },
    #[error("bill rejected: {0}; nothing applied")]
    Bill(String),
    #[error("i/o: {0}")]
    Io(String),
}

/// Where the run is, for a progress bar.
pub trait Progress: Send + Sync {
    fn downloaded(&self, _bytes: u64) {}
    fn rows(&self, _rows: u64) {}
}

/// No progress display.
#[derive(Debug, Clone, Copy)]
pub struct Quiet;
impl Progress for Quiet {}

#[derive(Debug, Clone)]
pub struct Reconciler {
    db: Db,
    pay: PayClient,
    applier: Applier,
    clock: Clock,
    settings: ReconcileSettings,
    metrics: Metrics,
}

/// Rows between progress reports.
const PROGRESS_EVERY: u64 = 10_000;

impl Reconciler {
    pub fn new(
        db: Db,
        pay: PayClient,
        applier: Applier,
        clock: Clock,
        settings: ReconcileSettings,
        metrics: Metrics,
    ) -> Self {
        Self { db, pay, applier, clock, settings, metrics }
    }

    pub fn settings(&self) -> &ReconcileSettings {
        &self.settings
    }

    /// Reconciles `date` and records the run, whatever its outcome. A bill that is not ready
    /// is recorded `not_ready` with the time of the next attempt; an error is recorded
    /// `failed` (and returned).
    pub async fn run(&self, date: NaiveDate, progress: Arc<dyn Progress>) -> Result<BillRun, ReconcileError> {
        let span = tracing::info_span!("reconcile", bill.date = %date);
        self.run_in_span(date, progress).instrument(span).await
    }

    async fn run_in_span(&self, date: NaiveDate, progress: Arc<dyn Progress>) -> Result<BillRun, ReconcileError> {
        let started_at_ms = self.clock.now_ms();
        let bill_date = date.format("%Y-%m-%d").to_string();
        let today = wechat_date(self.clock.now());
        if date >= today {
            return Err(ReconcileError::NotYet(bill_date));
        }
        let result = self.run_inner(date, &bill_date, Arc::clone(&progress)).await;
        let finished_at_ms = self.clock.now_ms();
        let retry_ms = i64::try_from(self.settings.retry_interval_secs).unwrap_or(1800).saturating_mul(1000);
        let (run, found) = match result {
            Ok(Outcome::Compared { comparison, sha1 }) => {
                let found = comparison.discrepancies;
                let healed = found.iter().filter(|d| d.resolution == Resolution::Healed).count() as i64;
                let unexplained = found.len() as i64 - healed;
                let status = match (&sha1, found.is_empty()) {
                    (_, false) => BillRunStatus::Discrepancies,
                    (None, true) => BillRunStatus::NoBill,
                    (Some(_), true) => BillRunStatus::Clean,
                };
                let run = BillRun {
                    bill_date: bill_date.clone(),
                    status,
                    bill_rows: i64::try_from(comparison.rows).unwrap_or(i64::MAX),
                    orders_compared: i64::try_from(comparison.orders_compared).unwrap_or(i64::MAX),
                    discrepancies: found.len() as i64,
                    unexplained,
                    healed,
                    bill_sha1: sha1,
                    error: None,
                    attempts: 1,
                    started_at_ms,
                    finished_at_ms,
                    next_attempt_at_ms: None,
                };
                (run, found)
            }
            Ok(Outcome::NotReady { ours_empty }) => {
                // A compared day keeps its results; a day only assumed empty is asked again.
                if let Some(done) = self.finished_run(&bill_date).await?
                    && done.status != BillRunStatus::AssumedEmpty
                {
                    tracing::warn!("bill not available now; the day's earlier results stand");
                    return Ok(done);
                }
                if may_assume_empty(date, self.clock.now(), ours_empty) {
                    let note = "WeChat still answers STATEMENT_CREATING past noon of the next day and our books \
                                have no order and no refund that day: assumed empty, without a bill";
                    tracing::warn!(bill.date = %bill_date, "{note}");
                    // Asked again while the day is in the catch-up window: a bill that appears
                    // replaces the assumption.
                    let next = finished_at_ms + ASSUMED_EMPTY_RECHECK_MS;
                    let mut run = self.unfinished(&bill_date, BillRunStatus::AssumedEmpty, None, started_at_ms, next);
                    run.error = Some(note.to_owned());
                    (run, Vec::new())
                } else {
                    let next = finished_at_ms + retry_ms;
                    (self.unfinished(&bill_date, BillRunStatus::NotReady, None, started_at_ms, next), Vec::new())
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "reconciliation failed");
                self.metrics.reconcile_runs.with_label_values(&[BillRunStatus::Failed.as_str()]).inc();
                let run = self.unfinished(
                    &bill_date,
                    BillRunStatus::Failed,
                    Some(err.to_string()),
                    started_at_ms,
                    finished_at_ms + retry_ms,
                );
                // A failed re-run of a finished day keeps that day's results.
                if matches!(self.finished_run(&bill_date).await, Ok(None))
                    && let Err(save) = self.db.save_bill_run(&run, &[]).await
                {
                    tracing::error!(error = %save, "cannot record the failed run");
                }
                return Err(err);
            }
        };
        self.db.save_bill_run(&run, &found).await?;
        let saved = self.db.bill_run(&bill_date).await?.unwrap_or(run);
        self.metrics.reconcile_runs.with_label_values(&[saved.status.as_str()]).inc();
        if saved.status != BillRunStatus::NotReady {
            self.metrics.reconcile_rows.inc_by(u64::try_from(saved.bill_rows).unwrap_or(0));
            for d in &found {
                self.metrics
                    .reconcile_discrepancies
                    .with_label_values(&[d.class.as_str(), d.resolution.as_str()])
                    .inc();
            }
            if let Err(err) = report::write(&self.settings.reports_dir, &saved, &found) {
                tracing::error!(error = %err, "cannot write the reconciliation report");
            }
        }
        tracing::info!(status = %saved.status, rows = saved.bill_rows, discrepancies = saved.discrepancies, healed = saved.healed, unexplained = saved.unexplained, "reconciliation finished");
        Ok(saved)
    }

    /// The day's recorded run if it finished (clean, discrepancies or no bill).
    async fn finished_run(&self, bill_date: &str) -> Result<Option<BillRun>, StorageError> {
        Ok(self.db.bill_run(bill_date).await?.filter(|run| run.status.is_finished()))
    }

    fn unfinished(&self, date: &str, status: BillRunStatus, error: Option<String>, started: i64, next: i64) -> BillRun {
        BillRun {
            bill_date: date.to_owned(),
            status,
            bill_rows: 0,
            orders_compared: 0,
            discrepancies: 0,
            unexplained: 0,
            healed: 0,
            bill_sha1: None,
            error,
            attempts: 1,
            started_at_ms: started,
            finished_at_ms: self.clock.now_ms(),
            next_attempt_at_ms: Some(next),
        }
    }

    async fn run_inner(
        &self,
        date: NaiveDate,
        bill_date: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<Outcome, ReconcileError> {
        let on_bytes = {
            let progress = Arc::clone(&progress);
            move |n: u64| progress.downloaded(n)
        };
        let fetched = fetch::fetch(
            &self.pay,
            bill_date,
            &self.settings.work_dir,
            self.settings.max_bill_bytes,
            self.settings.max_bill_plain_bytes,
            &on_bytes,
        )
        .await?;
        let evidence = Evidence::new(EventSource::Bill, format!("bill:{bill_date}"));
        let healed_before: HashSet<String> = self.db.healed_by_bill(&evidence.reference).await?.into_iter().collect();
        let mut comparator = Comparator::new(healed_before);
        let from_ms = to_ms(wechat_day_start(date));
        let to_ms_ = to_ms(wechat_day_start(date.checked_add_days(Days::new(1)).unwrap_or(date)));
        self.db.for_each_paid_order(from_ms, to_ms_, |order| comparator.add_ours(order)).await?;
        let mut our_refunds = 0usize;
        for refund in self.db.refunds_of_bill_window(from_ms, to_ms_).await? {
            our_refunds += 1;
            // A refund that holds an amount is in WeChat's bill; a CLOSED one never is.
            if refund.status.holds_amount() {
                comparator.add_our_refund(RefundOfDay {
                    out_refund_no: refund.out_refund_no.into(),
                    out_trade_no: refund.out_trade_no,
                    settled: refund.settled,
                    requested: refund.amount,
                });
            }
        }
        let (comparator, sha1) = match fetched {
            Fetched::NotReady => {
                // Empty means no order of the day at all: an unpaid one may be a payment we
                // missed (notifications refused, queries failing), which only the bill shows.
                let ours_empty = comparator.ours_count() == 0
                    && our_refunds == 0
                    && !self.db.any_order_created_between(from_ms, to_ms_).await?;
                return Ok(Outcome::NotReady { ours_empty });
            }
            Fetched::Empty => (comparator, None),
            Fetched::Bill { file, sha1, .. } => {
                let path: PathBuf = file.path().to_owned();
                let progress = Arc::clone(&progress);
                let max_plain = self.settings.max_bill_plain_bytes;
                let comparator =
                    tokio::task::spawn_blocking(move || compare_file(&path, max_plain, comparator, &*progress))
                        .await
                        .map_err(|e| ReconcileError::Io(e.to_string()))??;
                drop(file); // deleted here, before anything is applied
                (comparator, Some(sha1))
            }
        };
        let mut comparison = comparator.finish();
        let unmatched = std::mem::take(&mut comparison.unmatched);
        for item in unmatched {
            let Some(d) = self.resolve_unmatched(&item, &evidence, from_ms, to_ms_).await? else {
                // Recorded meanwhile by another path: one of our payments of the day after all.
                comparison.orders_compared += 1;
                continue;
            };
            if d.resolution == Resolution::Healed {
                // Healed now: one of our payments of the day from here on, as a re-run sees it.
                comparison.orders_compared += 1;
            }
            comparison.discrepancies.push(d);
        }
        Ok(Outcome::Compared { comparison, sha1 })
    }

    /// A payment in the bill that is not among our payments of the day: heal it if the order
    /// is waiting for it, or say why it cannot be.
    async fn resolve_unmatched(
        &self,
        item: &Unmatched,
        evidence: &Evidence,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<Discrepancy>, ReconcileError> {
        let report = &item.report;
        let amount = report.amount.map_or(0, |a| a.0);
        let mut d = Discrepancy {
            class: Class::MissingHere,
            out_trade_no: Some(report.out_trade_no.to_string()),
            transaction_id: report.transaction_id.as_ref().map(ToString::to_string),
            ours: None,
            theirs: Some(format!("{} {amount}", report.status)),
            bill_line: i64::try_from(item.line).ok(),
            resolution: Resolution::Unexplained,
            detail: String::new(),
        };
        let Some(order) = self.db.order_by_no(&report.out_trade_no).await? else {
            d.class = Class::UnknownOrder;
            d.detail = "paid at WeChat for an order we never created".into();
            return Ok(Some(d));
        };
        d.ours = Some(format!("{} {}", order.status, order.amount.0));
        match order.status {
            OrderStatus::Notpay => match self.applier.apply(report, evidence).await? {
                ApplyOutcome::Applied => {
                    self.metrics.reconcile_healed.inc();
                    d.resolution = Resolution::Healed;
                    d.detail = "paid at WeChat, missed here; healed from this bill".into();
                }
                // Recorded meanwhile (a notification won the race): nothing to explain.
                ApplyOutcome::Duplicate | ApplyOutcome::AlreadyProcessed => return Ok(None),
                ApplyOutcome::Anomaly(kind) => {
                    d.class = match kind {
                        AnomalyKind::AmountMismatch => Class::AmountMismatch,
                        AnomalyKind::PaidAfterClose => Class::PaidAfterClose,
                        AnomalyKind::TransactionMismatch => Class::TransactionMismatch,
                        _ => Class::StatusMismatch,
                    };
                    d.detail = format!("payment not applied ({kind}): see anomalies");
                }
                other => {
                    d.class = Class::StatusMismatch;
                    d.detail = format!("payment not applied ({})", other.label());
                }
            },
            OrderStatus::Closed => {
                d.class = Class::PaidAfterClose;
                d.detail = "paid at WeChat for an order closed here: refund or honour it".into();
            }
            _ => {
                let paid = order.paid_at_ms.unwrap_or(0);
                if paid < from_ms || paid >= to_ms {
                    d.class = Class::DateMismatch;
                    d.detail = format!("paid here at {}", to_wechat_rfc3339(from_ms_checked(paid)));
                } else {
                    d.class = Class::StatusMismatch;
                    d.detail = format!("order is {} here", order.status);
                }
            }
        }
        Ok(Some(d))
    }

    /// Whether `date` has a finished run (clean, with discrepancies, or no bill).
    pub async fn is_done(&self, date: NaiveDate) -> Result<Option<BillRun>, StorageError> {
        self.db.bill_run(&date.format("%Y-%m-%d").to_string()).await
    }
}

fn from_ms_checked(ms: i64) -> chrono::DateTime<chrono::Utc> {
    from_ms(ms)
}

enum Outcome {
    Compared {
        comparison: Comparison,
        sha1: Option<String>,
    },
    /// STATEMENT_CREATING; `ours_empty`: our books have no payment and no refund that day.
    NotReady {
        ours_empty: bool,
    },
}

/// Hour (Asia/Shanghai) of day D+1 after which a day WeChat still calls STATEMENT_CREATING,
/// and that has no trade in our books, is closed as assumed empty. Bills are ready from about
/// 10:00 (protocol §5.7); two hours later an answer that never changes is WeChat's known
/// behaviour for some trade-less days rather than a bill still on its way.
pub const ASSUME_EMPTY_AFTER_HOUR: u32 = 12;

/// Whether a day still "being created" at `now` may be closed as empty: past noon of the next
/// day (Shanghai), and nothing of ours that day that the bill would have to list.
/// How often a day assumed empty asks WeChat for its bill again (within the catch-up window).
const ASSUMED_EMPTY_RECHECK_MS: i64 = 6 * 3600 * 1000;

pub fn may_assume_empty(date: NaiveDate, now: chrono::DateTime<chrono::Utc>, ours_empty: bool) -> bool {
    let Some(next) = date.checked_add_days(Days::new(1)) else { return false };
    ours_empty && now >= wechat_day_start(next) + chrono::TimeDelta::hours(i64::from(ASSUME_EMPTY_AFTER_HOUR))
}

/// Reads the verified bill row by row into the comparator (blocking: runs off the runtime).
fn compare_file(
    path: &std::path::Path,
    max_plain_bytes: u64,
    mut comparator: Comparator,
    progress: &dyn Progress,
) -> Result<Comparator, ReconcileError> {
    let mut reader = BillReader::new(fetch::open_plain(path, max_plain_bytes)?);
    let mut rows = 0u64;
    while let Some(item) = reader.next() {
        let line = reader.line();
        match item.map_err(|e| ReconcileError::Bill(e.to_string()))? {
            BillItem::Row(row) => {
                rows += 1;
                comparator.row(line, &row).map_err(|e| ReconcileError::Bill(format!("line {line}: {e}")))?;
                if rows.is_multiple_of(PROGRESS_EVERY) {
                    progress.rows(rows);
                }
            }
            BillItem::Summary(summary) => comparator.summary(line, &summary, reader.rows_summary()),
        }
    }
    progress.rows(rows);
    if !comparator.summary_seen() {
        return Err(ReconcileError::Bill("the bill ends without its summary (truncated?)".into()));
    }
    Ok(comparator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::parse_rfc3339;

    #[test]
    fn only_a_day_empty_in_our_books_is_assumed_empty_and_only_past_noon_next_day() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 24).expect("date");
        let at = |s: &str| parse_rfc3339(s).expect("time");
        assert!(!may_assume_empty(day, at("2026-11-25T11:59:59+08:00"), true), "before noon: still waiting");
        assert!(may_assume_empty(day, at("2026-11-25T12:00:00+08:00"), true));
        assert!(!may_assume_empty(day, at("2026-11-30T12:00:00+08:00"), false), "we had trades: a bill must come");
        // Noon Shanghai is 04:00 UTC: the day boundary is WeChat's, not UTC's.
        assert!(!may_assume_empty(day, at("2026-11-25T03:59:59Z"), true));
    }
}
