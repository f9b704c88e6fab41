//! Asking WeChat about an unpaid order and acting on the answer: the second path to a final
//! status, for when notifications are lost or late. Used three ways:
//!
//! - the poller's check job (`check`): query; a payment is applied with source `poll`; a
//!   NOTPAY order past `time_expire` is closed at WeChat and then here; otherwise the next
//!   check is scheduled on the backoff schedule;
//! - the owner's status request (`refresh`): the same query, single-flight per order with a
//!   short cache so a mini-program polling its own order cannot hammer WeChat;
//! - the owner's cancel (`close`): closed at WeChat, confirmed by a query, then here.
//!
//! Failures of the WeChat call are returned to the caller, who owns retrying (the job's policy,
//! or the client trying again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::PollSettings;
use crate::domain::{EventSource, Evidence, Order, OrderStatus, OutTradeNo, PaymentReport};
use crate::storage::orders::{TransitionOutcome, TransitionRequest};
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;
use crate::wechat::ratelimit::Priority;
use crate::wechat::{PayClient, WechatError};

use super::apply::{Applier, ApplyOutcome};

/// Single-flight entries kept at most; beyond it, stale ones are dropped.
const MAX_FLIGHTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Wechat(#[from] WechatError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a check found and did; `label()` feeds `wxpay_poll_checks_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// WeChat says paid; applied (or already known).
    Paid(ApplyOutcome),
    /// Closed (at WeChat, here, or both).
    Closed,
    /// WeChat reports a failed payment.
    PayError,
    /// Still unpaid; checked again at the given instant (ms).
    Pending { next_check_at_ms: Option<i64> },
    /// Already final here: nothing asked.
    AlreadyFinal(OrderStatus),
}

impl CheckOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            CheckOutcome::Paid(_) => "success",
            CheckOutcome::Closed => "closed",
            CheckOutcome::PayError => "payerror",
            CheckOutcome::Pending { .. } => "pending",
            CheckOutcome::AlreadyFinal(_) => "already_final",
        }
    }
}

/// What the owner's close request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    Closed,
    /// The payer was faster: the order is paid (and now recorded as such).
    AlreadyPaid,
    /// The order was already final; nothing was asked.
    NotOpen(OrderStatus),
}

/// One order's client-sync slot: held during the call to WeChat, remembers when it was made.
type Flight = Arc<tokio::sync::Mutex<Option<Instant>>>;

#[derive(Debug, Clone)]
pub struct OrderSync {
    db: Db,
    pay: PayClient,
    applier: Applier,
    clock: Clock,
    settings: PollSettings,
    metrics: Metrics,
    flights: Arc<StdMutex<HashMap<OutTradeNo, Flight>>>,
}

impl OrderSync {
    pub fn new(
        db: Db,
        pay: PayClient,
        applier: Applier,
        clock: Clock,
        settings: PollSettings,
        metrics: Metrics,
    ) -> Self {
        Self { db, pay, applier, clock, settings, metrics, flights: Arc::default() }
    }

    /// The poller's check of one order.
    pub async fn check(&self, out_trade_no: &OutTradeNo) -> Result<CheckOutcome, SyncError> {
        let result = self.check_inner(out_trade_no).await;
        let label = result.as_ref().map_or("error", CheckOutcome::label);
        self.metrics.poll_checks.with_label_values(&[label]).inc();
        result
    }

    async fn check_inner(&self, out_trade_no: &OutTradeNo) -> Result<CheckOutcome, SyncError> {
        let Some(order) = self.db.order_by_no(out_trade_no).await? else {
            return Err(StorageError::NotFound.into());
        };
        if order.status != OrderStatus::Notpay {
            return Ok(CheckOutcome::AlreadyFinal(order.status));
        }
        let report = match self.pay.query_order(out_trade_no, Priority::Settling).await {
            Ok(report) => Some(report),
            Err(err) if err.is_not_found() => None,
            // A state we do not know is not a final one we know: keep checking on the schedule
            // (and close at expiry, which queries again if WeChat refuses), and say so.
            Err(err) if err.is_unrecognised() => {
                tracing::error!(order.out_trade_no = %out_trade_no, error = %err, "WeChat answered a state this version does not know; treated as still open");
                None
            }
            Err(err) => return Err(err.into()),
        };
        if let Some(outcome) = self.settle_from(&order, report.as_ref(), "poll").await? {
            if matches!(outcome, CheckOutcome::Paid(ApplyOutcome::Anomaly(_))) {
                tracing::warn!(
                    order.out_trade_no = %out_trade_no,
                    "payment contradicts the order; polling stops, see anomalies"
                );
                self.db.stop_checks(order.id, self.clock.now_ms()).await?;
            }
            return Ok(outcome);
        }
        let now_ms = self.clock.now_ms();
        if now_ms >= order.time_expire_ms {
            return self.close_expired(&order).await;
        }
        let delay = i64::try_from(self.settings.delay_after(order.check_attempts + 1).as_millis()).unwrap_or(i64::MAX);
        // Never later than expiry: that is when the order must be closed.
        let next = now_ms.saturating_add(delay).min(order.time_expire_ms);
        self.db.reschedule_check(order.id, next, now_ms).await?;
        Ok(CheckOutcome::Pending { next_check_at_ms: Some(next) })
    }

