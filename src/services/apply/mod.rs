//! Applying what WeChat reported to our books, idempotently, whichever way it arrived: a
//! stored notification, the answer to a query, or a bill row. There is one entry per kind of
//! report, [`Applier::apply`] for payments and [`Applier::apply_refund`] for refunds, and
//! the inbox paths (batches: [`Applier::apply_inbox_batch`]; one deferred entry:
//! [`Applier::apply_stored`]) run the very same checks inside the transaction that marks the
//! notifications processed. Payments are judged by one function (`payment`) whether one or
//! hundreds are applied at once.
//!
//! Everything happens in one transaction: the order is re-read under lock, the report is
//! checked against it (amount, appid, mchid, payer: never trusted alone), the guarded
//! transition runs (or a no-op is recorded), and refused evidence becomes an anomaly. Running
//! this twice for the same report, or for two reports of the same payment, changes the order
//! once.

mod batch;
mod payment;

use payment::{PaymentPlan, PlannedAnomaly};

use crate::clock::Clock;
use crate::domain::refund::check_refund_success;
use crate::domain::{
    AnomalyKind, EventSource, Evidence, Merchant, OrderStatus, PaymentReport, RefundReport, RefundStatus,
};
use crate::storage::inbox::InboxRow;
use crate::storage::orders::{TransitionOutcome, TransitionRequest};
use crate::storage::refunds::RefundFacts;
use crate::storage::{Db, StorageError, Tx};
use crate::telemetry::metrics::Metrics;
use crate::wechat::convert::{self, ConvertError, Notified};

/// What applying one report did; `label()` feeds `wxpay_inbox_applied_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The order (or refund) moved.
    Applied,
    /// Our books already said so: a recorded no-op.
    Duplicate,
    /// The evidence contradicts our books; recorded as an anomaly, not applied.
    Anomaly(AnomalyKind),
    /// A report this version does not act on (a notification stays in the inbox; a refund
    /// still processing is the caller's to schedule).
    Ignored,
    /// Another worker processed the notification first.
    AlreadyProcessed,
    Missing,
}

impl ApplyOutcome {
    /// Every value [`Self::label`] can take (the metric's series exist from the start).
    pub const LABELS: &[&str] = &["applied", "duplicate", "anomaly", "ignored", "already_processed", "missing"];

    pub fn label(&self) -> &'static str {
        match self {
            ApplyOutcome::Applied => "applied",
            ApplyOutcome::Duplicate => "duplicate",
            ApplyOutcome::Anomaly(_) => "anomaly",
            ApplyOutcome::Ignored => "ignored",
            ApplyOutcome::AlreadyProcessed => "already_processed",
            ApplyOutcome::Missing => "missing",
        }
    }
}

/// The outcome as the inbox stores it (`anomaly:<kind>` names the kind).
fn stored_label(outcome: &ApplyOutcome) -> String {
    match outcome {
        ApplyOutcome::Anomaly(kind) => format!("anomaly:{kind}"),
        other => other.label().to_owned(),
    }
}

/// How an absent value reads in anomalies and details.
const NONE: &str = "none";

/// The outcome and, for humans, why.
type Applied = (ApplyOutcome, Option<String>);

/// Evidence refused: what is recorded as an anomaly.
struct Refusal {
    kind: AnomalyKind,
    out_trade_no: Option<String>,
    /// (ours, theirs) where the kind compares values.
    values: Option<(String, String)>,
    detail: String,
}

impl Refusal {
    fn log(&self, evidence: &Evidence) {
        tracing::warn!(
            anomaly.kind = %self.kind,
            source = %evidence.source,
            evidence = %evidence.reference,
            order.out_trade_no = self.out_trade_no.as_deref().unwrap_or(""),
            detail = %self.detail,
            "evidence not applied"
        );
    }
}

/// What a report did, for the metrics counted after commit.
#[derive(Debug, Clone, Copy)]
enum Counted {
    Payment,
    Refund(RefundStatus),
}

#[derive(Debug, Clone)]
pub struct Applier {
    db: Db,
    merchant: Merchant,
    clock: Clock,
    metrics: Metrics,
    /// Delay before an ABNORMAL refund is asked about again (`poll.abnormal_refund_interval_secs`).
    abnormal_recheck_ms: i64,
}

/// The ABNORMAL re-check delay until [`Applier::with_abnormal_recheck`] sets one: 30 minutes.
const DEFAULT_ABNORMAL_RECHECK_MS: i64 = 30 * 60 * 1000;

