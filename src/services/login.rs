//! Mini-program login: `wx.login` code -> jscode2session -> our user -> our bearer token.
//! session_key is sealed at rest and never leaves the server.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::config::Secret;
use crate::domain::User;
use crate::domain::time::from_ms;
use crate::storage::{Db, StorageError};

use super::quota::{Quotas, Refusal};
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
const LOGIN_LIMITED: &str = "rate_limited";
const LOGIN_OUTCOMES: [&str; 6] =
    [LOGIN_OK, LOGIN_BAD_CODE, LOGIN_BLOCKED, LOGIN_MISCONFIGURED, LOGIN_UNAVAILABLE, LOGIN_LIMITED];

/// Expired sessions are purged from a login at most this often per process (logins are what
/// makes the table grow, so a quiet service has nothing to purge)...
const PURGE_INTERVAL_MS: i64 = 60_000;
/// ... in batches of at most this many rows, so no statement holds the writer for long...
const PURGE_BATCH: i64 = 1_000;
/// ... repeated while a batch comes back full, at most this many times per purge: 20,000 rows a
/// minute per process outgrows any login rate the quotas let through (`login_calls_per_sec`
/// at its default is 3,000 a minute), so expired sessions cannot pile up.
const PURGE_MAX_BATCHES: u32 = 20;
#[derive(Debug, Clone)]
pub struct LoginService {
    db: Db,
    client: LoginClient,
    vault: Vault,
    clock: Clock,
    token_ttl: Duration,
    metrics: Metrics,
    quotas: Option<Quotas>,
    /// When expired sessions were last purged (ms); shared by clones.
    last_purge_ms: Arc<AtomicI64>,
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
    #[error(transparent)]
    Limited(#[from] Refusal),
}

impl LoginService {
    pub fn new(db: Db, client: LoginClient, vault: Vault, clock: Clock, token_ttl: Duration, metrics: Metrics) -> Self {
        for outcome in LOGIN_OUTCOMES {
            let _ = metrics.logins.with_label_values(&[outcome]);
        }
        Self { db, client, vault, clock, token_ttl, metrics, quotas: None, last_purge_ms: Arc::default() }
    }

    /// Logins obey the address and code quotas and the cap on login calls in flight.
    #[must_use]
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// Logs in with a `wx.login` code, from `client` (the address the quotas count; `None`
    /// when unknown).
    pub async fn login(&self, code: &str, client: Option<IpAddr>) -> Result<LoggedIn, LoginFailure> {
        let result = self.login_inner(code, client).await;
        let outcome = match &result {
            Ok(_) => LOGIN_OK,
            Err(LoginFailure::MalformedCode | LoginFailure::Wechat(LoginError::BadCode { .. })) => LOGIN_BAD_CODE,
            Err(LoginFailure::Wechat(LoginError::Blocked { .. })) => LOGIN_BLOCKED,
            Err(LoginFailure::Wechat(LoginError::Misconfigured { errcode, errmsg, setting })) => {
                // Logged here, once per refused login, at ERROR: it names the setting to fix.
                tracing::error!(setting, errcode, errmsg, "WeChat login refuses our configuration: check {setting}");
                LOGIN_MISCONFIGURED
            }
            Err(LoginFailure::Limited(_)) => LOGIN_LIMITED,
            Err(_) => LOGIN_UNAVAILABLE,
        };
        self.metrics.logins.with_label_values(&[outcome]).inc();
        if result.is_ok() {
            self.purge_expired_sessions_soon();
        }
        result
    }

    async fn login_inner(&self, code: &str, client: Option<IpAddr>) -> Result<LoggedIn, LoginFailure> {
        if code.is_empty() || code.len() > 128 || !code.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(LoginFailure::MalformedCode);
        }
        // Held until WeChat answered: the cap counts calls in flight.
        let slot = self.quotas.as_ref().map(|q| q.login(client, code)).transpose()?;
        let session = self.client.code2session(code).await;
        drop(slot);
        let session = session?;
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