    /// Acts on a final WeChat state; `None` when the order is still open at WeChat (or unknown
    /// to it, which happens when prepay never reached it).
    async fn settle_from(
        &self,
        order: &Order,
        report: Option<&PaymentReport>,
        how: &str,
    ) -> Result<Option<CheckOutcome>, SyncError> {
        let Some(report) = report else { return Ok(None) };
        let reference = report.transaction_id.as_ref().map_or_else(|| report.status.to_string(), ToString::to_string);
        let evidence = Evidence::new(EventSource::Poll, format!("{how}:{reference}"));
        let outcome = match report.status {
            OrderStatus::Success | OrderStatus::Refund => {
                CheckOutcome::Paid(self.applier.apply(report, &evidence).await?)
            }
            OrderStatus::Closed => {
                self.transition(order, OrderStatus::Closed, &evidence, "closed at WeChat").await?;
                CheckOutcome::Closed
            }
            OrderStatus::Payerror => {
                self.transition(order, OrderStatus::Payerror, &evidence, &report.status_detail).await?;
                CheckOutcome::PayError
            }
            OrderStatus::Notpay => return Ok(None),
        };
        Ok(Some(outcome))
    }

    /// Past `time_expire` and still unpaid: close at WeChat first (so the payer can no longer
    /// pay), then here. If the close fails, WeChat is asked what became of the order, and a
    /// payment made in between is applied instead.
    async fn close_expired(&self, order: &Order) -> Result<CheckOutcome, SyncError> {
        match self.close_at_wechat(order, EventSource::Poll, "expired").await? {
            CloseOutcome::NotOpen(OrderStatus::Payerror) => Ok(CheckOutcome::PayError),
            CloseOutcome::Closed | CloseOutcome::NotOpen(_) => Ok(CheckOutcome::Closed),
            CloseOutcome::AlreadyPaid => Ok(CheckOutcome::Paid(ApplyOutcome::Applied)),
        }
    }

    /// The owner cancels an unpaid order.
    pub async fn close(&self, order: &Order) -> Result<CloseOutcome, SyncError> {
        if order.status != OrderStatus::Notpay {
            return Ok(CloseOutcome::NotOpen(order.status));
        }
        self.close_at_wechat(order, EventSource::Api, "cancelled by the payer").await
    }

    /// Closes at WeChat, then here, without trusting any one error code to mean "paid":
    /// `ORDERPAID` is documented for the HK v3 close API only (protocol §5.4), and a close
    /// that failed (or timed out) says nothing sure about the order. So WeChat is asked for the
    /// order's state before CLOSED is recorded whenever the close is not a plain success, and
    /// once more after a 204 when the owner cancels (the payer may be tapping "pay" on another
    /// device at that very moment). An order WeChat reports paid is recorded as paid through
    /// the applier, never as CLOSED.
    async fn close_at_wechat(&self, order: &Order, source: EventSource, why: &str) -> Result<CloseOutcome, SyncError> {
        let no = &order.out_trade_no;
        // The owner's cancel draws from the user share of the WeChat budget; the close of an
        // expired order settles it.
        let priority = if source == EventSource::Api { Priority::User } else { Priority::Settling };
        let reference = match self.pay.close_order(no, priority).await {
            Ok(()) if source == EventSource::Api => {
                // WeChat has closed it: the confirming query finishes settling the order, so it
                // draws on the settling budget. Refused at user priority (the user share spent
                // between the two calls), it would leave the order NOTPAY here while closed there.
                let report = self.pay.query_order(no, Priority::Settling).await?;
                match report.status {
                    OrderStatus::Success | OrderStatus::Refund => {
                        return self.paid_instead(order, &report, source).await;
                    }
                    OrderStatus::Payerror => return self.payerror_instead(order, &report, source).await,
                    // NOTPAY right after a 204 is WeChat's view lagging its own close: the
                    // close succeeded, and no payment can follow it.
                    status => format!("close:204+query:{status}"),
                }
            }
            Ok(()) => "close:204".to_owned(),
            // WeChat never saw it (prepay failed): nothing to close there, nothing to pay.
            Err(err) if err.is_not_found() => format!("close:{}", err.code().unwrap_or("not-found")),
            Err(err) => {
                let report = match self.pay.query_order(no, priority).await {
                    Ok(report) => report,
                    Err(query_err) => {
                        tracing::warn!(order.out_trade_no = %no, error = %query_err, "close failed and the order could not be queried; not recorded as closed");
                        return Err(err.into());
                    }
                };
                match report.status {
                    OrderStatus::Success | OrderStatus::Refund => {
                        return self.paid_instead(order, &report, source).await;
                    }
                    OrderStatus::Closed => format!("close:{}+query:CLOSED", err.code().unwrap_or(err.outcome())),
                    OrderStatus::Payerror => return self.payerror_instead(order, &report, source).await,
                    // Still open at WeChat: the close did not happen; the caller retries it.
                    OrderStatus::Notpay => return Err(err.into()),
                }
            }
        };
        let evidence = Evidence::new(source, reference);
        match self.transition(order, OrderStatus::Closed, &evidence, why).await? {
            TransitionOutcome::NotApplied { current, .. } if current != OrderStatus::Closed => {
                Ok(CloseOutcome::NotOpen(current))
            }
            _ => Ok(CloseOutcome::Closed),
        }
    }

