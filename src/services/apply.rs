//! Applying a stored notification to its order, idempotently.
//!
//! Everything happens in one transaction: the order is re-read under lock, the notification
//! is checked against it (amount, appid, mchid, payer: never trusted alone), the guarded
//! transition runs (or a no-op is recorded), and the inbox row is marked processed. Running
//! this twice for the same entry, or for two notifications of the same payment, changes the
//! order once.

use crate::clock::Clock;
use crate::domain::time::parse_rfc3339;
use crate::domain::{EventSource, OrderStatus};
use crate::storage::inbox::{Anomaly, InboxRow};
use crate::storage::orders::{OrderRow, TransitionOutcome, TransitionRequest};
use crate::storage::refunds::RefundOutcome;
use crate::storage::{Db, StorageError, Tx};
use crate::telemetry::metrics::Metrics;
use crate::wechat::wire::pay::Transaction;
use crate::wechat::wire::refund::RefundNotice;

/// What applying one inbox entry did; `label()` feeds `wxpay_inbox_applied_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The order moved to SUCCESS.
    Applied,
    /// The order already had this payment: a recorded no-op.
    Duplicate,
    /// The evidence contradicts the order; recorded as an anomaly, not applied.
    Anomaly(&'static str),
    /// An event type this version does not act on (kept in the inbox).
    Ignored,
    /// Another worker processed it first.
    AlreadyProcessed,
    Missing,
}

impl ApplyOutcome {
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

/// Where a piece of evidence came from: recorded on events and anomalies.
#[derive(Debug, Clone, Copy)]
struct Evidence<'a> {
    source: EventSource,
    /// Notification id, `query:<transaction_id>`, bill date...
    reference: &'a str,
}

#[derive(Debug, Clone)]
pub struct Applier {
    db: Db,
    appid: String,
    mchid: String,
    clock: Clock,
    metrics: Metrics,
}

impl Applier {
    pub fn new(db: Db, appid: String, mchid: String, clock: Clock, metrics: Metrics) -> Self {
        Self { db, appid, mchid, clock, metrics }
    }

    pub async fn apply(&self, inbox_id: i64) -> Result<ApplyOutcome, StorageError> {
        let outcome = self.apply_inner(inbox_id).await?;
        self.metrics.inbox_applied.with_label_values(&[outcome.label()]).inc();
        if let ApplyOutcome::Anomaly(kind) = outcome {
            self.metrics.anomalies.with_label_values(&[kind]).inc();
        }
        Ok(outcome)
    }

    async fn apply_inner(&self, inbox_id: i64) -> Result<ApplyOutcome, StorageError> {
        let Some(entry) = self.db.inbox_entry(inbox_id).await? else {
            return Ok(ApplyOutcome::Missing);
        };
        if entry.processed_at_ms.is_some() {
            return Ok(ApplyOutcome::AlreadyProcessed);
        }
        let mut tx = self.db.begin().await?;
        let (outcome, detail) = match entry.event_type.as_str() {
            "TRANSACTION.SUCCESS" => self.apply_notified_payment(&mut tx, &entry).await?,
            "REFUND.SUCCESS" | "REFUND.ABNORMAL" | "REFUND.CLOSED" => self.apply_refund_notice(&mut tx, &entry).await?,
            other => (ApplyOutcome::Ignored, Some(format!("event type {other} is not applied by this version"))),
        };
        let label = match &outcome {
            ApplyOutcome::Anomaly(kind) => format!("anomaly:{kind}"),
            other => other.label().to_owned(),
        };
        let now_ms = self.clock.now_ms();
        if !self.db.mark_inbox_processed(&mut tx, entry.id, &label, detail.as_deref(), now_ms).await? {
            tx.rollback().await?;
            return Ok(ApplyOutcome::AlreadyProcessed);
        }
        tx.commit().await?;
        if entry.event_type.starts_with("REFUND.") {
            match (&outcome, entry.event_type.as_str()) {
                (ApplyOutcome::Applied, "REFUND.SUCCESS") => {
                    self.metrics.order_transitions.with_label_values(&["REFUND", "notify"]).inc();
                    self.metrics.refunds.with_label_values(&["succeeded"]).inc();
                }
                (ApplyOutcome::Applied, "REFUND.CLOSED") => self.metrics.refunds.with_label_values(&["closed"]).inc(),
                (ApplyOutcome::Applied, _) => self.metrics.refunds.with_label_values(&["abnormal"]).inc(),
                _ => {}
            }
        } else {
            self.count_transition(&outcome, EventSource::Notify);
        }
        tracing::info!(notify.id = %entry.notification_id, order.out_trade_no = entry.out_trade_no.as_deref().unwrap_or(""), outcome = %label, "notification applied");
        Ok(outcome)
    }

