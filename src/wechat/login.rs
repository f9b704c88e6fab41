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
    /// The code is invalid, expired or already used (40029, 40163): the client must call
    /// `wx.login` again.
    #[error("login code rejected by WeChat ({errcode}): {errmsg}")]
    BadCode { errcode: i64, errmsg: String },
    /// WeChat refuses this user (40226, high-risk).
    #[error("user blocked by WeChat ({errcode}): {errmsg}")]
    Blocked { errcode: i64, errmsg: String },
    /// Busy (-1) or minute quota exceeded (45011): try again shortly.
    #[error("WeChat login temporarily unavailable ({errcode}): {errmsg}")]
    Unavailable { errcode: i64, errmsg: String },
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
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned(), appid, secret, metrics })
    }

    pub async fn code2session(&self, code: &str) -> Result<WechatSession, LoginError> {
        let started = Instant::now();
        let result = self.exchange(code).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(LoginError::Transport(err)) => err.outcome(),
            Err(LoginError::Unavailable { .. }) => "server_error",
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
            40029 | 40163 => Err(LoginError::BadCode { errcode, errmsg }),
            40226 => Err(LoginError::Blocked { errcode, errmsg }),
            _ => Err(LoginError::Unavailable { errcode, errmsg }),
        }
    }
}
