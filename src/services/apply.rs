//! Applying what WeChat reported to our books, idempotently, whichever way it arrived: a
//! stored notification, the answer to a query, or a bill row. There is one entry per kind of
//! report, [`Applier::apply`] for payments and [`Applier::apply_refund`] for refunds, and
//! the inbox path ([`Applier::apply_stored`]) runs the very same checks inside the transaction
//! that marks the notification processed.
//!
//! Everything happens in one transaction: the order is re-read under lock, the report is
//! checked against it (amount, appid, mchid, payer: never trusted alone), the guarded
//! transition runs (or a no-op is recorded), and refused evidence becomes an anomaly. Running
//! this twice for the same report, or for two reports of the same payment, changes the order
//! once.

use crate::clock::Clock;
use crate::domain::refund::check_refund_success;
use crate::domain::{
    AnomalyKind, EventSource, Evidence, Merchant, Order, OrderStatus, PaymentReport, RefundReport, RefundStatus,
    TransactionId,
};
use crate::storage::events::NewEvent;
use crate::storage::inbox::Anomaly;
use crate::storage::orders::{TransitionOutcome, TransitionRequest};
use crate::storage::{Db, StorageError, Tx};
use crate::telemetry::metrics::Metrics;
use crate::wechat::convert::{self, Notified};

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

/// How an absent value reads in anomalies and details.
const NONE: &str = "none";

/// The outcome and, for humans, why.
type Applied = (ApplyOutcome, Option<String>);

/// Evidence refused: what is recorded as an anomaly.
struct Refusal<'a> {
    kind: AnomalyKind,
    out_trade_no: Option<&'a str>,
    /// (ours, theirs) where the kind compares values.
    values: Option<(&'a str, &'a str)>,
    detail: String,
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
}

impl Applier {
    pub fn new(db: Db, merchant: Merchant, clock: Clock, metrics: Metrics) -> Self {
        for outcome in ApplyOutcome::LABELS {
            let _ = metrics.inbox_applied.with_label_values(&[outcome]);
        }
        Self { db, merchant, clock, metrics }
    }