    /// The close found the payment failed at WeChat: recorded as PAYERROR, not CLOSED.
    async fn payerror_instead(
        &self,
        order: &Order,
        report: &PaymentReport,
        source: EventSource,
    ) -> Result<CloseOutcome, SyncError> {
        self.settle_from(order, Some(report), &format!("query-after-close-{source}")).await?;
        Ok(CloseOutcome::NotOpen(OrderStatus::Payerror))
    }

    /// The close found the order paid: the payment is recorded through the applier (the same
    /// path as a poll), so amount and payer are checked as always.
    async fn paid_instead(
        &self,
        order: &Order,
        report: &PaymentReport,
        source: EventSource,
    ) -> Result<CloseOutcome, SyncError> {
        let how = format!("query-after-close-{source}");
        self.settle_from(order, Some(report), &how).await?;
        Ok(CloseOutcome::AlreadyPaid)
    }

    async fn transition(
        &self,
        order: &Order,
        to: OrderStatus,
        evidence: &Evidence,
        note: &str,
    ) -> Result<TransitionOutcome, StorageError> {
        let now_ms = self.clock.now_ms();
        let mut tx = self.db.begin().await?;
        let request = TransitionRequest {
            out_trade_no: &order.out_trade_no,
            to,
            evidence,
            transaction_id: None,
            paid_at_ms: None,
            note: Some(note),
            now_ms,
        };
        let outcome = self.db.transition(&mut tx, &request).await?;
        tx.commit().await?;
        if matches!(outcome, TransitionOutcome::Applied { .. }) {
            self.metrics.order_transitions.with_label_values(&[to.as_str(), evidence.source.as_str()]).inc();
            tracing::info!(order.out_trade_no = %order.out_trade_no, to = %to, source = %evidence.source, evidence = %evidence.reference, "order status changed");
        }
        Ok(outcome)
    }

    /// The owner asks for the order's status: for an unpaid order, ask WeChat first, at most
    /// once per order per `client_sync_cache_ms` however many requests arrive together (they
    /// wait for the one call). A failed call leaves the stored status, which is still honest.
    pub async fn refresh(&self, order: Order) -> Result<Order, StorageError> {
        if !order.is_awaiting_payment() {
            return Ok(order);
        }
        let flight = self.flight(&order.out_trade_no);
        let mut last = flight.lock().await;
        let fresh = Duration::from_millis(self.settings.client_sync_cache_ms);
        if last.is_none_or(|at| at.elapsed() >= fresh) {
            match self.pay.query_order(&order.out_trade_no, Priority::User).await {
                Ok(report) => {
                    if let Err(err) = self.settle_from(&order, Some(&report), "client-sync").await {
                        tracing::warn!(order.out_trade_no = %order.out_trade_no, error = %err, "client sync could not apply");
                    }
                }
                Err(err) => {
                    // Say what happened: an answer (ORDER_NOT_EXIST for an order never
                    // prepaid, a refusal) is not an outage, and an outage is not an answer.
                    let what = if err.is_not_found() {
                        "client sync: WeChat does not know the order yet"
                    } else if err.retryable() {
                        "client sync: WeChat not reachable"
                    } else {
                        "client sync: WeChat refused the query"
                    };
                    tracing::info!(order.out_trade_no = %order.out_trade_no, error = %err, outcome = err.outcome(), "{what}");
                }
            }
            *last = Some(Instant::now());
        }
        drop(last);
        Ok(self.db.order_by_no(&order.out_trade_no).await?.unwrap_or(order))
    }

    fn flight(&self, out_trade_no: &OutTradeNo) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if flights.len() >= MAX_FLIGHTS {
            let fresh = Duration::from_millis(self.settings.client_sync_cache_ms);
            // Entries nobody holds whose cache has lapsed carry no information any more.
            flights.retain(|_, f| {
                Arc::strong_count(f) > 1 || f.try_lock().map_or(true, |at| at.is_some_and(|t| t.elapsed() < fresh))
            });
        }
        Arc::clone(flights.entry(out_trade_no.clone()).or_default())
    }
}
