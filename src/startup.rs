//! Building the application from settings: pools, queue, WeChat clients, services, router and
//! worker; binding the public and ops listeners (port 0 allowed) and reporting the real addresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::serve::ConnectionLimits;
use crate::api::state::Services;
use crate::api::{self, AppState, HttpObserver, OpsToken, PublicRouter, Routes, Share};
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
use crate::services::rejection_sampler::RejectionSampler;
use crate::services::sync::OrderSync;
use crate::telemetry::metrics::Metrics;
use crate::vault::Vault;
use crate::wechat::Credentials;
use crate::worker::context::{JobContext, SharedContext};
use crate::worker::retry::RetryPolicy;

/// Shortest admin token accepted: it is the only thing between the internet and refunds.
const ADMIN_TOKEN_MIN: usize = 16;

/// Connections the ops listener keeps at once (Prometheus, probes, an operator's curl).
const OPS_MAX_CONNECTIONS: usize = 64;

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
    /// `server.ops_token`, if set: serves the ops routes on the public listener to its holder.
    ops_token: Option<Arc<OpsToken>>,
    listener: TcpListener,
    addr: SocketAddr,
    ops_listener: TcpListener,
    ops_addr: SocketAddr,
}

/// What [`load_secrets`] reads.
struct Secrets {
    vault: Vault,
    creds: Arc<Credentials>,
    admin_token: Option<AdminToken>,
    ops_token: Option<Arc<OpsToken>>,
}

/// The bearer token of the admin routes.
type AdminToken = Arc<Secret<String>>;

/// The data key, the WeChat credentials and the admin and ops tokens, read and checked together
/// with where WeChat traffic goes (https): every problem is reported in the same run.
fn load_secrets(settings: &Settings) -> Result<Secrets, ConfigError> {
    let mut problems = Problems::default();
    let vault = problems.check(Vault::from_settings(settings));
    let creds = problems.check(Credentials::load(settings));
    let admin_token = problems.check(admin_token(settings));
    let ops_token = problems.check(ops_token(settings));
    // Again here, not only at load: the notify_url may have just been derived from the bound
    // address, and the demo and tests point the base URLs at the simulator after loading.
    problems.check(crate::config::transport::check(&settings.wechat));
    let all = match (vault, creds, admin_token, ops_token) {
        (Some(vault), Some(creds), Some(admin_token), Some(ops_token)) => {
            Some(Secrets { vault, creds: Arc::new(creds), admin_token, ops_token })
        }
        _ => None,
    };
    problems.finish_with(all)
}

/// `server.ops_token` (or its file), as long as the admin token: it shows business volumes.
fn ops_token(settings: &Settings) -> Result<Option<Arc<OpsToken>>, ConfigError> {
    let token = crate::config::secret::resolve(
        "server.ops_token",
        settings.server.ops_token.as_ref(),
        settings.server.ops_token_file.as_ref(),
    )?;
    if token.as_ref().is_some_and(|t| t.expose().trim().len() < ADMIN_TOKEN_MIN) {
        return Err(ConfigError::invalid("server.ops_token", format!("must be at least {ADMIN_TOKEN_MIN} characters")));
    }
    Ok(token.as_ref().map(OpsToken::new))
}

/// Binds `host:port`, reporting the address on failure.
async fn bind(host: &str, port: u16) -> Result<(TcpListener, SocketAddr), StartupError> {
    let bind = format!("{host}:{port}");
    let listener =
        TcpListener::bind(&bind).await.map_err(|source| StartupError::Bind { addr: bind.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| StartupError::Bind { addr: bind, source })?;
    Ok((listener, addr))
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
        let (listener, addr) = bind(&settings.server.host, settings.server.port).await?;
        let (ops_listener, ops_addr) = bind(&settings.server.ops_host, settings.server.ops_port).await?;
        if settings.wechat.notify_url.is_empty() {
            // Only reachable with dev keys (validation requires it otherwise): the simulator
            // on this machine calls us back directly, over http, so this URL passes the
            // transport check only with wechat.allow_insecure_http.
            settings.wechat.notify_url = format!("http://{addr}/api/pay/notify");
        }
        let Secrets { vault, creds, admin_token, ops_token } = load_secrets(&settings)?;
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
            RejectionSampler::spawn(db.clone(), &settings.notify, metrics.clone()),
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
            settings.gauges.clone(),
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
        Ok(Self {
            settings: Arc::new(settings),
            state,
            jobs,
            roles,
            pay: keeper_pay,
            instance,
            ops_token,
            listener,
            addr,
            ops_listener,
            ops_addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics`, `/readyz` and `/healthz` are served (`server.ops_host`/`ops_port`).
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    pub fn ops_base_url(&self) -> String {
        format!("http://{}", self.ops_addr)
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
        let server = &self.settings.server;
        let client_ip_header = Some(server.client_ip_header.trim())
            .filter(|name| !name.is_empty())
            .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok());
        let observer = HttpObserver::new(self.state.metrics.clone(), client_ip_header);
        let metrics = &self.state.metrics;
        let public = PublicRouter {
            routes: if self.roles.api { Routes::Full } else { Routes::HealthOnly },
            body_limit: server.body_limit_bytes,
            body_read_timeout: server.body_read_timeout(),
            timeout: server.request_timeout(),
            api_share: Share::new("api", server.max_in_flight, server.retry_after_secs, metrics.clone()),
            notify_share: Share::new("notify", server.notify_max_in_flight, server.retry_after_secs, metrics.clone()),
            ops_token: self.ops_token.clone(),
        };
        let router = api::router(self.state.clone(), public, Arc::clone(&observer));
        let ops_router = api::ops_router(self.state.clone(), server.request_timeout(), observer);
        let limits = ConnectionLimits {
            listener: "public",
            header_read_timeout: server.header_read_timeout(),
            max_header_bytes: server.max_header_bytes,
            max_connections: api::serve::fit_to_fd_limit(server.max_connections),
            // A request in progress ends within its timeout; a second more lets its answer go out.
            drain_timeout: server.request_timeout() + Duration::from_secs(1),
        };
        // The ops listener faces Prometheus and probes only: a small cap of its own.
        let ops_limits = ConnectionLimits { listener: "ops", max_connections: OPS_MAX_CONNECTIONS, ..limits.clone() };
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
        let gauges = tokio::spawn(self.state.operations.clone().run_gauges(stop.clone()));
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
            ops_listen = %self.ops_addr,
            pay_base_url = %self.settings.wechat.pay_base_url,
            dev_keys = self.settings.wechat.use_dev_keys,
            "wxpay-recon started"
        );
        // The ops listener outlives the public one's drain, answering /readyz 503 (draining)
        // meanwhile, so probes see the shutdown instead of a refused connection.
        let ops_stop = CancellationToken::new();
        let ops = tokio::spawn(api::serve::serve(
            self.ops_listener,
            ops_router,
            ops_limits,
            self.state.metrics.clone(),
            ops_stop.clone(),
        ));
        let operations = self.state.operations.clone();
        let draining = stop.clone();
        tokio::spawn(async move {
            draining.cancelled().await;
            operations.start_draining();
        });
        let served = api::serve::serve(self.listener, router, limits, self.state.metrics.clone(), stop.clone()).await;
        stop.cancel();
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        let _ = keeper.await;
        ops_stop.cancel();
        let _ = ops.await;
        let _ = gauges.await;
        self.state.db.close().await;
        served
    }
}