    /// Revokes the session of `token` (logout); whether it was a live one.
    pub async fn logout(&self, token: &str) -> Result<bool, StorageError> {
        self.db.delete_session(&vault::token_hash(token)).await
    }

    /// Deletes expired sessions in batches, at most once per [`PURGE_INTERVAL_MS`] per process,
    /// in a task of its own: up to [`PURGE_MAX_BATCHES`] deletes (on SQLite each waits for the
    /// one writer) must not hold the login that triggered them, whose token is already issued.
    /// A failure is logged and left for the next purge: it must not fail the login.
    fn purge_expired_sessions_soon(&self) {
        let now_ms = self.clock.now_ms();
        let last = self.last_purge_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < PURGE_INTERVAL_MS
            || self.last_purge_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let (db, metrics) = (self.db.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let purge =
                purge_in_batches(PURGE_BATCH, PURGE_MAX_BATCHES, |limit| db.purge_expired_sessions(now_ms, limit));
            let (purged, failure) = purge.await;
            if purged > 0 {
                metrics.sessions_purged.inc_by(purged);
                tracing::info!(sessions.purged = purged, "expired sessions purged");
            }
            if let Some(err) = failure {
                tracing::warn!(error = %err, "could not purge expired sessions; retried after the next login");
            }
        });
    }

    /// The user behind a bearer token, if the token is known and unexpired.
    pub async fn authenticate(&self, token: &str) -> Result<Option<i64>, StorageError> {
        self.db.session_user(&vault::token_hash(token), self.clock.now_ms()).await
    }
}

/// Runs `delete(batch)` until it deletes fewer than `batch` rows (nothing left), fails, or has
/// run `max_batches` times; the rows deleted, and the failure that stopped it if any.
async fn purge_in_batches<F, Fut>(batch: i64, max_batches: u32, mut delete: F) -> (u64, Option<StorageError>)
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<u64, StorageError>>,
{
    let full = u64::try_from(batch).unwrap_or(0);
    let mut purged = 0;
    for _ in 0..max_batches {
        match delete(batch).await {
            Ok(n) => {
                purged += n;
                if n < full {
                    break;
                }
            }
            Err(err) => return (purged, Some(err)),
        }
    }
    (purged, None)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// A table of `expired` rows deleted `limit` at a time; how many statements ran.
    async fn purge(expired: u64, max_batches: u32) -> (u64, u64) {
        let left = AtomicU64::new(expired);
        let statements = AtomicU64::new(0);
        let (purged, failure) = purge_in_batches(1_000, max_batches, |limit| {
            statements.fetch_add(1, Ordering::Relaxed);
            let n = left.load(Ordering::Relaxed).min(u64::try_from(limit).unwrap());
            left.fetch_sub(n, Ordering::Relaxed);
            async move { Ok(n) }
        })
        .await;
        assert!(failure.is_none());
        (purged, statements.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_purge_repeats_full_batches_until_the_backlog_is_gone() {
        assert_eq!(purge(0, 20).await, (0, 1));
        assert_eq!(purge(999, 20).await, (999, 1));
        assert_eq!(purge(1_000, 20).await, (1_000, 2), "a full batch may mean more are left");
        assert_eq!(purge(4_500, 20).await, (4_500, 5));
    }

    #[tokio::test]
    async fn a_purge_runs_at_most_its_batch_cap() {
        assert_eq!(purge(50_000, 20).await, (20_000, 20));
    }

    #[tokio::test]
    async fn a_failed_batch_stops_the_purge_and_keeps_the_count() {
        let mut calls = 0;
        let (purged, failure) = purge_in_batches(10, 5, |_| {
            calls += 1;
            let result = if calls == 1 { Ok(10) } else { Err(StorageError::Corrupt("gone".into())) };
            async move { result }
        })
        .await;
        assert_eq!(purged, 10);
        assert!(failure.is_some());
        assert_eq!(calls, 2);
    }
}
