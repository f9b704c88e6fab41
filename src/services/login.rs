//! Mini-program login: `wx.login` code -> jscode2session -> our user -> our bearer token.
//! session_key is sealed at rest and never leaves the server.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::config::Secret;
use crate::domain::User;
use crate::domain::time::from_ms;
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;
use crate::vault::{self, Vault};
use crate::wechat::LoginClient;
use crate::wechat::login::LoginError;

/// The `outcome` label of `wxpay_logins_total`: ok, a user's bad code, a blocked user, our
/// own WeChat identity refused (`misconfigured`: nobody can log in until an operator acts),
/// and everything else that is WeChat's or our side's failure.
const LOGIN_OK: &str = "ok";
const LOGIN_BAD_CODE: &str = "bad_code";
const LOGIN_BLOCKED: &str = "blocked";
const LOGIN_MISCONFIGURED: &str = "misconfigured";
const LOGIN_UNAVAILABLE: &str = "unavailable";
const LOGIN_OUTCOMES: [&str; 5] = [LOGIN_OK, LOGIN_BAD_CODE, LOGIN_BLOCKED, LOGIN_MISCONFIGURED, LOGIN_UNAVAILABLE];

#[derive(Debug, Clone)]
pub struct LoginService {
    db: Db,
    client: LoginClient,
    vault: Vault,
    clock: Clock,
    token_ttl: Duration,
    metrics: Metrics,
}

/// A fresh session: the token is shown to the client once.
#[derive(Debug)]
pub struct LoggedIn {
    pub token: Secret<String>,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

/// A profile change the rules refuse.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("nickname must be at most 64 characters without control characters")]
    BadNickname,
    #[error("avatar_url must be an http(s) URL of at most 512 bytes")]
    BadAvatarUrl,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, thiserror::Error)]
pub enum LoginFailure {
    #[error("code must be 1-128 printable ASCII characters")]
    MalformedCode,
    #[error(transparent)]
    Wechat(#[from] LoginError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot seal session_key")]
    Seal,
}

impl LoginService {
    pub fn new(db: Db, client: LoginClient, vault: Vault, clock: Clock, token_ttl: Duration, metrics: Metrics) -> Self {
        for outcome in LOGIN_OUTCOMES {
            let _ = metrics.logins.with_label_values(&[outcome]);
        }
        Self { db, client, vault, clock, token_ttl, metrics }
    }

    pub async fn login(&self, code: &str) -> Result<LoggedIn, LoginFailure> {
        let result = self.login_inner(code).await;
        let outcome = match &result {
            Ok(_) => LOGIN_OK,
            Err(LoginFailure::MalformedCode | LoginFailure::Wechat(LoginError::BadCode { .. })) => LOGIN_BAD_CODE,
            Err(LoginFailure::Wechat(LoginError::Blocked { .. })) => LOGIN_BLOCKED,
            Err(LoginFailure::Wechat(LoginError::Misconfigured { errcode, errmsg, setting })) => {
                // Logged here, once per refused login, at ERROR: it names the setting to fix.
                tracing::error!(setting, errcode, errmsg, "WeChat login refuses our configuration: check {setting}");
                LOGIN_MISCONFIGURED
            }
            Err(_) => LOGIN_UNAVAILABLE,
        };
        self.metrics.logins.with_label_values(&[outcome]).inc();
        result
    }

    async fn login_inner(&self, code: &str) -> Result<LoggedIn, LoginFailure> {
        if code.is_empty() || code.len() > 128 || !code.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(LoginFailure::MalformedCode);
        }
        let session = self.client.code2session(code).await?;
        let sealed = self.vault.seal(session.session_key.expose()).map_err(|_| LoginFailure::Seal)?;
        let now_ms = self.clock.now_ms();
        let user = self.db.upsert_user(&session.openid, session.unionid.as_deref(), &sealed, now_ms).await?;
        let (token, hash) = vault::new_token();
        let ttl_ms = i64::try_from(self.token_ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        self.db.insert_session(&hash, user.id, now_ms, expires_at_ms).await?;
        Ok(LoggedIn { token, expires_at: from_ms(expires_at_ms), user })
    }

    /// The logged-in user.
    pub async fn user(&self, user_id: i64) -> Result<User, StorageError> {
        self.db.user(user_id).await
    }

    /// Sets what the user chose to show (WeChat no longer hands profiles over at login).
    pub async fn update_profile(
        &self,
        user_id: i64,
        nickname: Option<&str>,
        avatar_url: Option<&str>,
    ) -> Result<User, ProfileError> {
        if nickname.is_some_and(|n| n.chars().count() > 64 || n.chars().any(char::is_control)) {
            return Err(ProfileError::BadNickname);
        }
        if avatar_url.is_some_and(|url| url.len() > 512 || !(url.starts_with("https://") || url.starts_with("http://")))
        {
            return Err(ProfileError::BadAvatarUrl);
        }
        Ok(self.db.update_profile(user_id, nickname, avatar_url, self.clock.now_ms()).await?)
    }

    /// The user behind a bearer token, if the token is known and unexpired.
    pub async fn authenticate(&self, token: &str) -> Result<Option<i64>, StorageError> {
        self.db.session_user(&vault::token_hash(token), self.clock.now_ms()).await
    }
}
