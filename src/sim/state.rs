//! The simulated WeChat's memory: login codes, orders, notification deliveries.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::wechat::wire::pay::JsapiPrepayRequest;

use super::chaos::CallRecord;

/// A `wx.login` code handed to a (simulated) mini-program.
#[derive(Debug, Clone)]
pub struct LoginCode {
    pub openid: String,
    pub issued_at: DateTime<Utc>,
    pub used: bool,
}

/// WeChat's view of one order.
#[derive(Debug, Clone, Serialize)]
pub struct SimOrder {
    pub request: JsapiPrepayRequest,
    pub prepay_id: String,
    pub created_at: DateTime<Utc>,
    pub time_expire: Option<DateTime<Utc>>,
    pub trade_state: String,
    pub transaction_id: Option<String>,
    pub success_time: Option<DateTime<Utc>>,
}

/// One notification and what happened to each delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationRecord {
    pub id: String,
    pub out_trade_no: String,
    pub event_type: String,
    pub notify_url: String,
    /// HTTP status of each attempt (0: no answer / timeout).
    pub attempts: Vec<u16>,
    pub delivered: bool,
    pub gave_up: bool,
    /// Chaos dropped it: never sent.
    pub dropped: bool,
}

#[derive(Debug, Default)]
pub struct SimState {
    pub codes: HashMap<String, LoginCode>,
    pub orders: HashMap<String, SimOrder>,
    pub notifications: Vec<NotificationRecord>,
    pub next_transaction: u64,
    /// Refunds by out_refund_no.
    pub refunds: HashMap<String, super::refunds::SimRefund>,
    /// Every `/v3` call, in arrival order.
    pub calls: Vec<CallRecord>,
    /// Bill files behind their download tokens (dropped once expired).
    pub bill_downloads: HashMap<String, super::bills::IssuedBill>,
    /// The openids jscode2session answered under this appid: the only payers JSAPI accepts
    /// (any other is `OPENID_MISMATCH`, see `sim::pay`).
    pub openids: HashSet<String>,
    /// When the latest prepay_id of each order (by out_trade_no) was issued: it opens the
    /// payment sheet for 2 hours. Orders seeded through `/sim/orders` have none (never stale).
    pub prepay_issued_at: HashMap<String, DateTime<Utc>>,
    /// Days whose first bill download chaos `fail_first_download` already failed.
    pub bill_download_failed_days: std::collections::HashSet<chrono::NaiveDate>,
}