    /// Applies a payment WeChat reported some other way than a notification (the answer to an
    /// order query, a bill row): the same checks, the same guarded transition, in its own
    /// transaction, with `source` and `evidence` recorded on the event.
    pub async fn apply_reported_payment(
        &self,
        txn: &Transaction,
        source: EventSource,
        evidence: &str,
    ) -> Result<ApplyOutcome, StorageError> {
        let mut tx = self.db.begin().await?;
        let (outcome, detail) = self.apply_payment(&mut tx, txn, &Evidence { source, reference: evidence }).await?;
        tx.commit().await?;
        self.count_transition(&outcome, source);
        if let ApplyOutcome::Anomaly(kind) = outcome {
            self.metrics.anomalies.with_label_values(&[kind]).inc();
        }
        tracing::info!(order.out_trade_no = %txn.out_trade_no, source = source.as_str(), outcome = outcome.label(), detail = detail.as_deref().unwrap_or(""), "reported payment applied");
        Ok(outcome)
    }

    fn count_transition(&self, outcome: &ApplyOutcome, source: EventSource) {
        if *outcome == ApplyOutcome::Applied {
            self.metrics.order_transitions.with_label_values(&["SUCCESS", source.as_str()]).inc();
        }
    }

    /// `REFUND.*`: the refund we applied for succeeded (money moves on the order) or did not.
    async fn apply_refund_notice(
        &self,
        tx: &mut Tx,
        entry: &InboxRow,
    ) -> Result<(ApplyOutcome, Option<String>), StorageError> {
        let evidence = Evidence { source: EventSource::Notify, reference: &entry.notification_id };
        let now_ms = self.clock.now_ms();
        let notice: RefundNotice = match serde_json::from_str(&entry.resource_json) {
            Ok(notice) => notice,
            Err(err) => {
                let detail = format!("resource is not a refund: {err}");
                return self.anomaly(tx, "malformed_resource", &evidence, None, None, detail, now_ms).await;
            }
        };
        let no = Some(notice.out_trade_no.as_str());
        if notice.mchid != self.mchid {
            let detail = format!("mchid_mismatch: ours {}, notification {}", self.mchid, notice.mchid);
            return self.anomaly(tx, "mchid_mismatch", &evidence, None, no, detail, now_ms).await;
        }
        if notice.refund_status != "SUCCESS" {
            let changed =
                self.db.finish_refund_unpaid(tx, &notice.out_refund_no, &notice.refund_status, now_ms).await?;
            let outcome = if changed { ApplyOutcome::Applied } else { ApplyOutcome::Duplicate };
            return Ok((outcome, Some(format!("refund {} is {}", notice.out_refund_no, notice.refund_status))));
        }
        let success_ms =
            notice.success_time.as_deref().and_then(parse_rfc3339).map_or(now_ms, |t| t.timestamp_millis());
        let outcome = self
            .db
            .apply_refund_success(
                tx,
                &notice.out_refund_no,
                &notice.refund_id,
                notice.amount.refund,
                success_ms,
                EventSource::Notify,
                &entry.notification_id,
                now_ms,
            )
            .await?;
        match outcome {
            RefundOutcome::Applied => Ok((ApplyOutcome::Applied, None)),
            RefundOutcome::Duplicate => Ok((ApplyOutcome::Duplicate, None)),
            RefundOutcome::Mismatch(detail) => {
                self.anomaly(tx, "refund_mismatch", &evidence, None, no, detail, now_ms).await
            }
            RefundOutcome::Unknown => {
                let detail = format!("no refund {} here", notice.out_refund_no);
                self.anomaly(tx, "unknown_refund", &evidence, None, no, detail, now_ms).await
            }
        }
    }

    async fn apply_notified_payment(
        &self,
        tx: &mut Tx,
        entry: &InboxRow,
    ) -> Result<(ApplyOutcome, Option<String>), StorageError> {
        let evidence = Evidence { source: EventSource::Notify, reference: &entry.notification_id };
        match serde_json::from_str::<Transaction>(&entry.resource_json) {
            Ok(txn) => self.apply_payment(tx, &txn, &evidence).await,
            Err(err) => {
                let detail = format!("resource is not a transaction: {err}");
                self.anomaly(tx, "malformed_resource", &evidence, None, None, detail, self.clock.now_ms()).await
            }
        }
    }

