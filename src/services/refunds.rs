//! Refunds: an operator refunds part or all of a paid order (never more than what is left);
//! the application goes to WeChat with an out_refund_no that stays the same on every retry, and
//! the outcome arrives by notification (`REFUND.*`, through the inbox like payments) or by the
//! poller's `check_refund` job, whichever comes first. Money moves on our side only when WeChat
//! says SUCCESS (`storage::refunds::apply_refund_success`).

use crate::clock::Clock;
use crate::config::PollSettings;
use crate::domain::EventSource;
use crate::domain::time::parse_rfc3339;
use crate::storage::refunds::{RefundOutcome, RefundRefusal, RefundRow};
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;
use crate::wechat::wire::refund::{Refund, RefundRequest, RefundRequestAmount};
use crate::wechat::{PayClient, WechatError};

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("no such order")]
    NoOrder,
    #[error("order is {0}: only paid orders can be refunded")]
    NotPaid(String),
    #[error("refund of {0} fen is more than the {1} fen left to refund")]
    TooMuch(i64, i64),
    #[error("amount must be a positive number of fen")]
    BadAmount,
    #[error("out_refund_no must be 1-64 characters of 0-9 A-Z a-z _ - | * @")]
    BadRefundNo,
    #[error("out_refund_no {0} is already used for another refund")]
    RefundNoReused(String),
    #[error("WeChat refused the refund: {0}")]
    Refused(WechatError),
    #[error(transparent)]
    Wechat(#[from] WechatError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, Clone)]
pub struct RefundService {
    db: Db,
    pay: PayClient,
    clock: Clock,
    notify_url: String,
    poll: PollSettings,
    grace_ms: i64,
    metrics: Metrics,
}

impl RefundService {
    pub fn new(
        db: Db,
        pay: PayClient,
        clock: Clock,
        notify_url: String,
        poll: PollSettings,
        grace_secs: u64,
        metrics: Metrics,
    ) -> Self {
        let grace_ms = i64::try_from(grace_secs).unwrap_or(60).saturating_mul(1000);
        Self { db, pay, clock, notify_url, poll, grace_ms, metrics }
    }

    /// Records the refund, then applies for it at WeChat. If WeChat cannot be reached the
    /// refund stays REQUESTED and the poller applies again (same out_refund_no).
    /// `out_refund_no`, when the caller gives one, makes the request idempotent: asking again
    /// with the same number (after a timeout, say) returns the refund already recorded.
    pub async fn request(
        &self,
        out_trade_no: &str,
        amount_fen: i64,
        reason: Option<&str>,
        out_refund_no: Option<&str>,
    ) -> Result<RefundRow, RefundError> {
        if amount_fen <= 0 {
            return Err(RefundError::BadAmount);
        }
        let now = self.clock.now();
        let now_ms = now.timestamp_millis();
        let out_refund_no = match out_refund_no {
            Some(no) => {
                let valid = !no.is_empty()
                    && no.len() <= 64
                    && no.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b));
                if !valid {
                    return Err(RefundError::BadRefundNo);
                }
                if let Some(existing) = self.db.refund_by_no(no).await? {
                    if existing.out_trade_no == out_trade_no && existing.amount_fen == amount_fen {
                        return Ok(existing);
                    }
                    return Err(RefundError::RefundNoReused(no.to_owned()));
                }
                no.to_owned()
            }
            None => format!("R{}{:08X}", now.format("%Y%m%d%H%M%S"), rand::random::<u32>()),
        };
        let row = match self
            .db
            .insert_refund(out_trade_no, &out_refund_no, amount_fen, reason, now_ms, now_ms + self.grace_ms)
            .await?
        {
            Ok(row) => row,
            Err(refusal) => {
                self.metrics.refunds.with_label_values(&["refused"]).inc();
                return Err(match refusal {
                    RefundRefusal::NoOrder => RefundError::NoOrder,
                    RefundRefusal::NotPaid(status) => RefundError::NotPaid(status),
                    RefundRefusal::TooMuch(asked, left) => RefundError::TooMuch(asked, left),
                });
            }
        };
        self.metrics.refunds.with_label_values(&["requested"]).inc();
        tracing::info!(order.out_trade_no = out_trade_no, refund.out_refund_no = %row.out_refund_no, refund.amount_fen = amount_fen, "refund requested");
        match self.apply_at_wechat(&row).await {
            Ok(refund) => self.act(&row, &refund, EventSource::Api, "refund-apply").await?,
            Err(err) if err.retryable() || !refused_by_wechat(&err) => {
                // Not reached, or an answer we could not read: the outcome is unknown, so the
                // refund stays REQUESTED and the poller asks WeChat (and applies again if needed).
                tracing::warn!(refund.out_refund_no = %row.out_refund_no, error = %err, "refund outcome unknown; the poller follows it up");
            }
            Err(err) => {
                let mut tx = self.db.begin().await?;
                self.db.finish_refund_unpaid(&mut tx, &row.out_refund_no, "CLOSED", self.clock.now_ms()).await?;
                tx.commit().await.map_err(StorageError::from)?;
                self.metrics.refunds.with_label_values(&["refused"]).inc();
                return Err(RefundError::Refused(err));
            }
        }
        Ok(self.db.refund_by_no(&row.out_refund_no).await?.unwrap_or(row))
    }

    async fn apply_at_wechat(&self, row: &RefundRow) -> Result<Refund, WechatError> {
        let order = self.db.order_by_no(&row.out_trade_no).await.ok().flatten();
        let total = order.as_ref().map_or(row.amount_fen, |o| o.amount_fen);
        let request = RefundRequest {
            transaction_id: order.and_then(|o| o.transaction_id),
            out_trade_no: row.out_trade_no.clone(),
            out_refund_no: row.out_refund_no.clone(),
            reason: row.reason.clone(),
            notify_url: Some(self.notify_url.clone()),
            amount: RefundRequestAmount { refund: row.amount_fen, total, currency: "CNY".into() },
        };
        self.pay.refund(&request).await
    }

    /// The poller's check of an unfinished refund.
    pub async fn check(&self, out_refund_no: &str) -> Result<(), RefundError> {
        let Some(row) = self.db.refund_by_no(out_refund_no).await? else {
            return Err(RefundError::Storage(StorageError::NotFound));
        };
        if !matches!(row.status.as_str(), "REQUESTED" | "PROCESSING") {
            return Ok(());
        }
        let refund = match self.pay.query_refund(out_refund_no).await {
            Ok(refund) => refund,
            // The application never reached WeChat: apply again (same number, idempotent).
            Err(err) if err.code() == Some("RESOURCE_NOT_EXISTS") && row.status == "REQUESTED" => {
                match self.apply_at_wechat(&row).await {
                    Ok(refund) => refund,
                    Err(err) if refused_by_wechat(&err) => {
                        let mut tx = self.db.begin().await?;
                        self.db
                            .finish_refund_unpaid(&mut tx, &row.out_refund_no, "CLOSED", self.clock.now_ms())
                            .await?;
                        tx.commit().await.map_err(StorageError::from)?;
                        self.metrics.refunds.with_label_values(&["refused"]).inc();
                        tracing::error!(refund.out_refund_no = %row.out_refund_no, error = %err, "WeChat refused the refund");
                        return Ok(());
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Err(err) => return Err(err.into()),
        };
        self.act(&row, &refund, EventSource::Poll, "refund-query").await
    }

    /// Records what WeChat says about a refund.
    async fn act(&self, row: &RefundRow, refund: &Refund, source: EventSource, how: &str) -> Result<(), RefundError> {
        let now_ms = self.clock.now_ms();
        let evidence = format!("{how}:{}", refund.refund_id);
        match refund.status.as_str() {
            "SUCCESS" => {
                let success_ms =
                    refund.success_time.as_deref().and_then(parse_rfc3339).map_or(now_ms, |t| t.timestamp_millis());
                let mut tx = self.db.begin().await?;
                let outcome = self
                    .db
                    .apply_refund_success(
                        &mut tx,
                        &row.out_refund_no,
                        &refund.refund_id,
                        refund.amount.refund,
                        success_ms,
                        source,
                        &evidence,
                        now_ms,
                    )
                    .await?;
                tx.commit().await.map_err(StorageError::from)?;
                self.count(&outcome, source);
            }
            "CLOSED" | "ABNORMAL" => {
                let mut tx = self.db.begin().await?;
                let changed = self.db.finish_refund_unpaid(&mut tx, &row.out_refund_no, &refund.status, now_ms).await?;
                tx.commit().await.map_err(StorageError::from)?;
                if changed {
                    let event = if refund.status == "CLOSED" { "closed" } else { "abnormal" };
                    self.metrics.refunds.with_label_values(&[event]).inc();
                    tracing::warn!(refund.out_refund_no = %row.out_refund_no, status = %refund.status, "refund did not go through");
                }
            }
            _ => {
                let delay = i64::try_from(self.poll.delay_after(row.check_attempts + 1).as_millis()).unwrap_or(60_000);
                let next = now_ms.saturating_add(if row.status == "REQUESTED" { self.grace_ms } else { delay });
                self.db
                    .update_refund_pending(
                        &row.out_refund_no,
                        "PROCESSING",
                        Some(&refund.refund_id),
                        Some(next),
                        now_ms,
                        source == EventSource::Poll,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    fn count(&self, outcome: &RefundOutcome, source: EventSource) {
        if *outcome == RefundOutcome::Applied {
            self.metrics.refunds.with_label_values(&["succeeded"]).inc();
            self.metrics.order_transitions.with_label_values(&["REFUND", source.as_str()]).inc();
        }
    }
}

/// WeChat answered the application with a business refusal (4xx, e.g. not enough balance): no
/// refund exists, so ours can be closed. Anything else leaves the outcome unknown.
fn refused_by_wechat(err: &WechatError) -> bool {
    matches!(err, WechatError::Api { status, .. } if (400..500).contains(status) && !err.retryable())
}
