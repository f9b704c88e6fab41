//! The one dependency builder: database (migrated), job queue, clock, metrics, credentials and
//! the WeChat Pay client behind the shared rate limit (cluster-wide through Redis on the
//! cluster profile). `startup`, every CLI command and the benches build from here, so a
//! one-shot command cannot quietly differ from the daemon (it used to skip the shared limit).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::{ConfigError, DatabaseSettings, Settings};
use crate::domain::Merchant;
use crate::queue::{JobQueue, QueueError};
use crate::services::apply::Applier;
use crate::services::reconcile::Reconciler;
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;
use crate::wechat::ratelimit::{BudgetSplit, RateLimiter};
use crate::wechat::{Credentials, LoginClient, PayClient, WechatError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("WeChat client: {0}")]
    Wechat(#[from] WechatError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// The database, connected and migrated (on PostgreSQL sqlx holds an advisory lock while it
/// migrates, so replicas starting together do not race).
pub async fn database(settings: &DatabaseSettings) -> Result<Db, StartupError> {
    let db = Db::connect(settings).await?;
    db.migrate().await?;
    Ok(db)
}

/// What every role shares.
#[derive(Debug, Clone)]
pub struct Deps {
    pub db: Db,
    pub queue: JobQueue,
    pub clock: Clock,
    pub metrics: Metrics,
    pub creds: Arc<Credentials>,
    pub pay: PayClient,
    /// How often ABNORMAL refunds are asked about again (`poll.abnormal_refund_interval_secs`).
    pub abnormal_recheck: Duration,
}

impl Deps {
    pub async fn build(settings: &Settings, clock: Clock, metrics: Metrics) -> Result<Self, StartupError> {
        let creds = Arc::new(Credentials::load(settings)?);
        Self::build_with(settings, creds, clock, metrics).await
    }

    /// Like [`Self::build`] with credentials already loaded (start-up loads them beside the
    /// other secrets, so every configuration problem is reported in one run).
    pub async fn build_with(
        settings: &Settings,
        creds: Arc<Credentials>,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, StartupError> {
        let deps = Self::without_key_check(settings, creds, clock, metrics).await?;
        if deps.creds.platform_keys.is_empty() {
            return Err(ConfigError::invalid(
                "wechat.platform_keys",
                "no WeChat platform key to verify responses and notifications: configure one (a PUB_KEY_ID_... public key \
                 or a platform certificate), or download the certificates once with `wxpay-recon wechat fetch-certificates`",
            )
            .into());
        }
        Ok(deps)
    }

    /// Like [`Self::build_with`], but content with no platform key at all: the command that
    /// downloads the first certificates starts from there.
    pub async fn without_key_check(
        settings: &Settings,
        creds: Arc<Credentials>,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, StartupError> {
        let db = database(&settings.database).await?;
        // The certificates downloaded earlier: a restart verifies WeChat without asking it first.
        crate::services::certificates::load_saved(&db, &creds.platform_keys).await?;
        let queue = JobQueue::connect(&settings.queue).await?;
        let limiter = RateLimiter::with_split(
            settings.wechat.rate_limit_per_sec,
            BudgetSplit::from_settings(&settings.wechat_budget),
            metrics.clone(),
        )
        .map(|l| match queue.redis() {
            Some((conn, prefix)) => l.shared_through(conn, prefix),
            None => l,
        });
        let pay = PayClient::new(
            &settings.wechat.pay_base_url,
            Duration::from_millis(settings.wechat.request_timeout_ms),
            Arc::clone(&creds),
            clock.clone(),
            metrics.clone(),
        )?
        .with_rate_limiter(limiter);
        let abnormal_recheck = Duration::from_secs(settings.poll.abnormal_refund_interval_secs);
        Ok(Self { db, queue, clock, metrics, creds, pay, abnormal_recheck })
    }

    /// Who we are at WeChat: reports for anyone else are refused.
    pub fn merchant(&self) -> Merchant {
        Merchant { appid: self.creds.appid.clone(), mchid: self.creds.mchid.clone() }
    }

    pub fn login_client(&self, settings: &Settings) -> Result<LoginClient, WechatError> {
        LoginClient::new(
            &settings.wechat.login_base_url,
            Duration::from_millis(settings.wechat.request_timeout_ms),
            self.creds.appid.clone(),
            self.creds.app_secret.clone(),
            self.metrics.clone(),
        )
    }

    pub fn applier(&self) -> Applier {
        Applier::new(self.db.clone(), self.merchant(), self.clock.clone(), self.metrics.clone())
            .with_abnormal_recheck(self.abnormal_recheck)
    }

    pub fn reconciler(&self, settings: &Settings) -> Reconciler {
        Reconciler::new(
            self.db.clone(),
            self.pay.clone(),
            self.applier(),
            self.clock.clone(),
            settings.reconcile.clone(),
            self.metrics.clone(),
        )
    }
}