    async fn apply_payment(
        &self,
        tx: &mut Tx,
        txn: &Transaction,
        evidence: &Evidence<'_>,
    ) -> Result<(ApplyOutcome, Option<String>), StorageError> {
        let now_ms = self.clock.now_ms();
        let Some(order) = self.db.lock_order(tx, &txn.out_trade_no).await? else {
            let detail = "no order with this out_trade_no".to_owned();
            return self.anomaly(tx, "unknown_order", evidence, None, Some(&txn.out_trade_no), detail, now_ms).await;
        };
        if let Some((kind, ours, theirs)) = self.mismatch(&order, txn) {
            let detail = format!("{kind}: ours {ours}, {} {theirs}", evidence.source.as_str());
            self.no_op_event(tx, &order, evidence, &detail, now_ms).await?;
            return self
                .anomaly(tx, kind, evidence, Some((&ours, &theirs)), Some(&order.out_trade_no), detail, now_ms)
                .await;
        }
        let paid_at_ms = txn.success_time.as_deref().and_then(parse_rfc3339).map(|t| t.timestamp_millis());
        let request = TransitionRequest {
            out_trade_no: &order.out_trade_no,
            to: OrderStatus::Success,
            source: evidence.source,
            evidence: Some(evidence.reference),
            transaction_id: txn.transaction_id.as_deref(),
            paid_at_ms: paid_at_ms.or(Some(now_ms)),
            note: None,
            now_ms,
        };
        match self.db.transition(tx, &request).await? {
            TransitionOutcome::Applied { .. } => Ok((ApplyOutcome::Applied, None)),
            TransitionOutcome::NotFound => Ok((ApplyOutcome::Missing, None)),
            TransitionOutcome::NotApplied { current, .. } => {
                let same_payment = order.transaction_id.is_some() && order.transaction_id == txn.transaction_id;
                match current {
                    OrderStatus::Success | OrderStatus::Refund if same_payment => Ok((ApplyOutcome::Duplicate, None)),
                    OrderStatus::Closed => {
                        // Paid after we closed it: money moved for a closed order. Never
                        // silently re-opened; an operator decides (refund or honour).
                        let detail = format!("paid at WeChat ({}) but closed here", evidence.source.as_str());
                        self.anomaly(tx, "paid_after_close", evidence, None, Some(&order.out_trade_no), detail, now_ms)
                            .await
                    }
                    _ => {
                        let detail = format!(
                            "order is {current} with transaction {:?}, notification says {:?}",
                            order.transaction_id, txn.transaction_id
                        );
                        let no = Some(order.out_trade_no.as_str());
                        self.anomaly(tx, "transaction_mismatch", evidence, None, no, detail, now_ms).await
                    }
                }
            }
        }
    }

    /// The first field of the notification that contradicts our order.
    fn mismatch(&self, order: &OrderRow, txn: &Transaction) -> Option<(&'static str, String, String)> {
        if !matches!(txn.trade_state.as_str(), "SUCCESS" | "REFUND") {
            return Some(("unexpected_state", "SUCCESS".into(), txn.trade_state.clone()));
        }
        if txn.appid != self.appid {
            return Some(("appid_mismatch", self.appid.clone(), txn.appid.clone()));
        }
        if txn.mchid != self.mchid {
            return Some(("mchid_mismatch", self.mchid.clone(), txn.mchid.clone()));
        }
        let total = txn.amount.as_ref().and_then(|a| a.total);
        if total != Some(order.amount_fen) {
            return Some(("amount_mismatch", order.amount_fen.to_string(), format!("{total:?}")));
        }
        let payer = txn.payer.as_ref().map(|p| p.openid.as_str());
        if payer != Some(order.payer_openid.as_str()) {
            return Some(("payer_mismatch", "order payer".into(), "another openid".into()));
        }
        None
    }

    /// Records evidence that was refused and returns the outcome that says so.
    #[expect(clippy::too_many_arguments, reason = "one call shape for every anomaly kind")]
    async fn anomaly(
        &self,
        tx: &mut Tx,
        kind: &'static str,
        evidence: &Evidence<'_>,
        values: Option<(&str, &str)>,
        out_trade_no: Option<&str>,
        detail: String,
        now_ms: i64,
    ) -> Result<(ApplyOutcome, Option<String>), StorageError> {
        tracing::warn!(
            anomaly.kind = kind,
            source = evidence.source.as_str(),
            evidence = evidence.reference,
            order.out_trade_no = out_trade_no.unwrap_or(""),
            detail = %detail,
            "evidence not applied"
        );
        self.db
            .insert_anomaly(
                tx,
                &Anomaly {
                    kind,
                    source: evidence.source.as_str(),
                    out_trade_no,
                    evidence: Some(evidence.reference),
                    ours: values.map(|v| v.0),
                    theirs: values.map(|v| v.1),
                    now_ms,
                },
            )
            .await?;
        Ok((ApplyOutcome::Anomaly(kind), Some(detail)))
    }

    /// Records that evidence arrived for the order but was refused.
    async fn no_op_event(
        &self,
        tx: &mut Tx,
        order: &OrderRow,
        evidence: &Evidence<'_>,
        note: &str,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        crate::storage::events::NewEvent {
            order_id: order.id,
            from: Some(order.status()?),
            to: OrderStatus::Success,
            applied: false,
            source: evidence.source,
            evidence: Some(evidence.reference),
            note: Some(note),
            now_ms,
        }
        .insert(tx)
        .await
    }
}
