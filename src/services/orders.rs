//! Ordering: price from our catalog (never from the client), a NOTPAY order stored first, then
//! a JSAPI prepay with the same out_trade_no on every attempt, then the signed parameters
//! `wx.requestPayment` needs.
//!
//! Creation is bounded by a deadline below the HTTP request timeout, counted from the request's
//! arrival: prepay attempts stop when the next one could not finish in time, and everything
//! after the order is stored (prepay, recording the prepay_id) is cut at the deadline, so once
//! an order exists the client always gets an answer from us (503 `PAYMENT_UNAVAILABLE` with the
//! `out_trade_no` to retry payment with) rather than the bare 503 of the timeout layer, which
//! would leave it without the order number.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::Clock;
use crate::config::OrderSettings;
use crate::domain::wechat_text::{self, DESCRIPTION_MAX_BYTES};
use crate::domain::{Order, OrderStatus, OutTradeNo};
use crate::storage::orders::NewOrder;
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;
use crate::wechat::ratelimit::Priority;
use crate::wechat::{Credentials, PayClient, WechatError, sign};

use super::quota::{Quotas, Refusal};

/// Attempts at prepay within one API request (the call is idempotent for identical parameters).
const PREPAY_ATTEMPTS: u32 = 3;
const PREPAY_RETRY_BASE: Duration = Duration::from_millis(150);
/// Without a configured deadline (tools, tests of the service alone): WeChat's 5 s timeout × 3
/// attempts and backoff, as before.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);
/// An attempt is only started with at least this much time left: less cannot hold a round trip
/// to WeChat, and its timeout would leave the outcome unknown for nothing.
const MIN_ATTEMPT: Duration = Duration::from_millis(300);
pub const MAX_QUANTITY: i64 = 99;

/// What `wx.requestPayment` takes, field names as the mini-program API spells them.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentParams {
    #[serde(rename = "appId")]
    pub app_id: String,
    #[serde(rename = "timeStamp")]
    pub time_stamp: String,
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    pub package: String,
    #[serde(rename = "signType")]
    pub sign_type: &'static str,
    #[serde(rename = "paySign")]
    pub pay_sign: String,
}

#[derive(Debug)]
pub struct CreatedOrder {
    pub order: Order,
    pub payment: PaymentParams,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("unknown product {0:?}")]
    UnknownProduct(String),
    #[error("quantity must be between 1 and {MAX_QUANTITY}")]
    BadQuantity,
    /// The order exists (NOTPAY) but WeChat could not be reached; the client may retry
    /// with `POST /api/orders/{no}/payment` and the poller settles it either way.
    #[error("payment provider unavailable for order {out_trade_no}: {why}")]
    PaymentUnavailable { out_trade_no: String, why: Unavailable },
    #[error("WeChat refused the order: {0}")]
    Refused(WechatError),
    #[error("order {0} can no longer be paid")]
    NotPayable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error(transparent)]
    Limited(#[from] Refusal),
}

/// Why a prepay did not succeed in time, for the log line (the client sees only the 503).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error(transparent)]
    Wechat(WechatError),
    #[error("no answer from WeChat within the order deadline ({0:?})")]
    Deadline(Duration),
    /// The order is stored but its prepay_id could not be recorded.
    #[error(transparent)]
    Storage(StorageError),
}

