//! `jscode2session`: exchanges the code from `wx.login` for the user's openid and session_key.
//! The AppSecret travels in the query string, so errors never carry the URL.

use std::time::{Duration, Instant};

use crate::config::Secret;
use crate::telemetry::metrics::Metrics;

use super::client::transport_error;
use super::error::WechatError;
use super::wire::login::Code2SessionResponse;

/// What a successful login exchange yields. `session_key` stays on the server.
#[derive(Debug, Clone)]
pub struct WechatSession {
    pub openid: String,
    pub unionid: Option<String>,
    pub session_key: Secret<String>,
}

/// Why a login code was not exchanged.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The code is invalid, expired, already used or missing (40029, 40163, 41008): the
    /// client must call `wx.login` again.
    #[error("login code rejected by WeChat ({errcode}): {errmsg}")]
    BadCode { errcode: i64, errmsg: String },
    /// WeChat refuses this user (40226, high-risk).
    #[error("user blocked by WeChat ({errcode}): {errmsg}")]
    Blocked { errcode: i64, errmsg: String },
    /// Busy (-1) or minute quota exceeded (45011): try again shortly.
    #[error("WeChat login temporarily unavailable ({errcode}): {errmsg}")]
    Unavailable { errcode: i64, errmsg: String },
    /// WeChat refuses *our* identity (bad or missing appid or AppSecret, bad grant_type):
    /// every login fails until an operator fixes `setting`. Not an outage: retrying cannot
    /// help, and calling it "unavailable" sent people looking at WeChat instead of the config.
    #[error("WeChat login refuses our configuration ({errcode}, check {setting}): {errmsg}")]
    Misconfigured { errcode: i64, errmsg: String, setting: &'static str },
    #[error(transparent)]
    Transport(#[from] WechatError),
}

#[derive(Debug, Clone)]
pub struct LoginClient {
    http: reqwest::Client,
    base_url: String,
    appid: String,
    secret: Secret<String>,
    metrics: Metrics,
}

impl LoginClient {
    pub fn new(
        base_url: &str,
        timeout: Duration,
        appid: String,
        secret: Secret<String>,
        metrics: Metrics,
    ) -> Result<Self, WechatError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| WechatError::Network { endpoint: "code2session", message: e.without_url().to_string() })?;
        super::client::touch_call_series(&metrics, "code2session");
        let _ = metrics.wechat_calls.with_label_values(&["code2session", CONFIG_ERROR]);
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned(), appid, secret, metrics })
    }

    pub async fn code2session(&self, code: &str) -> Result<WechatSession, LoginError> {
        let started = Instant::now();
        let result = self.exchange(code).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(LoginError::Transport(err)) => err.outcome(),
            Err(LoginError::Unavailable { .. }) => "server_error",
            Err(LoginError::Misconfigured { .. }) => CONFIG_ERROR,
            Err(_) => "client_error",
        };
        self.metrics.wechat_calls.with_label_values(&["code2session", outcome]).inc();
        self.metrics.wechat_call_duration.with_label_values(&["code2session"]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn exchange(&self, code: &str) -> Result<WechatSession, LoginError> {
        const ENDPOINT: &str = "code2session";
        let url = format!("{}/sns/jscode2session", self.base_url);
        let response = self
            .http
            .get(url)
            .query(&[
                ("appid", self.appid.as_str()),
                ("secret", self.secret.expose().as_str()),
                ("js_code", code),
                ("grant_type", "authorization_code"),
            ])
            .send()
            .await
            .map_err(|e| transport_error(ENDPOINT, &e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport_error(ENDPOINT, &e))?;
        if !status.is_success() {
            return Err(WechatError::Api {
                endpoint: ENDPOINT,
                status: status.as_u16(),
                code: format!("HTTP_{}", status.as_u16()),
                message: String::new(),
            }
            .into());
        }
        // WeChat answers JSON, sometimes labelled text/plain: parse the body regardless.
        let parsed: Code2SessionResponse = serde_json::from_slice(&body)
            .map_err(|e| WechatError::Decode { endpoint: ENDPOINT, message: e.to_string() })?;
        let errcode = parsed.errcode.unwrap_or(0);
        let errmsg = parsed.errmsg.clone().unwrap_or_default();
        match errcode {
            0 => match (parsed.openid, parsed.session_key) {
                (Some(openid), Some(session_key)) if !openid.is_empty() => Ok(WechatSession {
                    openid,
                    unionid: parsed.unionid.filter(|u| !u.is_empty()),
                    session_key: Secret::new(session_key),
                }),
                _ => {
                    Err(WechatError::Decode { endpoint: ENDPOINT, message: "missing openid or session_key".into() }
                        .into())
                }
            },
            _ => Err(classify(errcode, errmsg)),
        }
    }
}

/// The `outcome` of `wxpay_wechat_calls_total{endpoint="code2session"}` when WeChat refuses
/// our appid or secret.
pub const CONFIG_ERROR: &str = "config_error";

/// What a jscode2session `errcode` means for us (protocol §10).
///
/// The issue that asked for this listed 40163 among configuration errors; protocol.md (and
/// the real message, "code been used") says it is a code already exchanged, which is the
/// user's code, not our configuration: it stays a bad code (the client calls `wx.login` again).
fn classify(errcode: i64, errmsg: String) -> LoginError {
    match errcode {
        40029 | 40163 | 41008 => LoginError::BadCode { errcode, errmsg },
        40226 => LoginError::Blocked { errcode, errmsg },
        // 40013 invalid appid, 41002 appid missing.
        40013 | 41002 => LoginError::Misconfigured { errcode, errmsg, setting: "wechat.appid" },
        // 40125 invalid appsecret, 41004 secret missing.
        40125 | 41004 => LoginError::Misconfigured { errcode, errmsg, setting: "wechat.app_secret" },
        // 40002 invalid grant_type: we always send `authorization_code`, so a build or proxy
        // altered the request; no setting fixes it, but it is ours to fix all the same.
        40002 => LoginError::Misconfigured { errcode, errmsg, setting: "grant_type (sent by this build)" },
        // -1 busy, 45011 quota, and anything new: WeChat's side, worth retrying shortly.
        _ => LoginError::Unavailable { errcode, errmsg },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(errcode: i64) -> String {
        match classify(errcode, String::new()) {
            LoginError::BadCode { .. } => "bad_code".into(),
            LoginError::Blocked { .. } => "blocked".into(),
            LoginError::Unavailable { .. } => "unavailable".into(),
            LoginError::Misconfigured { setting, .. } => format!("config:{setting}"),
            LoginError::Transport(_) => "transport".into(),
        }
    }

    #[test]
    fn every_documented_errcode_takes_its_path() {
        assert_eq!(kind(40029), "bad_code");
        assert_eq!(kind(40163), "bad_code", "code been used: the user's code, not our config");
        assert_eq!(kind(41008), "bad_code");
        assert_eq!(kind(40226), "blocked");
        assert_eq!(kind(-1), "unavailable");
        assert_eq!(kind(45011), "unavailable");
        assert_eq!(kind(40013), "config:wechat.appid");
        assert_eq!(kind(41002), "config:wechat.appid");
        assert_eq!(kind(40125), "config:wechat.app_secret");
        assert_eq!(kind(41004), "config:wechat.app_secret");
        assert!(kind(40002).starts_with("config:grant_type"));
        assert_eq!(kind(99999), "unavailable");
    }
}
