//! Refunds: an operator refunds part or all of a paid order (never more than what is left,
//! `domain::refund::check_refund`, checked under the order's lock); the application goes to
//! WeChat with an out_refund_no that stays the same on every retry, and the outcome arrives by
//! notification (`REFUND.*`, through the inbox like payments) or by the poller's
//! `check_refund` job, whichever comes first. Either way the outcome goes through the one
//! applier (`Applier::apply_refund`): money moves on our side only when WeChat says SUCCESS.

use crate::clock::Clock;
use crate::config::PollSettings;
use crate::domain::refund::{RefundRefusal, check_refund};
use crate::domain::{EventSource, Evidence, Fen, OutRefundNo, OutTradeNo, Refund, RefundReport, RefundStatus};
use crate::storage::refunds::{NewRefund, RefundFacts, RefundPending};
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;
use crate::wechat::client::RefundApplication;
use crate::wechat::{PayClient, WechatError};

use super::apply::{Applier, ApplyOutcome};

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("no such order")]
    NoOrder,
    #[error(transparent)]
    Refused(#[from] RefundRefusal),
    #[error("{0}")]
    BadRefundNo(String),
    #[error("out_refund_no {0} is already used for another refund")]
    RefundNoReused(String),
    #[error("WeChat refused the refund: {0}")]
    RefusedByWechat(WechatError),
    #[error(transparent)]
    Wechat(#[from] WechatError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What an operator asks for.
#[derive(Debug, Clone)]
pub struct RefundRequest<'a> {
    pub out_trade_no: &'a str,
    pub amount: Fen,
    pub reason: Option<&'a str>,
    /// The caller's idempotency key; one is generated when absent.
    pub out_refund_no: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct RefundService {
    db: Db,
    pay: PayClient,
    applier: Applier,
    clock: Clock,
    notify_url: String,
    poll: PollSettings,
    grace_ms: i64,
    metrics: Metrics,
}

impl RefundService {
    #[expect(clippy::too_many_arguments, reason = "each dependency is distinct; built once at start-up")]
    pub fn new(
        db: Db,
        pay: PayClient,
        applier: Applier,
        clock: Clock,
        notify_url: String,
        poll: PollSettings,
        grace_secs: u64,
        metrics: Metrics,
    ) -> Self {
        let grace_ms = i64::try_from(grace_secs).unwrap_or(60).saturating_mul(1000);
        Self { db, pay, applier, clock, notify_url, poll, grace_ms, metrics }
    }

    /// Records the refund, then applies for it at WeChat. If WeChat cannot be reached the
    /// refund stays REQUESTED and the poller applies again (same out_refund_no).
    /// `out_refund_no`, when the caller gives one, makes the request idempotent: asking again
    /// with the same number (after a timeout, say, or concurrently) returns the refund
    /// already recorded.
    pub async fn request(&self, req: &RefundRequest<'_>) -> Result<Refund, RefundError> {
        if req.amount.0 <= 0 {
            return Err(RefundRefusal::BadAmount.into());
        }
        let Ok(out_trade_no) = OutTradeNo::parse(req.out_trade_no) else {
            return Err(RefundError::NoOrder);
        };
        let now = self.clock.now();
        let out_refund_no = match req.out_refund_no {
            // The same request again is answered by `record`, under the order's lock.
            Some(no) => OutRefundNo::parse(no).map_err(|e| RefundError::BadRefundNo(e.to_string()))?,
            None => OutRefundNo::generate(now, &mut rand::rng()),
        };
        let refund = match self.record(&out_trade_no, &out_refund_no, req).await {
            Ok(refund) => refund,
            // The same number recorded meanwhile by a concurrent request.
            Err(RefundError::Storage(StorageError::Conflict(_))) => {
                return self
                    .same_refund(&out_refund_no, &out_trade_no, req.amount)
                    .await?
                    .ok_or_else(|| RefundError::RefundNoReused(out_refund_no.to_string()));
            }
            Err(err) => {
                if matches!(err, RefundError::Refused(_) | RefundError::NoOrder) {
                    self.metrics.refunds.with_label_values(&["refused"]).inc();
                }
                return Err(err);
            }
        };
        self.metrics.refunds.with_label_values(&["requested"]).inc();
        tracing::info!(order.out_trade_no = %out_trade_no, refund.out_refund_no = %refund.out_refund_no, refund.amount_fen = refund.amount.0, "refund requested");
        match self.apply_at_wechat(&refund).await {
            Ok(report) => self.act(&refund, &report, EventSource::Api, "refund-apply").await?,
            Err(err) if err.retryable() || !refused_by_wechat(&err) => {
                // Not reached, or an answer we could not read: the outcome is unknown, so the
                // refund stays REQUESTED and the poller asks WeChat (and applies again if needed).
                tracing::warn!(refund.out_refund_no = %refund.out_refund_no, error = %err, "refund outcome unknown; the poller follows it up");
            }
            Err(err) => {
                self.close_refused(&refund).await?;
                return Err(RefundError::RefusedByWechat(err));
            }
        }
        Ok(self.db.refund_by_no(&refund.out_refund_no).await?.unwrap_or(refund))
    }

    /// The refund already recorded under `no`, if it is this very request; an error if the
    /// number belongs to another refund.
    async fn same_refund(
        &self,
        no: &OutRefundNo,
        out_trade_no: &OutTradeNo,
        amount: Fen,
    ) -> Result<Option<Refund>, RefundError> {
        match self.db.refund_by_no(no).await? {
            Some(existing) if existing.out_trade_no == *out_trade_no && existing.amount == amount => Ok(Some(existing)),
            Some(_) => Err(RefundError::RefundNoReused(no.to_string())),
            None => Ok(None),
        }
    }

    /// Checks the refund against what is left on the order and records it REQUESTED, under
    /// the order's lock so two refunds cannot both take the last fen.
    async fn record(
        &self,
        out_trade_no: &OutTradeNo,
        out_refund_no: &OutRefundNo,
        req: &RefundRequest<'_>,
    ) -> Result<Refund, RefundError> {
        let now_ms = self.clock.now_ms();
        let mut tx = self.db.begin().await?;
        let order = self.db.lock_order(&mut tx, out_trade_no).await?.ok_or(RefundError::NoOrder)?;
        // The same request, recorded meanwhile by a concurrent one that held this lock first:
        // answer it (its amount is already held, so the limit check would refuse it).
        if let Some(existing) = self.db.lock_refund(&mut tx, out_refund_no).await? {
            return if existing.out_trade_no == *out_trade_no && existing.amount == req.amount {
                Ok(existing)
            } else {
                Err(RefundError::RefundNoReused(out_refund_no.to_string()))
            };
        }
        let held = self.db.refunds_held(&mut tx, order.id).await?;
        check_refund(&order, held, req.amount)?;
        let new = NewRefund {
            out_refund_no,
            order_id: order.id,
            out_trade_no,
            amount: req.amount,
            reason: req.reason,
            first_check_at_ms: now_ms.saturating_add(self.grace_ms),
            now_ms,
        };
        let refund = self.db.insert_refund(&mut tx, &new).await?;
        tx.commit().await.map_err(StorageError::from)?;
        Ok(refund)
    }

    async fn apply_at_wechat(&self, refund: &Refund) -> Result<RefundReport, WechatError> {
        let order = self.db.order_by_no(&refund.out_trade_no).await.ok().flatten();
        let application = RefundApplication {
            refund,
            order_total: order.as_ref().map_or(refund.amount, |o| o.amount),
            transaction_id: order.as_ref().and_then(|o| o.transaction_id.as_ref()),
            notify_url: &self.notify_url,
        };
        self.pay.refund(&application).await
    }

    /// WeChat refused the application: no refund exists there, so ours is closed.
    async fn close_refused(&self, refund: &Refund) -> Result<(), StorageError> {
        let mut tx = self.db.begin().await?;
        self.db
            .finish_refund(&mut tx, &refund.out_refund_no, RefundStatus::Closed, None, None, self.clock.now_ms())
            .await?;
        tx.commit().await.map_err(StorageError::from)?;
        self.metrics.refunds.with_label_values(&["refused"]).inc();
        Ok(())
    }

    /// The refunds of one order (operators).
    pub async fn of_order(&self, out_trade_no: &str) -> Result<Vec<Refund>, RefundError> {
        let Ok(no) = OutTradeNo::parse(out_trade_no) else { return Err(RefundError::NoOrder) };
        let order = self.db.order_by_no(&no).await?.ok_or(RefundError::NoOrder)?;
        Ok(self.db.refunds_of_order(order.id).await?)
    }

    /// The poller's check of an unfinished refund.
    pub async fn check(&self, out_refund_no: &OutRefundNo) -> Result<(), RefundError> {
        let Some(refund) = self.db.refund_by_no(out_refund_no).await? else {
            return Err(RefundError::Storage(StorageError::NotFound));
        };
        if !RefundStatus::POLLED.contains(&refund.status) {
            return Ok(());
        }
        let report = match self.pay.query_refund(out_refund_no).await {
            Ok(report) => report,
            // The application never reached WeChat: apply again (same number, idempotent).
            Err(err) if err.is_not_found() && refund.status == RefundStatus::Requested => {
                match self.apply_at_wechat(&refund).await {
                    Ok(report) => report,
                    Err(err) if refused_by_wechat(&err) => {
                        self.close_refused(&refund).await?;
                        tracing::error!(refund.out_refund_no = %refund.out_refund_no, error = %err, "WeChat refused the refund");
                        return Ok(());
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            // A status we do not know is not a final one we know: still processing, say so.
            Err(err) if err.is_unrecognised() => {
                tracing::error!(refund.out_refund_no = %refund.out_refund_no, error = %err, "WeChat answered a refund status this version does not know; checked again later");
                return Ok(self.schedule_next_check(&refund, None, EventSource::Poll).await?);
            }
            Err(err) => return Err(err.into()),
        };
        self.act(&refund, &report, EventSource::Poll, "refund-query").await
    }

    /// Records what WeChat says about a refund: a final outcome through the applier, a refund
    /// still processing with its next check.
    async fn act(
        &self,
        refund: &Refund,
        report: &RefundReport,
        source: EventSource,
        how: &str,
    ) -> Result<(), RefundError> {
        let still_abnormal =
            matches!(report.status, RefundStatus::Abnormal | RefundStatus::Requested | RefundStatus::Processing);
        if refund.status == RefundStatus::Abnormal && still_abnormal {
            // Still waiting for an operator at WeChat (or in progress again after one acted):
            // keep what the answer told, ask again on the slow poll. SUCCESS and CLOSED end it
            // below like any refund.
            let evidence = Evidence::new(source, format!("{how}:{}", report.refund_id));
            self.applier.apply_refund(report, &evidence).await?;
            let now_ms = self.clock.now_ms();
            let next = now_ms.saturating_add(self.abnormal_recheck_ms());
            self.db.reschedule_abnormal_refund(&refund.out_refund_no, next, now_ms).await?;
            return Ok(());
        }
        if !report.status.is_open() {
            let evidence = Evidence::new(source, format!("{how}:{}", report.refund_id));
            match self.applier.apply_refund(report, &evidence).await? {
                ApplyOutcome::Applied if report.status != RefundStatus::Success => {
                    tracing::warn!(refund.out_refund_no = %refund.out_refund_no, status = %report.status, "refund did not go through");
                }
                // WeChat's answer contradicts our refund: recorded once as an anomaly; asking
                // again would only record it again. An operator's case from here.
                ApplyOutcome::Anomaly(_) => {
                    self.db.stop_refund_checks(&refund.out_refund_no, self.clock.now_ms()).await?
                }
                _ => {}
            }
            return Ok(());
        }
        Ok(self.schedule_next_check(refund, Some(report), source).await?)
    }

    /// How long an ABNORMAL refund waits between checks.
    fn abnormal_recheck_ms(&self) -> i64 {
        i64::try_from(self.poll.abnormal_refund_interval_secs).unwrap_or(1800).saturating_mul(1000)
    }

    /// Still processing at WeChat: PROCESSING, checked again on the schedule.
    async fn schedule_next_check(
        &self,
        refund: &Refund,
        report: Option<&RefundReport>,
        source: EventSource,
    ) -> Result<(), StorageError> {
        let now_ms = self.clock.now_ms();
        let delay = i64::try_from(self.poll.delay_after(refund.check_attempts + 1).as_millis()).unwrap_or(60_000);
        let wait = if refund.status == RefundStatus::Requested { self.grace_ms } else { delay };
        self.db
            .update_refund_pending(&RefundPending {
                out_refund_no: &refund.out_refund_no,
                refund_id: report.map(|r| r.refund_id.as_str()),
                next_check_at_ms: now_ms.saturating_add(wait),
                counted: source == EventSource::Poll,
                facts: RefundFacts {
                    wechat_created_at_ms: report.and_then(|r| r.created_at).map(|t| t.timestamp_millis()),
                    settled: report.and_then(|r| r.settled),
                },
                now_ms,
            })
            .await?;
        Ok(())
    }
}

/// WeChat answered the application with a final refusal (4xx, e.g. not enough balance, or a
/// final code sent with HTTP 500 such as `INVALID_TRANSACTIONID`): no refund exists, so ours
/// can be closed. Anything else leaves the outcome unknown.
fn refused_by_wechat(err: &WechatError) -> bool {
    err.is_final_refusal()
}