impl Unavailable {
    /// When the client may try again: the budget's own estimate when it refused, else soon.
    pub fn retry_after(&self) -> Duration {
        match self {
            Unavailable::Wechat(err) => err.busy_retry_after().unwrap_or(Duration::from_secs(2)),
            Unavailable::Deadline(_) | Unavailable::Storage(_) => Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OrderService {
    db: Db,
    pay: PayClient,
    creds: Arc<Credentials>,
    clock: Clock,
    settings: OrderSettings,
    notify_url: String,
    metrics: Metrics,
    quotas: Option<Quotas>,
    deadline: Duration,
}

impl OrderService {
    pub fn new(
        db: Db,
        pay: PayClient,
        clock: Clock,
        settings: OrderSettings,
        notify_url: String,
        metrics: Metrics,
    ) -> Self {
        let creds = Arc::new(pay.credentials().clone());
        Self { db, pay, creds, clock, settings, notify_url, metrics, quotas: None, deadline: DEFAULT_DEADLINE }
    }

    /// Order creation obeys the per-user quotas and the cap on open orders.
    #[must_use]
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// Prepay (within creation or "pay again") gives up this long after the request started:
    /// `server.request_timeout_ms` minus `orders.deadline_margin_ms`.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// A request that makes us ask WeChat for `user_id` (status sync, pay again, cancel):
    /// refused when the user's quota is spent.
    pub fn allow_request(&self, user_id: i64) -> Result<(), Refusal> {
        self.quotas.as_ref().map_or(Ok(()), |q| q.order_request(user_id))
    }

    /// Creates an order for `quantity` of `product_id` and returns the payment parameters;
    /// `started` is when the request arrived, which the deadline counts from.
    pub async fn create(
        &self,
        user_id: i64,
        product_id: &str,
        quantity: i64,
        started: Instant,
    ) -> Result<CreatedOrder, OrderError> {
        let deadline = started + self.deadline;
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(OrderError::BadQuantity);
        }
        if let Some(quotas) = &self.quotas {
            quotas.create_order(user_id)?;
            if quotas.caps_open_orders() {
                // A soft cap: creations racing each other may pass it by the create burst at most.
                quotas.open_orders(self.db.open_orders_of(user_id, self.clock.now_ms()).await?)?;
            }
        }
        // Independent reads: one round trip of latency instead of two.
        let (user, product) = tokio::try_join!(self.db.user(user_id), self.db.active_product(product_id))?;
        let product = product.ok_or_else(|| OrderError::UnknownProduct(product_id.to_owned()))?;
        let amount = product.price.checked_mul(quantity).ok_or(OrderError::BadQuantity)?;
        let now = self.clock.now();
        let now_ms = now.timestamp_millis();
        let out_trade_no = OutTradeNo::generate(now, &mut rand::rng());
        let description = wechat_description(&format!("{}{}", self.settings.description_prefix, product.name));
        let expire_ms = secs_to_ms(self.settings.time_expire_secs);
        let grace_ms = secs_to_ms(self.settings.poll_grace_secs);
        let order = self
            .db
            .insert_order(&NewOrder {
                out_trade_no: &out_trade_no,
                user_id: user.id,
                payer_openid: &user.openid,
                product_id: &product.id,
                quantity,
                amount,
                description: &description,
                time_expire_ms: now_ms.saturating_add(expire_ms),
                first_check_at_ms: now_ms.saturating_add(grace_ms),
                now_ms,
            })
            .await?;
        self.metrics.orders_created.inc();
        tracing::info!(order.out_trade_no = %order.out_trade_no, order.amount_fen = order.amount.0, "order created");
        let (stored, payment) = self.prepay_by(&order, deadline).await?;
        Ok(CreatedOrder { order: stored.unwrap_or(order), payment })
    }

    /// (Re)issues payment parameters for an unpaid order: prepay again with identical
    /// parameters (WeChat answers a fresh prepay_id) rather than a new order number; `started`
    /// is when the request arrived.
    pub async fn request_payment(&self, order: &Order, started: Instant) -> Result<PaymentParams, OrderError> {
        // An order whose first prepay failed is left out of the open-orders count; the prepay
        // that would make it count is held to the cap here like a new order, or failed prepays
        // would be a way around it.
        if let Some(quotas) = self.quotas.as_ref().filter(|q| q.caps_open_orders() && order.prepay_id.is_none()) {
            quotas.open_orders(self.db.open_orders_of(order.user_id, self.clock.now_ms()).await?)?;
        }
        Ok(self.prepay_by(order, started + self.deadline).await?.1)
    }

    /// [`Self::prepay`] cut at `deadline` whatever it is waiting for (WeChat, the database): the
    /// order exists, so the answer must carry its number, never be the timeout layer's.
    async fn prepay_by(&self, order: &Order, deadline: Instant) -> Result<(Option<Order>, PaymentParams), OrderError> {
        let unavailable = |why| OrderError::PaymentUnavailable { out_trade_no: order.out_trade_no.to_string(), why };
        match tokio::time::timeout_at(deadline.into(), self.prepay(order, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(Unavailable::Deadline(self.deadline))),
        }
    }

    /// Prepay at WeChat (retrying what may be retried while `deadline` allows), record the
    /// prepay_id, sign the payment parameters; also returns the order as stored after the
    /// prepay_id was recorded.
    async fn prepay(&self, order: &Order, deadline: Instant) -> Result<(Option<Order>, PaymentParams), OrderError> {
        if !order.is_payable(self.clock.now_ms()) {
            return Err(OrderError::NotPayable(order.out_trade_no.to_string()));
        }
        let unavailable = |why| OrderError::PaymentUnavailable { out_trade_no: order.out_trade_no.to_string(), why };
        let mut attempt = 1;
        let prepay_id = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // An attempt cut by the deadline has an unknown outcome: the order stays NOTPAY, the
            // client retries payment with the same out_trade_no, and the poller settles it.
            let outcome = match tokio::time::timeout(left, self.pay.prepay(order, &self.notify_url)).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(unavailable(Unavailable::Deadline(self.deadline))),
            };
            match outcome {
                Ok(prepay) => break prepay,
                // Our own budget refused it: another attempt now would be refused too.
                Err(err) if err.busy_retry_after().is_some() => return Err(unavailable(Unavailable::Wechat(err))),
                Err(err) if err.retryable() && attempt < PREPAY_ATTEMPTS => {
                    let pause = PREPAY_RETRY_BASE * 2u32.pow(attempt);
                    if Instant::now() + pause + MIN_ATTEMPT > deadline {
                        return Err(unavailable(Unavailable::Wechat(err)));
                    }
                    tracing::warn!(order.out_trade_no = %order.out_trade_no, error = %err, attempt, "prepay failed, retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(err) if err.retryable() => return Err(unavailable(Unavailable::Wechat(err))),
                Err(err) => return Err(OrderError::Refused(err)),
            }
        };
        // WeChat has the order: failing to record its prepay_id leaves it payable by retrying
        // payment, so that failure is "payment unavailable, retry", with the order's number.
        let recorded = self.db.set_prepay(order.id, &prepay_id, self.clock.now_ms()).await;
        let Some(stored) = recorded.map_err(|err| unavailable(Unavailable::Storage(err)))? else {
            // Closed (or paid) while the prepay was in flight: a close that found no order at
            // WeChat may have run just before this prepay created it there. No parameters are
            // handed out, and WeChat's copy is closed again so nobody can pay it.
            let now = self.db.order_by_no(&order.out_trade_no).await?;
            if now.is_some_and(|o| o.status == OrderStatus::Closed) {
                self.close_reopened(order.out_trade_no.clone());
            }
            return Err(OrderError::NotPayable(order.out_trade_no.to_string()));
        };
        Ok((Some(stored), self.payment_params(&prepay_id)?))
    }

    /// Closes at WeChat an order a late prepay reopened there, in a task of its own: at settling
    /// priority it may wait for the budget longer than the request may last, and the request's
    /// timeout must not cancel it half-way.
    fn close_reopened(&self, out_trade_no: OutTradeNo) {
        let pay = self.pay.clone();
        tokio::spawn(async move {
            if let Err(err) = pay.close_order(&out_trade_no, Priority::Settling).await {
                tracing::warn!(order.out_trade_no = %out_trade_no, error = %err, "could not close the order a late prepay reopened at WeChat");
            }
        });
    }

    /// Signs the four `paySign` lines with the merchant key (inline: see
    /// [`sign::RsaSigner::sign_blocking`] for why).
    pub fn payment_params(&self, prepay_id: &str) -> Result<PaymentParams, OrderError> {
        let time_stamp = self.clock.now().timestamp();
        let nonce_str = sign::nonce(32);
        let package = format!("prepay_id={prepay_id}");
        let message = sign::pay_sign_message(&self.creds.appid, time_stamp, &nonce_str, &package);
        let pay_sign =
            self.creds.merchant.signer.sign(message.as_bytes()).map_err(|e| OrderError::Sign(e.to_string()))?;
        Ok(PaymentParams {
            app_id: self.creds.appid.clone(),
            time_stamp: time_stamp.to_string(),
            nonce_str,
            package,
            sign_type: "RSA",
            pay_sign,
        })
    }

    /// The order if it belongs to `user_id`; another user's order is indistinguishable from a
    /// missing one.
    pub async fn get_for_user(&self, user_id: i64, out_trade_no: &str) -> Result<Option<Order>, StorageError> {
        let Ok(no) = OutTradeNo::parse(out_trade_no) else {
            return Ok(None);
        };
        Ok(self.db.order_by_no(&no).await?.filter(|o| o.user_id == user_id))
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}

/// WeChat takes at most 127 UTF-8 *bytes* of 1-3-byte characters (see `domain::wechat_text`):
/// a product name of 50 CJK characters is cut to 42 rather than refused forever.
/// Commas, backticks and line breaks become spaces: WeChat's bill has no quoting, and the
/// description comes back in it as 商品名称.
fn wechat_description(text: &str) -> String {
    let unquoted: String = text.chars().map(|c| if matches!(c, ',' | '`' | '\r' | '\n') { ' ' } else { c }).collect();
    wechat_text::fit(&unquoted, DESCRIPTION_MAX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_is_trimmed_to_wechat_rules() {
        assert_eq!(wechat_description("咖啡豆 250g ☕"), "咖啡豆 250g ☕");
        assert_eq!(wechat_description("mug 🍵"), "mug ");
        assert_eq!(wechat_description(&"x".repeat(300)).len(), 127);
        assert_eq!(wechat_description("beans, 250g\n`dark`"), "beans  250g  dark ");
    }

    #[test]
    fn a_long_chinese_name_fits_in_127_bytes() {
        let description = wechat_description(&"茶".repeat(50));
        assert!(description.len() <= 127, "{} bytes", description.len());
        assert_eq!(description, "茶".repeat(42));
    }
}