impl Applier {
    pub fn new(db: Db, merchant: Merchant, clock: Clock, metrics: Metrics) -> Self {
        for outcome in ApplyOutcome::LABELS {
            let _ = metrics.inbox_applied.with_label_values(&[outcome]);
        }
        Self { db, merchant, clock, metrics, abnormal_recheck_ms: DEFAULT_ABNORMAL_RECHECK_MS }
    }

    /// ABNORMAL refunds are asked about again `every` after WeChat reports them (an operator
    /// resolves them in the merchant console; WeChat then answers SUCCESS to a query).
    #[must_use]
    pub fn with_abnormal_recheck(mut self, every: std::time::Duration) -> Self {
        self.abnormal_recheck_ms = i64::try_from(every.as_millis()).unwrap_or(DEFAULT_ABNORMAL_RECHECK_MS);
        self
    }

    /// Applies the inbox entry `inbox_id` and marks it processed, in one transaction: the
    /// path of an entry the batch could not apply (`batch` applies the rest).
    pub async fn apply_stored(&self, inbox_id: i64) -> Result<ApplyOutcome, StorageError> {
        let mut tx = self.db.begin().await?;
        let Some(entry) = self.db.lock_unprocessed_inbox_entry(&mut tx, inbox_id).await? else {
            tx.rollback().await?;
            // Applied already, held by a batch that is applying it, or no such entry.
            let outcome = match self.db.inbox_entry(inbox_id).await? {
                Some(_) => ApplyOutcome::AlreadyProcessed,
                None => ApplyOutcome::Missing,
            };
            self.metrics.inbox_applied.with_label_values(&[outcome.label()]).inc();
            return Ok(outcome);
        };
        let parsed = convert::notification(&entry.event_type, &entry.resource_json);
        let (counted, (outcome, detail)) = self.entry_in(&mut tx, &entry, parsed).await?;
        let label = stored_label(&outcome);
        if !self.db.mark_inbox_processed(&mut tx, entry.id, &label, detail.as_deref(), self.clock.now_ms()).await? {
            tx.rollback().await?;
            self.metrics.inbox_applied.with_label_values(&[ApplyOutcome::AlreadyProcessed.label()]).inc();
            return Ok(ApplyOutcome::AlreadyProcessed);
        }
        tx.commit().await?;
        self.entry_done(&entry, counted, &outcome, &label);
        Ok(outcome)
    }

    /// One inbox entry inside `tx`, whatever it reports.
    async fn entry_in(
        &self,
        tx: &mut Tx,
        entry: &InboxRow,
        parsed: Result<Notified, ConvertError>,
    ) -> Result<(Option<Counted>, Applied), StorageError> {
        let evidence = Evidence::new(EventSource::Notify, entry.notification_id.clone());
        Ok(match parsed {
            Ok(Notified::Payment(report)) => (Some(Counted::Payment), self.payment_in(tx, &report, &evidence).await?),
            Ok(Notified::Refund(report)) => {
                (Some(Counted::Refund(report.status)), self.refund_in(tx, &report, &evidence).await?)
            }
            Ok(Notified::Other(event_type)) => {
                (None, (ApplyOutcome::Ignored, Some(format!("event type {event_type} is not applied by this version"))))
            }
            Err(err) => {
                let refusal = Refusal {
                    kind: AnomalyKind::MalformedResource,
                    out_trade_no: entry.out_trade_no.clone(),
                    values: None,
                    detail: err.to_string(),
                };
                (None, self.refuse(tx, &evidence, refusal).await?)
            }
        })
    }

    /// After the commit that marked `entry` processed: metrics and the line that says so.
    fn entry_done(&self, entry: &InboxRow, counted: Option<Counted>, outcome: &ApplyOutcome, label: &str) {
        self.metrics.inbox_applied.with_label_values(&[outcome.label()]).inc();
        if let Some(counted) = counted {
            self.count(counted, outcome, EventSource::Notify);
        } else if let ApplyOutcome::Anomaly(kind) = outcome {
            self.metrics.anomalies.with_label_values(&[kind.as_str()]).inc();
        }
        tracing::info!(
            notify.id = %entry.notification_id,
            notify.inbox_id = entry.id,
            order.out_trade_no = entry.out_trade_no.as_deref().unwrap_or(""),
            outcome = %label,
            "notification applied"
        );
    }

    /// Applies a payment WeChat reported, from any source, in its own transaction.
    pub async fn apply(&self, report: &PaymentReport, evidence: &Evidence) -> Result<ApplyOutcome, StorageError> {
        let mut tx = self.db.begin().await?;
        let (outcome, detail) = self.payment_in(&mut tx, report, evidence).await?;
        tx.commit().await?;
        self.count(Counted::Payment, &outcome, evidence.source);
        tracing::info!(order.out_trade_no = %report.out_trade_no, source = %evidence.source, outcome = outcome.label(), detail = detail.as_deref().unwrap_or(""), "reported payment applied");
        Ok(outcome)
    }

