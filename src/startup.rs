//! Building the application from settings: pools, queue, WeChat clients, services, router and
//! worker; binding the listener (port 0 allowed) and reporting the real address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::state::Services;
use crate::api::{self, AppState, HttpObserver, Routes};
use crate::clock::Clock;
use crate::config::{ConfigError, Problems, Secret, Settings};
use crate::deps::Deps;
pub use crate::deps::StartupError;
use crate::services::certificates::CertificateKeeper;
use crate::services::inbox_signal::InboxSignal;
use crate::services::inbox_writer::InboxWriter;
use crate::services::ingest::NotifyIngest;
use crate::services::login::LoginService;
use crate::services::operations::Operations;
use crate::services::orders::OrderService;
use crate::services::quota::Quotas;
use crate::services::refunds::RefundService;
use crate::services::sync::OrderSync;
use crate::telemetry::metrics::Metrics;
use crate::vault::Vault;
use crate::wechat::Credentials;
use crate::worker::context::{JobContext, SharedContext};
use crate::worker::retry::RetryPolicy;

/// Shortest admin token accepted: it is the only thing between the internet and refunds.
const ADMIN_TOKEN_MIN: usize = 16;

/// Which parts of the service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
}

/// A built, bound, not yet running service.
#[derive(Debug)]
pub struct Application {
    pub settings: Arc<Settings>,
    pub state: AppState,
    pub jobs: SharedContext,
    pub roles: Roles,
    /// The WeChat Pay client (its key ring is what the certificate keeper follows).
    pub pay: crate::wechat::PayClient,
    /// This instance's name: the holder of its leases and the prefix of its worker names.
    pub instance: String,
    listener: TcpListener,
    addr: SocketAddr,
}

/// The bearer token of the admin routes.
type AdminToken = Arc<Secret<String>>;

/// The data key, the WeChat credentials and the admin token, read and checked together with
/// where WeChat traffic goes (https): every problem is reported in the same run.
fn load_secrets(settings: &Settings) -> Result<(Vault, Arc<Credentials>, Option<AdminToken>), ConfigError> {
    let mut problems = Problems::default();
    let vault = problems.check(Vault::from_settings(settings));
    let creds = problems.check(Credentials::load(settings));
    let admin_token = problems.check(admin_token(settings));
    // Again here, not only at load: the notify_url may have just been derived from the bound
    // address, and the demo and tests point the base URLs at the simulator after loading.
    problems.check(crate::config::transport::check(&settings.wechat));
    let all = match (vault, creds, admin_token) {
        (Some(vault), Some(creds), Some(admin_token)) => Some((vault, Arc::new(creds), admin_token)),
        _ => None,
    };
    problems.finish_with(all)
}

/// `server.admin_token` (or its file), long enough to guard refunds; `None` disables admin routes.
fn admin_token(settings: &Settings) -> Result<Option<AdminToken>, ConfigError> {
    let token = crate::config::secret::resolve(
        "server.admin_token",
        settings.server.admin_token.as_ref(),
        settings.server.admin_token_file.as_ref(),
    )?;
    if token.as_ref().is_some_and(|t| t.expose().trim().len() < ADMIN_TOKEN_MIN) {
        return Err(ConfigError::invalid(
            "server.admin_token",
            format!("must be at least {ADMIN_TOKEN_MIN} characters (it guards refunds)"),
        ));
    }
    Ok(token.map(Arc::new))
}

