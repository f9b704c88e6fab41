//! Errors of calls to WeChat, classified once: retryable (the same call may succeed later) or
//! final (retrying cannot help). Callers and jobs decide what to do; this module only labels.

use super::verify::VerifyError;

#[derive(Debug, thiserror::Error)]
pub enum WechatError {
    #[error("{endpoint}: timed out (outcome unknown)")]
    Timeout { endpoint: &'static str },
    #[error("{endpoint}: network error: {message}")]
    Network { endpoint: &'static str, message: String },
    #[error("{endpoint}: HTTP {status} {code}: {message}")]
    Api { endpoint: &'static str, status: u16, code: String, message: String },
    #[error("{endpoint}: response signature rejected: {source}")]
    Signature { endpoint: &'static str, source: VerifyError },
    #[error("{endpoint}: unexpected response: {message}")]
    Decode { endpoint: &'static str, message: String },
    /// A well-formed answer carrying a value this version does not know (a new `trade_state`,
    /// say): the caller decides what an unknown state means for it, never a guess here.
    #[error("{endpoint}: unrecognised value: {message}")]
    Unrecognised { endpoint: &'static str, message: String },
    #[error("request signing failed: {0}")]
    Sign(String),
    /// Our own call budget (`wechat::ratelimit`) could not admit the call in time: nothing
    /// was sent, so retrying later is safe.
    #[error("{endpoint}: not sent: {source}")]
    Busy { endpoint: &'static str, source: super::ratelimit::Busy },
}

/// Codes WeChat documents as transient: retry the same call with the same parameters.
/// Compared with [`same_code`], so older spellings without underscores match too.
const RETRYABLE_CODES: &[&str] = &[
    "SYSTEM_ERROR",
    "FREQUENCY_LIMITED",
    "RATELIMIT_EXCEEDED",
    "RATE_LIMITED",
    "SERVICE_UNAVAILABLE",
    "BANK_ERROR",
    "USERPAYING",
];

/// Codes WeChat answers with HTTP 500 that are nevertheless final (protocol §6): the openid is
/// not one of this appid's users, or the transaction id is wrong. The same call fails the same
/// way forever, so retrying only delays the answer (and, in a job, ends in the dead set).
const FINAL_SERVER_CODES: &[&str] = &["OPENID_MISMATCH", "INVALID_TRANSACTIONID"];

/// Codes meaning the order or refund named in the call does not exist at WeChat.
const NOT_FOUND_CODES: &[&str] = &["ORDER_NOT_EXIST", "RESOURCE_NOT_EXISTS"];

/// Whether two WeChat codes are the same, ignoring underscores: older tables spell some codes
/// without them (`ORDERNOTEXIST`, `SYSTEMERROR`, `NOAUTH`), and protocol §6 says to parse
/// leniently. No two documented codes differ only by underscores.
fn same_code(a: &str, b: &str) -> bool {
    a.bytes().filter(|&c| c != b'_').eq(b.bytes().filter(|&c| c != b'_'))
}

fn code_in(code: &str, set: &[&str]) -> bool {
    set.iter().any(|known| same_code(code, known))
}

impl WechatError {
    /// Whether the same call may succeed if repeated later.
    pub fn retryable(&self) -> bool {
        match self {
            WechatError::Timeout { .. }
            | WechatError::Network { .. }
            | WechatError::Signature { .. }
            | WechatError::Busy { .. } => true,
            WechatError::Api { code, .. } if code_in(code, FINAL_SERVER_CODES) => false,
            WechatError::Api { status, code, .. } => *status >= 500 || *status == 429 || code_in(code, RETRYABLE_CODES),
            WechatError::Decode { .. } | WechatError::Unrecognised { .. } | WechatError::Sign(_) => false,
        }
    }

    /// WeChat answered, and its answer is final: a 4xx refusal, or one of the final codes it
    /// sends with HTTP 500 (`OPENID_MISMATCH`, `INVALID_TRANSACTIONID`). Nothing was created
    /// at WeChat, and asking again gets the same answer. Not a refusal: a status without
    /// WeChat's JSON (`HTTP_4xx`: a proxy or firewall answered) or `SIGN_ERROR` (WeChat did not
    /// read the request as ours, so it never judged it).
    pub fn is_final_refusal(&self) -> bool {
        match self {
            WechatError::Api { code, .. } => {
                !self.retryable() && !code.starts_with("HTTP_") && !same_code(code, "SIGN_ERROR")
            }
            _ => false,
        }
    }

    /// Our call budget refused the call before it was sent; when a retry may pass.
    pub fn busy_retry_after(&self) -> Option<std::time::Duration> {
        match self {
            WechatError::Busy { source, .. } => Some(source.retry_after),
            _ => None,
        }
    }

    /// The payer's openid is not a user of our appid (a user kept from before an appid change,
    /// or logged in through another mini-program).
    pub fn is_openid_mismatch(&self) -> bool {
        self.code().is_some_and(|code| same_code(code, "OPENID_MISMATCH"))
    }

    /// WeChat asked us to slow down: back off harder than for other failures.
    pub fn rate_limited(&self) -> bool {
        matches!(self, WechatError::Api { status, code, .. }
            if *status == 429 || code_in(code, &["FREQUENCY_LIMITED", "RATELIMIT_EXCEEDED", "RATE_LIMITED"]))
    }

    /// The WeChat error code, if WeChat answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            WechatError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The answer carried a value this version does not know.
    pub fn is_unrecognised(&self) -> bool {
        matches!(self, WechatError::Unrecognised { .. })
    }

    /// WeChat does not know the order or refund named in the call (it never reached WeChat).
    /// Only these codes: a 404 with another code (a wrong path at a proxy, say) is not an
    /// answer about the order.
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|code| code_in(code, NOT_FOUND_CODES))
    }

    /// The day's bill is not generated yet.
    pub fn is_bill_not_ready(&self) -> bool {
        self.code() == Some("STATEMENT_CREATING")
    }

    /// The day had no trades, so WeChat has no bill for it.
    pub fn is_no_bill(&self) -> bool {
        self.code() == Some("NO_STATEMENT_EXIST")
    }

    /// Every value [`Self::outcome`] can take for a call that was sent (not `busy`).
    pub const OUTCOMES: &[&str] =
        &["timeout", "network", "rate_limited", "server_error", "client_error", "bad_signature", "decode_error"];

    /// Bounded outcome label for `wxpay_wechat_calls_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            WechatError::Timeout { .. } => "timeout",
            WechatError::Network { .. } => "network",
            WechatError::Api { .. } if self.rate_limited() => "rate_limited",
            // A final answer sent with HTTP 500 is a refusal, not an outage: keep it out of the
            // server-error rate that pages.
            WechatError::Api { code, .. } if code_in(code, FINAL_SERVER_CODES) => "client_error",
            WechatError::Api { status, .. } if *status >= 500 => "server_error",
            WechatError::Api { .. } => "client_error",
            WechatError::Signature { .. } => "bad_signature",
            // Never counted in `wxpay_wechat_calls_total` (nothing reached WeChat; the budget
            // has its own metrics), so not in OUTCOMES: the label is for logs.
            WechatError::Busy { .. } => "busy",
            WechatError::Decode { .. } | WechatError::Unrecognised { .. } | WechatError::Sign(_) => "decode_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> WechatError {
        WechatError::Api { endpoint: "x", status, code: code.into(), message: String::new() }
    }

    #[test]
    fn every_outcome_is_listed_for_the_metric() {
        let errors = [
            WechatError::Timeout { endpoint: "x" },
            WechatError::Network { endpoint: "x", message: String::new() },
            api(429, "FREQUENCY_LIMITED"),
            api(500, "SYSTEM_ERROR"),
            api(400, "PARAM_ERROR"),
            WechatError::Signature { endpoint: "x", source: VerifyError::BadSignature },
            WechatError::Decode { endpoint: "x", message: String::new() },
            WechatError::Unrecognised { endpoint: "x", message: String::new() },
        ];
        for err in errors {
            assert!(WechatError::OUTCOMES.contains(&err.outcome()), "{} not in OUTCOMES", err.outcome());
        }
    }

    #[test]
    fn classification() {
        assert!(api(500, "SYSTEM_ERROR").retryable());
        assert!(api(429, "FREQUENCY_LIMITED").retryable());
        assert!(api(429, "FREQUENCY_LIMITED").rate_limited());
        assert!(api(503, "SERVICE_UNAVAILABLE").retryable());
        assert!(!api(400, "PARAM_ERROR").retryable());
        assert!(!api(401, "SIGN_ERROR").retryable());
        assert!(!api(404, "ORDER_NOT_EXIST").retryable());
        assert!(!api(403, "OUT_TRADE_NO_USED").retryable());
        assert!(WechatError::Timeout { endpoint: "x" }.retryable());
        assert_eq!(api(400, "PARAM_ERROR").outcome(), "client_error");
        assert_eq!(api(429, "FREQUENCY_LIMITED").outcome(), "rate_limited");
    }

    #[test]
    fn some_500s_are_final() {
        for code in ["OPENID_MISMATCH", "INVALID_TRANSACTIONID"] {
            assert!(!api(500, code).retryable(), "{code}");
            assert_eq!(api(500, code).outcome(), "client_error", "{code}");
        }
        assert!(api(500, "SYSTEM_ERROR").retryable());
        assert!(api(500, "BANK_ERROR").retryable());
        assert!(api(502, "HTTP_502").retryable(), "a gateway's 502 without a code stays retryable");
        assert_eq!(api(500, "SYSTEM_ERROR").outcome(), "server_error");
        assert!(api(500, "INVALID_TRANSACTIONID").is_final_refusal());
        assert!(api(403, "NOT_ENOUGH").is_final_refusal());
        assert!(!api(500, "SYSTEM_ERROR").is_final_refusal());
        assert!(!api(403, "HTTP_403").is_final_refusal(), "a proxy's 403 is not WeChat's word");
        assert!(!api(401, "SIGN_ERROR").is_final_refusal(), "WeChat never judged a request it did not verify");
        assert!(!WechatError::Decode { endpoint: "x", message: String::new() }.is_final_refusal());
    }

    #[test]
    fn only_the_not_found_codes_mean_not_found_in_either_spelling() {
        assert!(api(404, "ORDER_NOT_EXIST").is_not_found());
        assert!(api(404, "ORDERNOTEXIST").is_not_found());
        assert!(api(404, "RESOURCE_NOT_EXISTS").is_not_found());
        assert!(!api(404, "NOT_FOUND").is_not_found());
        assert!(!api(404, "HTTP_404").is_not_found());
        assert!(!api(400, "ORDER_CLOSED").is_not_found());
        assert!(!WechatError::Timeout { endpoint: "x" }.is_not_found());
    }

    #[test]
    fn older_spellings_classify_like_the_current_ones() {
        assert!(api(400, "SYSTEMERROR").retryable());
        assert!(api(400, "FREQUENCYLIMITED").rate_limited());
        assert!(!api(500, "OPENIDMISMATCH").retryable());
        assert!(!same_code("ORDER_NOT_EXIST", "ORDER_NOT_EXISTS"));
    }
}
