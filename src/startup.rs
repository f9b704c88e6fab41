//! Building the application from settings: pools, queue, WeChat clients, services, router and
//! worker; binding the listener (port 0 allowed) and reporting the real address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::state::Services;
use crate::api::{self, AppState, Routes};
use crate::clock::Clock;
use crate::config::{ConfigError, Settings};
use crate::deps::Deps;
pub use crate::deps::StartupError;
use crate::services::enqueuer::Enqueuer;
use crate::services::inbox_writer::InboxWriter;
use crate::services::ingest::NotifyIngest;
use crate::services::login::LoginService;
use crate::services::operations::Operations;
use crate::services::orders::OrderService;
use crate::services::refunds::RefundService;
use crate::services::sync::OrderSync;
use crate::telemetry::metrics::Metrics;
use crate::vault::Vault;
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
    listener: TcpListener,
    addr: SocketAddr,
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
            // on this machine calls us back directly.
            settings.wechat.notify_url = format!("http://{addr}/api/pay/notify");
        }
        let vault = Vault::from_settings(&settings)?;
        let deps = Deps::build(&settings, clock.clone(), metrics.clone()).await?;
        deps.db.seed_products(&settings.catalog, clock.now_ms()).await?;
        let login_client = deps.login_client(&settings)?;
        let applier = deps.applier();
        let reconciler = deps.reconciler(&settings);
        let Deps { db, queue, creds, pay, .. } = deps;
        let login = LoginService::new(
            db.clone(),
            login_client,
            vault,
            clock.clone(),
            Duration::from_secs(settings.auth.token_ttl_secs),
            metrics.clone(),
        );
        let orders = OrderService::new(
            db.clone(),
            pay.clone(),
            clock.clone(),
            settings.orders.clone(),
            settings.wechat.notify_url.clone(),
            metrics.clone(),
        );
        let writers = if db.dialect() == crate::storage::Dialect::Sqlite { 1 } else { settings.notify.writers };
        let writer = InboxWriter::spawn(db.clone(), settings.notify.max_batch, writers, metrics.clone());
        let enqueuer = Enqueuer::spawn(queue.clone(), settings.notify.max_batch * 64, metrics.clone());
        let ingest = NotifyIngest::new(
            Arc::clone(&creds),
            clock.clone(),
            settings.notify.timestamp_tolerance_secs,
            writer,
            enqueuer,
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
            clock: clock.clone(),
            metrics: metrics.clone(),
            retry: RetryPolicy::from_settings(&settings.worker),
        });
        let admin_token = crate::config::secret::resolve(
            "server.admin_token",
            settings.server.admin_token.as_ref(),
            settings.server.admin_token_file.as_ref(),
        )?
        .map(Arc::new);
        if admin_token.as_ref().is_some_and(|t| t.expose().trim().len() < ADMIN_TOKEN_MIN) {
            return Err(ConfigError::invalid(
                "server.admin_token",
                format!("must be at least {ADMIN_TOKEN_MIN} characters (it guards refunds)"),
            )
            .into());
        }
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
        Ok(Self { settings: Arc::new(settings), state, jobs, roles, listener, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves HTTP and runs the worker until `stop` fires; reports which part ended and why.
    pub async fn run(self, stop: CancellationToken) -> Result<(), std::io::Error> {
        let routes = if self.roles.api { Routes::Full } else { Routes::HealthOnly };
        let router = api::router(
            self.state.clone(),
            routes,
            self.settings.server.body_limit_bytes,
            Duration::from_millis(self.settings.server.request_timeout_ms),
        );
        let worker = if self.roles.worker {
            let ctx = Arc::clone(&self.jobs);
            let queue = self.state.queue.clone();
            let settings = Arc::clone(&self.settings);
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                if let Err(err) = crate::worker::run(ctx, queue, settings, stop.clone()).await {
                    tracing::error!(error = %err, "worker exited with an error");
                }
            }))
        } else {
            None
        };
        tracing::info!(addr = %self.addr, api = self.roles.api, worker = self.roles.worker, "wxpay-recon running");
        let server_stop = stop.clone();
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await;
        if let Some(worker) = worker {
            stop.cancel();
            let _ = worker.await;
        }
        self.state.db.close().await;
        served
    }
}