    /// Applies the inbox entry `inbox_id` and marks it processed, in one transaction.
    pub async fn apply_stored(&self, inbox_id: i64) -> Result<ApplyOutcome, StorageError> {
        let Some(entry) = self.db.inbox_entry(inbox_id).await? else {
            self.metrics.inbox_applied.with_label_values(&[ApplyOutcome::Missing.label()]).inc();
            return Ok(ApplyOutcome::Missing);
        };
        if entry.processed_at_ms.is_some() {
            self.metrics.inbox_applied.with_label_values(&[ApplyOutcome::AlreadyProcessed.label()]).inc();
            return Ok(ApplyOutcome::AlreadyProcessed);
        }
        let evidence = Evidence::new(EventSource::Notify, entry.notification_id.clone());
        let mut tx = self.db.begin().await?;
        let (counted, (outcome, detail)) = match convert::notification(&entry.event_type, &entry.resource_json) {
            Ok(Notified::Payment(report)) => {
                (Some(Counted::Payment), self.payment_in(&mut tx, &report, &evidence).await?)
            }
            Ok(Notified::Refund(report)) => {
                (Some(Counted::Refund(report.status)), self.refund_in(&mut tx, &report, &evidence).await?)
            }
            Ok(Notified::Other(event_type)) => {
                (None, (ApplyOutcome::Ignored, Some(format!("event type {event_type} is not applied by this version"))))
            }
            Err(err) => {
                let refusal = Refusal {
                    kind: AnomalyKind::MalformedResource,
                    out_trade_no: entry.out_trade_no.as_deref(),
                    values: None,
                    detail: err.to_string(),
                };
                (None, self.refuse(&mut tx, &evidence, refusal).await?)
            }
        };
        let label = match &outcome {
            ApplyOutcome::Anomaly(kind) => format!("anomaly:{kind}"),
            other => other.label().to_owned(),
        };
        if !self.db.mark_inbox_processed(&mut tx, entry.id, &label, detail.as_deref(), self.clock.now_ms()).await? {
            tx.rollback().await?;
            self.metrics.inbox_applied.with_label_values(&[ApplyOutcome::AlreadyProcessed.label()]).inc();
            return Ok(ApplyOutcome::AlreadyProcessed);
        }
        tx.commit().await?;
        self.metrics.inbox_applied.with_label_values(&[outcome.label()]).inc();
        if let Some(counted) = counted {
            self.count(counted, &outcome, EventSource::Notify);
        } else if let ApplyOutcome::Anomaly(kind) = outcome {
            self.metrics.anomalies.with_label_values(&[kind.as_str()]).inc();
        }
        tracing::info!(notify.id = %entry.notification_id, order.out_trade_no = entry.out_trade_no.as_deref().unwrap_or(""), outcome = %label, "notification applied");
        Ok(outcome)
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

    async fn payment_in(
        &self,
        tx: &mut Tx,
        report: &PaymentReport,
        evidence: &Evidence,
    ) -> Result<Applied, StorageError> {
        let now_ms = self.clock.now_ms();
        let no = report.out_trade_no.as_str();
        let Some(order) = self.db.lock_order(tx, &report.out_trade_no).await? else {
            let refusal = Refusal {
                kind: AnomalyKind::UnknownOrder,
                out_trade_no: Some(no),
                values: None,
                detail: "no order with this out_trade_no".into(),
            };
            return self.refuse(tx, evidence, refusal).await;
        };
        if let Some(c) = report.contradiction(&self.merchant, &order) {
            let detail = format!("{}: ours {}, {} {}", c.kind, c.ours, evidence.source, c.theirs);
            self.no_op_event(tx, &order, evidence, &detail, now_ms).await?;
            let refusal = Refusal { kind: c.kind, out_trade_no: Some(no), values: Some((&c.ours, &c.theirs)), detail };
            return self.refuse(tx, evidence, refusal).await;
        }
        let request = TransitionRequest {
            out_trade_no: &order.out_trade_no,
            to: OrderStatus::Success,
            evidence,
            transaction_id: report.transaction_id.as_ref(),
            paid_at_ms: Some(report.success_time.map_or(now_ms, |t| t.timestamp_millis())),
            note: None,
            now_ms,
        };
        match self.db.transition(tx, &request).await? {
            TransitionOutcome::Applied { .. } => Ok((ApplyOutcome::Applied, None)),
            TransitionOutcome::NotFound => Ok((ApplyOutcome::Missing, None)),
            TransitionOutcome::NotApplied { current, .. } => {
                let same_payment = order.transaction_id.is_some() && order.transaction_id == report.transaction_id;
                let refusal = match current {
                    OrderStatus::Success | OrderStatus::Refund if same_payment => {
                        return Ok((ApplyOutcome::Duplicate, None));
                    }
                    // Paid after we closed it: money moved for a closed order. Never silently
                    // re-opened; an operator decides (refund or honour).
                    OrderStatus::Closed => Refusal {
                        kind: AnomalyKind::PaidAfterClose,
                        out_trade_no: Some(no),
                        values: None,
                        detail: format!("paid at WeChat ({}) but closed here", evidence.source),
                    },
                    _ => {
                        // The values themselves (or `none`), never `Some("…")`: this text is
                        // stored and shown to operators.
                        let ours = order.transaction_id.as_ref().map_or(NONE, TransactionId::as_str);
                        let theirs = report.transaction_id.as_ref().map_or(NONE, TransactionId::as_str);
                        Refusal {
                            kind: AnomalyKind::TransactionMismatch,
                            out_trade_no: Some(no),
                            values: Some((ours, theirs)),
                            detail: format!(
                                "order is {current} with transaction {ours}, {} says {theirs}",
                                evidence.source
                            ),
                        }
                    }
                };
                self.refuse(tx, evidence, refusal).await
            }
        }
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
        let no = Some(report.out_trade_no.as_str());
        let refuse = |kind, detail: String| Refusal { kind, out_trade_no: no, values: None, detail };
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
        let about = Some(format!("refund {} is {}", report.out_refund_no, report.status));
        match report.status {
            RefundStatus::Requested | RefundStatus::Processing => Ok((ApplyOutcome::Ignored, about)),
            RefundStatus::Closed | RefundStatus::Abnormal => {
                let changed = self.db.finish_refund(tx, &report.out_refund_no, report.status, None, now_ms).await?;
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
                if !self.db.finish_refund(tx, &refund.out_refund_no, RefundStatus::Success, success, now_ms).await? {
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
    async fn refuse(&self, tx: &mut Tx, evidence: &Evidence, r: Refusal<'_>) -> Result<Applied, StorageError> {
        tracing::warn!(
            anomaly.kind = %r.kind,
            source = %evidence.source,
            evidence = %evidence.reference,
            order.out_trade_no = r.out_trade_no.unwrap_or(""),
            detail = %r.detail,
            "evidence not applied"
        );
        let anomaly = Anomaly {
            kind: r.kind,
            source: evidence.source,
            out_trade_no: r.out_trade_no,
            evidence: Some(&evidence.reference),
            ours: r.values.map(|v| v.0),
            theirs: r.values.map(|v| v.1),
            now_ms: self.clock.now_ms(),
        };
        self.db.insert_anomaly(tx, &anomaly).await?;
        Ok((ApplyOutcome::Anomaly(r.kind), Some(r.detail)))
    }

    /// Records that evidence arrived for the order but was refused.
    async fn no_op_event(
        &self,
        tx: &mut Tx,
        order: &Order,
        evidence: &Evidence,
        note: &str,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        NewEvent {
            order_id: order.id,
            from: Some(order.status),
            to: OrderStatus::Success,
            applied: false,
            source: evidence.source,
            evidence: Some(&evidence.reference),
            note: Some(note),
            now_ms,
        }
        .insert(tx)
        .await
    }
}