impl Application {
    /// Connects, migrates, seeds the catalog and binds. Nothing runs until [`Self::run`].
    pub async fn build(
        mut settings: Settings,
        clock: Clock,
        roles: Roles,
        metrics: Metrics,
    ) -> Result<Self, StartupError> {
        let bind = format!("{}:{}", settings.server.host, settings.server.port);
        let listener =
            TcpListener::bind(&bind).await.map_err(|source| StartupError::Bind { addr: bind.clone(), source })?;
        let addr = listener.local_addr().map_err(|source| StartupError::Bind { addr: bind, source })?;
        if settings.wechat.notify_url.is_empty() {
            // Only reachable with dev keys (validation requires it otherwise): the simulator
            // on this machine calls us back directly, over http, so this URL passes the
            // transport check only with wechat.allow_insecure_http.
            settings.wechat.notify_url = format!("http://{addr}/api/pay/notify");
        }
        let (vault, creds, admin_token) = load_secrets(&settings)?;
        let deps = Deps::build_with(&settings, creds, clock.clone(), metrics.clone()).await?;
        deps.db.seed_products(&settings.catalog, clock.now_ms()).await?;
        let login_client = deps.login_client(&settings)?;
        let applier = deps.applier();
        let reconciler = deps.reconciler(&settings);
        let Deps { db, queue, creds, pay, .. } = deps;
        let keeper_pay = pay.clone();
        let quotas = Quotas::new(&settings.quotas, metrics.clone());
        let login = LoginService::new(
            db.clone(),
            login_client,
            vault,
            clock.clone(),
            Duration::from_secs(settings.auth.token_ttl_secs),
            metrics.clone(),
        )
        .with_quotas(quotas.clone());
        let orders = OrderService::new(
            db.clone(),
            pay.clone(),
            clock.clone(),
            settings.orders.clone(),
            settings.wechat.notify_url.clone(),
            metrics.clone(),
        )
        .with_quotas(quotas)
        .with_deadline(Duration::from_millis(
            settings.server.request_timeout_ms.saturating_sub(settings.orders.deadline_margin_ms),
        ));
        let writers = if db.dialect() == crate::storage::Dialect::Sqlite { 1 } else { settings.notify.writers };
        let writer = InboxWriter::spawn(db.clone(), settings.notify.max_batch, writers, metrics.clone());
        let inbox_signal = InboxSignal::default();
        let ingest = NotifyIngest::new(
            Arc::clone(&creds),
            pay.clone(),
            clock.clone(),
            settings.notify.timestamp_tolerance_secs,
            writer,
            inbox_signal.clone(),
            db.clone(),
            metrics.clone(),
        );
        let sync = OrderSync::new(
            db.clone(),
            pay.clone(),
            applier.clone(),
            clock.clone(),
            settings.poll.clone(),
            metrics.clone(),
        );
        let refunds = RefundService::new(
            db.clone(),
            pay.clone(),
            applier.clone(),
            clock.clone(),
            settings.wechat.notify_url.clone(),
            settings.poll.clone(),
            settings.orders.poll_grace_secs,
            metrics.clone(),
        );
        let jobs = Arc::new(JobContext {
            db: db.clone(),
            queue: queue.clone(),
            sync: sync.clone(),
            reconciler: reconciler.clone(),
            refunds: refunds.clone(),
            applier,
            inbox_signal,
            clock: clock.clone(),
            metrics: metrics.clone(),
            retry: RetryPolicy::from_settings(&settings.worker),
        });
        let operations = Operations::new(
            db.clone(),
            queue.clone(),
            clock.clone(),
            metrics.clone(),
            settings.reconcile.catch_up_days,
        );
        let state = AppState::new(Services {
            login,
            orders,
            sync,
            reconciler,
            refunds,
            ingest,
            operations,
            db,
            queue,
            metrics,
            clock,
            admin_token,
        });
        let instance = crate::worker::instance_name();
        Ok(Self { settings: Arc::new(settings), state, jobs, roles, pay: keeper_pay, instance, listener, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `embedded` or `cluster`, as the start-up line and the README call them.
    fn profile_name(&self) -> &'static str {
        match self.state.db.dialect() {
            crate::storage::Dialect::Sqlite => "embedded",
            crate::storage::Dialect::Postgres => "cluster",
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves HTTP and runs the worker until `stop` fires; reports which part ended and why.
    pub async fn run(self, stop: CancellationToken) -> Result<(), std::io::Error> {
        let routes = if self.roles.api { Routes::Full } else { Routes::HealthOnly };
        let client_ip_header = Some(self.settings.server.client_ip_header.trim())
            .filter(|name| !name.is_empty())
            .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok());
        let router = api::router(
            self.state.clone(),
            routes,
            self.settings.server.body_limit_bytes,
            Duration::from_millis(self.settings.server.request_timeout_ms),
            HttpObserver::new(self.state.metrics.clone(), client_ip_header),
        );
        let keeper = tokio::spawn(
            CertificateKeeper {
                db: self.state.db.clone(),
                pay: self.pay.clone(),
                clock: self.jobs.clock.clone(),
                metrics: self.state.metrics.clone(),
                settings: self.settings.platform_certificates.clone(),
                holder: format!("{}-certificates", self.instance),
                lease_ttl: Duration::from_millis(self.settings.worker.lease_ttl_ms),
            }
            .run(stop.clone()),
        );
        let worker = if self.roles.worker {
            let ctx = Arc::clone(&self.jobs);
            let queue = self.state.queue.clone();
            let settings = Arc::clone(&self.settings);
            let instance = self.instance.clone();
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                if let Err(err) = crate::worker::run(ctx, queue, settings, instance, stop.clone()).await {
                    tracing::error!(error = %err, "worker exited with an error");
                }
            }))
        } else {
            None
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            profile = self.profile_name(),
            api = self.roles.api,
            worker = self.roles.worker,
            listen = %self.addr,
            pay_base_url = %self.settings.wechat.pay_base_url,
            dev_keys = self.settings.wechat.use_dev_keys,
            "wxpay-recon started"
        );
        let server_stop = stop.clone();
        let served = axum::serve(self.listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await;
        stop.cancel();
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        let _ = keeper.await;
        self.state.db.close().await;
        served
    }
}
