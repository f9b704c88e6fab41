//! Payments, judged from orders already locked and written in bulk.
//!
//! Judging is separate from writing so that one notification and a batch of hundreds go
//! through the very same rules: [`Applier::judge_payment`] decides what a report does to the
//! order as locked (and updates that in-memory order, so a later report in the same batch sees
//! the move), and [`PaymentPlan::write`] runs the decisions as a few set-based statements inside
//! the caller's transaction.

use crate::domain::{AnomalyKind, EventSource, Evidence, Order, OrderStatus, PaymentReport, TransactionId};
use crate::storage::events::NewEvent;
use crate::storage::inbox::Anomaly;
use crate::storage::orders::PaidTransition;
use crate::storage::{Db, StorageError, Tx};

use super::{Applied, Applier, ApplyOutcome, NONE, Refusal};

/// An event to append, owned until the plan is written.
#[derive(Debug)]
struct PlannedEvent {
    order_id: i64,
    from: OrderStatus,
    applied: bool,
    source: EventSource,
    evidence: String,
    note: Option<String>,
}

/// An anomaly to record, owned until it is written.
#[derive(Debug)]
pub(super) struct PlannedAnomaly {
    kind: AnomalyKind,
    source: EventSource,
    evidence: String,
    out_trade_no: Option<String>,
    values: Option<(String, String)>,
}

impl PlannedAnomaly {
    /// The anomaly that records `evidence` refused for `r` (which it consumes but the detail).
    pub(super) fn of(evidence: &Evidence, r: Refusal) -> (Self, Applied) {
        let anomaly = Self {
            kind: r.kind,
            source: evidence.source,
            evidence: evidence.reference.clone(),
            out_trade_no: r.out_trade_no,
            values: r.values,
        };
        (anomaly, (ApplyOutcome::Anomaly(r.kind), Some(r.detail)))
    }

    pub(super) async fn insert(&self, db: &Db, tx: &mut Tx, now_ms: i64) -> Result<(), StorageError> {
        let anomaly = Anomaly {
            kind: self.kind,
            source: self.source,
            out_trade_no: self.out_trade_no.as_deref(),
            evidence: Some(&self.evidence),
            ours: self.values.as_ref().map(|v| v.0.as_str()),
            theirs: self.values.as_ref().map(|v| v.1.as_str()),
            now_ms,
        };
        db.insert_anomaly(tx, &anomaly).await
    }
}

/// What a set of payment reports does to the books, not yet written.
#[derive(Debug, Default)]
pub(super) struct PaymentPlan {
    paid: Vec<PaidTransition>,
    events: Vec<PlannedEvent>,
    anomalies: Vec<PlannedAnomaly>,
}

impl PaymentPlan {
    fn event(&mut self, order: &Order, evidence: &Evidence, applied: bool, note: Option<String>) {
        self.events.push(PlannedEvent {
            order_id: order.id,
            from: order.status,
            applied,
            source: evidence.source,
            evidence: evidence.reference.clone(),
            note,
        });
    }

    /// Plans the anomaly that records refused evidence and returns the outcome that says so.
    fn refuse(&mut self, evidence: &Evidence, r: Refusal) -> Applied {
        r.log(evidence);
        let (anomaly, applied) = PlannedAnomaly::of(evidence, r);
        self.anomalies.push(anomaly);
        applied
    }

    /// Runs the plan inside `tx`: one guarded statement moves every paid order, one appends
    /// every event, then the (rare) anomalies. Fails with [`StorageError::Changed`] when an
    /// order no longer allows its move (the caller rolls back).
    pub(super) async fn write(self, db: &Db, tx: &mut Tx, now_ms: i64) -> Result<(), StorageError> {
        let moved = db.record_payments(tx, &self.paid, now_ms).await?;
        if moved != self.paid.len() as u64 {
            return Err(StorageError::Changed(format!(
                "{} of {} paid orders moved: the books changed under the lock",
                moved,
                self.paid.len()
            )));
        }
        let events: Vec<NewEvent<'_>> = self
            .events
            .iter()
            .map(|e| NewEvent {
                order_id: e.order_id,
                from: Some(e.from),
                to: OrderStatus::Success,
                applied: e.applied,
                source: e.source,
                evidence: Some(&e.evidence),
                note: e.note.as_deref(),
                now_ms,
            })
            .collect();
        NewEvent::insert_many(tx, &events).await?;
        for anomaly in &self.anomalies {
            anomaly.insert(db, tx, now_ms).await?;
        }
        Ok(())
    }
}

impl Applier {
    /// Decides what `report` does to `order` (as locked, `None` when we have no such order) and
    /// adds it to `plan`. An order that moves is updated in memory too.
    pub(super) fn judge_payment(
        &self,
        order: Option<&mut Order>,
        report: &PaymentReport,
        evidence: &Evidence,
        now_ms: i64,
        plan: &mut PaymentPlan,
    ) -> Applied {
        let no = Some(report.out_trade_no.as_str().to_owned());
        let Some(order) = order else {
            let detail = "no order with this out_trade_no".to_owned();
            return plan
                .refuse(evidence, Refusal { kind: AnomalyKind::UnknownOrder, out_trade_no: no, values: None, detail });
        };
        if let Some(c) = report.contradiction(&self.merchant, order) {
            let detail = format!("{}: ours {}, {} {}", c.kind, c.ours, evidence.source, c.theirs);
            plan.event(order, evidence, false, Some(detail.clone()));
            let refusal = Refusal { kind: c.kind, out_trade_no: no, values: Some((c.ours, c.theirs)), detail };
            return plan.refuse(evidence, refusal);
        }
        let current = order.status;
        if current.can_move_to(OrderStatus::Success) {
            let paid_at_ms = report.success_time.map_or(now_ms, |t| t.timestamp_millis());
            plan.paid.push(PaidTransition {
                order_id: order.id,
                transaction_id: report.transaction_id.clone(),
                paid_at_ms,
            });
            plan.event(order, evidence, true, None);
            order.status = OrderStatus::Success;
            if report.transaction_id.is_some() {
                order.transaction_id.clone_from(&report.transaction_id);
            }
            order.paid_at_ms = Some(paid_at_ms);
            return (ApplyOutcome::Applied, None);
        }
        // Not applied: the no-op is recorded, then judged.
        plan.event(order, evidence, false, None);
        let same_payment = order.transaction_id.is_some() && order.transaction_id == report.transaction_id;
        let refusal = match current {
            OrderStatus::Success | OrderStatus::Refund if same_payment => return (ApplyOutcome::Duplicate, None),
            // Paid after we closed it: money moved for a closed order. Never silently
            // re-opened; an operator decides (refund or honour).
            OrderStatus::Closed => Refusal {
                kind: AnomalyKind::PaidAfterClose,
                out_trade_no: no,
                values: None,
                detail: format!("paid at WeChat ({}) but closed here", evidence.source),
            },
            _ => {
                // The values themselves (or `none`), never `Some("…")`: this text is stored
                // and shown to operators.
                let ours = order.transaction_id.as_ref().map_or(NONE, TransactionId::as_str).to_owned();
                let theirs = report.transaction_id.as_ref().map_or(NONE, TransactionId::as_str).to_owned();
                let detail = format!("order is {current} with transaction {ours}, {} says {theirs}", evidence.source);
                Refusal {
                    kind: AnomalyKind::TransactionMismatch,
                    out_trade_no: no,
                    values: Some((ours, theirs)),
                    detail,
                }
            }
        };
        plan.refuse(evidence, refusal)
    }
}
