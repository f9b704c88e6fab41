//! The simulator's fault-injection knobs, as settings (`[sim.chaos]`) and as the body of
//! `PUT /sim/chaos`. Only the shape and its validation live here; `sim::chaos` acts on them.
//! They are configuration, so they sit with the rest of the settings tree: `config` stays a
//! leaf that imports nothing above it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::domain::RefundStatus;

/// A way a `/v3` call can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// 502 with a plain-text body, as a gateway in front of WeChat answers.
    ServerError,
    /// 500 `SYSTEM_ERROR`.
    SystemError,
    /// 429 `FREQUENCY_LIMITED`.
    FrequencyLimited,
    /// No answer for `hang_ms` (longer than the client's timeout), then a 500.
    Hang,
    /// A 200 whose signature does not verify.
    BadSignature,
    /// 400 `PARAM_ERROR`: final, retrying cannot help.
    ParamError,
}

/// The chaos knobs; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Chaos {
    /// Share of `/v3` calls (0..=1) answered with one of `fault_modes` (picked uniformly).
    pub fault_rate: f64,
    pub fault_modes: Vec<FaultMode>,
    /// Endpoints faults apply to (`jsapi`, `query`, `close`, `tradebill`, `billdownload`);
    /// empty means all.
    pub fault_endpoints: Vec<String>,
    /// How long a `hang` fault holds the connection.
    pub hang_ms: u64,
    /// Share of notifications never sent.
    pub drop_rate: f64,
    /// Share of notifications sent twice.
    pub duplicate_rate: f64,
    /// Each notification's first delivery is delayed by a uniform draw below this.
    pub max_delay_ms: u64,
    /// Deliver each batch of notifications in a seeded random order.
    pub reorder: bool,
    /// How refunds end: `SUCCESS` (default), `CLOSED` or `ABNORMAL` (announced as `REFUND.<status>`).
    pub refund_outcome: Option<String>,
    /// Refund applications are refused `403 NOT_ENOUGH` (the merchant's balance cannot cover them).
    pub refund_not_enough: bool,
    /// Share of signed answers and notification deliveries (0..=1) carrying one of WeChat's
    /// deliberate wrong signatures, `WECHATPAY/SIGNTEST/…` (protocol §2.5): a merchant that
    /// verifies refuses them; the call is retried, the notification delivered again.
    pub signature_probe_rate: f64,
    /// Reseeds the simulator's generator when set through the control endpoint.
    pub seed: Option<u64>,
    /// What is wrong with the trade bills served from now on.
    pub bill: BillChaos,
    /// Share of `jscode2session` calls (0..=1) answered with one of `login_fault_codes`.
    pub login_fault_rate: f64,
    /// WeChat login errors to inject, picked uniformly: `-1` (busy), `45011` (minute quota),
    /// `40226` (high-risk user). The code is not consumed, as when WeChat is busy.
    pub login_fault_codes: Vec<i64>,
}

/// The login errors `login_fault_codes` may name: the ones a healthy configuration still
/// meets (a bad appid or secret is configured, not injected).
pub const LOGIN_FAULT_CODES: [i64; 3] = [-1, 45011, 40226];

/// Trade-bill faults: each knob plants one class of discrepancy between the bill and the
/// orders WeChat really holds, so the reconciler can be shown to find (and only find) it.
/// The summary is computed after the row knobs, so a changed row does not also show up as a
/// summary mismatch; only `summary_delta_fen` makes the summary disagree with the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillChaos {
    /// `out_trade_no`s whose rows are left out (a payment WeChat "forgot").
    pub omit_rows: Vec<String>,
    /// Added to the row's settlement and order amounts, in fen (an amount mismatch).
    pub amount_delta_fen: HashMap<String, i64>,
    /// `out_trade_no`s whose rows appear twice.
    pub duplicate_rows: Vec<String>,
    /// Replaces the row's `trade_state` (e.g. `REVOKED`).
    pub status_override: HashMap<String, String>,
    /// Added to the refund amount of the REFUND row of this `out_refund_no` (a refund mismatch).
    pub refund_delta_fen: HashMap<String, i64>,
    /// Added to the summary's settlement total only (a file that contradicts itself).
    pub summary_delta_fen: i64,
    /// Damage to the file or its advertised hash.
    pub corrupt: Option<BillCorruption>,
    /// A day without trades answers `STATEMENT_CREATING` (all day, every time) instead of
    /// `NO_STATEMENT_EXIST`, as WeChat sometimes does.
    pub empty_day_creating: bool,
    /// The first download of each day's bill fails with a 502 (whichever token it uses); the
    /// client must apply for the bill again and download with the new URL.
    pub fail_first_download: bool,
    /// How long a download URL works (s), within WeChat's documented 30..=300; 300 when unset.
    pub token_ttl_secs: Option<u64>,
}

/// Ways a bill download can be damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillCorruption {
    /// The advertised `hash_value` does not match the file.
    Hash,
    /// The download stops halfway (the gzip stream, when gzip was asked for).
    Truncate,
    /// One amount on the first row reads `abc`.
    MalformedRow,
    /// The first row lacks its last column.
    ColumnCount,
}

impl Chaos {
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("fault_rate", self.fault_rate),
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("signature_probe_rate", self.signature_probe_rate),
            ("login_fault_rate", self.login_fault_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0..=1, got {rate}"));
            }
        }
        let final_outcome = |o: &str| o.parse::<RefundStatus>().is_ok_and(|s| !s.is_open());
        if self.refund_outcome.as_deref().is_some_and(|o| !final_outcome(o)) {
            return Err("refund_outcome must be SUCCESS, CLOSED or ABNORMAL".into());
        }
        if self.bill.token_ttl_secs.is_some_and(|t| !(30..=300).contains(&t)) {
            return Err("bill.token_ttl_secs must be within 30..=300 (WeChat's documented validity)".into());
        }
        if self.fault_rate > 0.0 && self.fault_modes.is_empty() {
            return Err("fault_rate > 0 needs at least one fault_modes entry".into());
        }
        if let Some(code) = self.login_fault_codes.iter().find(|c| !LOGIN_FAULT_CODES.contains(c)) {
            return Err(format!("login_fault_codes: {code} is not one of {LOGIN_FAULT_CODES:?}"));
        }
        if self.login_fault_rate > 0.0 && self.login_fault_codes.is_empty() {
            return Err("login_fault_rate > 0 needs at least one login_fault_codes entry".into());
        }
        Ok(())
    }
}