    /// Applies a refund's outcome WeChat reported, from any source, in its own transaction.
    /// Only final outcomes move anything; PROCESSING is the caller's to schedule.
    pub async fn apply_refund(&self, report: &RefundReport, evidence: &Evidence) -> Result<ApplyOutcome, StorageError> {
        let mut tx = self.db.begin().await?;
        let (outcome, detail) = self.refund_in(&mut tx, report, evidence).await?;
        tx.commit().await?;
        self.count(Counted::Refund(report.status), &outcome, evidence.source);
        tracing::info!(refund.out_refund_no = %report.out_refund_no, source = %evidence.source, outcome = outcome.label(), detail = detail.as_deref().unwrap_or(""), "reported refund applied");
        Ok(outcome)
    }

    fn count(&self, counted: Counted, outcome: &ApplyOutcome, source: EventSource) {
        match (outcome, counted) {
            (ApplyOutcome::Anomaly(kind), _) => self.metrics.anomalies.with_label_values(&[kind.as_str()]).inc(),
            (ApplyOutcome::Applied, Counted::Payment) => {
                self.metrics
                    .order_transitions
                    .with_label_values(&[OrderStatus::Success.as_str(), source.as_str()])
                    .inc();
            }
            (ApplyOutcome::Applied, Counted::Refund(RefundStatus::Success)) => {
                self.metrics
                    .order_transitions
                    .with_label_values(&[OrderStatus::Refund.as_str(), source.as_str()])
                    .inc();
                self.metrics.refunds.with_label_values(&["succeeded"]).inc();
            }
            (ApplyOutcome::Applied, Counted::Refund(RefundStatus::Closed)) => {
                self.metrics.refunds.with_label_values(&["closed"]).inc();
            }
            (ApplyOutcome::Applied, Counted::Refund(RefundStatus::Abnormal)) => {
                self.metrics.refunds.with_label_values(&["abnormal"]).inc();
            }
            _ => {}
        }
    }

    /// One payment report inside `tx`: the order locked, judged, written (see `payment`).
    async fn payment_in(
        &self,
        tx: &mut Tx,
        report: &PaymentReport,
        evidence: &Evidence,
    ) -> Result<Applied, StorageError> {
        let now_ms = self.clock.now_ms();
        let mut order = self.db.lock_order(tx, &report.out_trade_no).await?;
        let mut plan = PaymentPlan::default();
        let applied = self.judge_payment(order.as_mut(), report, evidence, now_ms, &mut plan);
        plan.write(&self.db, tx, now_ms).await?;
        Ok(applied)
    }

    /// A refund's final outcome: SUCCESS moves money on the order (refund SUCCESS, the
    /// order's refunded amount, the order to REFUND, one event), CLOSED and ABNORMAL only end
    /// the refund.
    async fn refund_in(
        &self,
        tx: &mut Tx,
        report: &RefundReport,
        evidence: &Evidence,
    ) -> Result<Applied, StorageError> {
        let now_ms = self.clock.now_ms();
        let no = report.out_trade_no.as_str();
        let refuse = |kind, detail: String| Refusal { kind, out_trade_no: Some(no.to_owned()), values: None, detail };
        if let Some(mchid) = report.mchid.as_ref().filter(|m| **m != self.merchant.mchid) {
            let detail = format!("mchid_mismatch: ours {}, {} {mchid}", self.merchant.mchid, evidence.source);
            return self.refuse(tx, evidence, refuse(AnomalyKind::MchidMismatch, detail)).await;
        }
        // The order first, then the refund: the order in which a refund request locks them
        // (`RefundService::record`). Locking the other way round deadlocked PostgreSQL when a
        // request for a refund met the answer of the same refund applied concurrently.
        let order = self.db.lock_order(tx, &report.out_trade_no).await?;
        let Some(refund) = self.db.lock_refund(tx, &report.out_refund_no).await? else {
            if report.status != RefundStatus::Success {
                // No money moves either way: nothing here to end (as before the typed core).
                return Ok((ApplyOutcome::Duplicate, Some(format!("no refund {} here", report.out_refund_no))));
            }
            let detail = format!("no refund {} here", report.out_refund_no);
            return self.refuse(tx, evidence, refuse(AnomalyKind::UnknownRefund, detail)).await;
        };
        let facts = RefundFacts {
            wechat_created_at_ms: report.created_at.map(|t| t.timestamp_millis()),
            settled: report.settled,
        };
        // Only from a report about this very refund: one refused below as a mismatch must not
        // move the refund's bill day or settled amount.
        if report.out_trade_no == refund.out_trade_no && report.amount == refund.amount {
            self.db.record_refund_facts(tx, &report.out_refund_no, facts).await?;
        }
        let about = Some(format!("refund {} is {}", report.out_refund_no, report.status));
        match report.status {
            RefundStatus::Requested | RefundStatus::Processing => Ok((ApplyOutcome::Ignored, about)),
            RefundStatus::Closed | RefundStatus::Abnormal => {
                // ABNORMAL stays on the slow poll: nothing else would ever see it end.
                let next =
                    (report.status == RefundStatus::Abnormal).then(|| now_ms.saturating_add(self.abnormal_recheck_ms));
                let changed =
                    self.db.finish_refund(tx, &report.out_refund_no, report.status, None, next, now_ms).await?;
                Ok((if changed { ApplyOutcome::Applied } else { ApplyOutcome::Duplicate }, about))
            }
            RefundStatus::Success if refund.status == RefundStatus::Success => Ok((ApplyOutcome::Duplicate, None)),
            RefundStatus::Success if !refund.status.can_move_to(RefundStatus::Success) => {
                let detail = format!("refund {} is {} here, WeChat says SUCCESS", refund.out_refund_no, refund.status);
                self.refuse(tx, evidence, refuse(AnomalyKind::RefundMismatch, detail)).await
            }
            RefundStatus::Success if refund.amount != report.amount => {
                let detail = format!("refund amount: ours {}, WeChat {}", refund.amount.0, report.amount.0);
                self.refuse(tx, evidence, refuse(AnomalyKind::RefundMismatch, detail)).await
            }
            RefundStatus::Success if refund.out_trade_no != report.out_trade_no => {
                let detail = format!(
                    "refund {} is of order {} here, WeChat says {}",
                    refund.out_refund_no, refund.out_trade_no, report.out_trade_no
                );
                self.refuse(tx, evidence, refuse(AnomalyKind::RefundMismatch, detail)).await
            }
            RefundStatus::Success => {
                let Some(order) = order else {
                    let detail = format!("refund {} names no order here", refund.out_refund_no);
                    return self.refuse(tx, evidence, refuse(AnomalyKind::UnknownRefund, detail)).await;
                };
                if let Err(detail) = check_refund_success(&order, refund.amount) {
                    return self.refuse(tx, evidence, refuse(AnomalyKind::RefundMismatch, detail)).await;
                }
                let success_ms = report.success_time.map_or(now_ms, |t| t.timestamp_millis());
                let success = Some((report.refund_id.as_str(), success_ms));
                if !self
                    .db
                    .finish_refund(tx, &refund.out_refund_no, RefundStatus::Success, success, None, now_ms)
                    .await?
                {
                    // Cannot happen under the row lock unless the guard and the check disagree.
                    let detail = format!("refund {} did not move to SUCCESS", refund.out_refund_no);
                    return self.refuse(tx, evidence, refuse(AnomalyKind::RefundMismatch, detail)).await;
                }
                self.db.add_refunded(tx, order.id, refund.amount).await?;
                let note = format!("refund {}: {} fen", refund.out_refund_no, refund.amount.0);
                let request = TransitionRequest {
                    out_trade_no: &order.out_trade_no,
                    to: OrderStatus::Refund,
                    evidence,
                    transaction_id: None,
                    paid_at_ms: None,
                    note: Some(&note),
                    now_ms,
                };
                match self.db.transition(tx, &request).await? {
                    TransitionOutcome::Applied { .. } => Ok((ApplyOutcome::Applied, None)),
                    TransitionOutcome::NotApplied { current, .. } => {
                        let detail = format!("order could not move from {current} to REFUND");
                        self.refuse(tx, evidence, refuse(AnomalyKind::RefundMismatch, detail)).await
                    }
                    TransitionOutcome::NotFound => {
                        let detail = format!("order {} not found when moving it to REFUND", order.out_trade_no);
                        self.refuse(tx, evidence, refuse(AnomalyKind::RefundMismatch, detail)).await
                    }
                }
            }
        }
    }

    /// Records evidence that was refused and returns the outcome that says so.
    async fn refuse(&self, tx: &mut Tx, evidence: &Evidence, r: Refusal) -> Result<Applied, StorageError> {
        r.log(evidence);
        let (anomaly, applied) = PlannedAnomaly::of(evidence, r);
        anomaly.insert(&self.db, tx, self.clock.now_ms()).await?;
        Ok(applied)
    }
}
