//! A faithful local WeChat Pay v3 + mini-program login server, for the demo, the tests and
//! the benchmarks. It verifies our request signatures and signs its responses as WeChat does,
//! sends signed and encrypted notifications on WeChat's retry schedule (time-compressible),
//! and exposes `/sim/*` control endpoints that stand in for the user (log in, pay).
//!
//! It plays the other side: it uses `wechat::{wire, sign, aead}` only, never our services or
//! storage.

pub(crate) mod auth;
mod bills;
pub mod certificates;
pub mod chaos;
mod control;
pub mod keys;
mod login;
pub mod notifier;
mod pay;
#[cfg(test)]
mod pay_tests;
pub mod refunds;
mod schema;
pub mod state;
#[cfg(test)]
pub(crate) mod test_sim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

pub use keys::SimKeys;
use state::SimState;

/// How the simulator runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub keys: SimKeys,
    pub clock: Clock,
    /// WeChat's notification retry delays are divided by this.
    pub time_scale: f64,
    pub seed: u64,
    /// Faults injected from the start (changeable at run time through `PUT /sim/chaos`).
    pub chaos: chaos::Chaos,
    /// Accept http:// notify_urls (real WeChat refuses them): tests, the demo and benches run
    /// our API on plain http.
    pub allow_http_notify: bool,
    /// The app is bound to an Open Platform account: jscode2session answers carry a unionid.
    pub bound_to_open_platform: bool,
}

/// Shared simulator state; cheap to clone.
#[derive(Debug, Clone)]
pub struct SimContext(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub keys: SimKeys,
    pub clock: Clock,
    pub time_scale: f64,
    pub allow_http_notify: bool,
    pub bound_to_open_platform: bool,
    pub state: Mutex<SimState>,
    pub chaos: tokio::sync::RwLock<chaos::Chaos>,
    pub rng: std::sync::Mutex<StdRng>,
    pub http: reqwest::Client,
    pub sign_errors: AtomicU64,
    pub delivery_slots: tokio::sync::Semaphore,
    /// Key mode and platform certificates (changed at run time through `/sim/key-mode` and
    /// `/sim/certificates/rotate`).
    pub certificates: std::sync::RwLock<certificates::CertificateState>,
    pub stop: CancellationToken,
}

impl std::ops::Deref for SimContext {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl SimContext {
    pub fn new(config: SimConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5)) // WeChat waits 5 s for a notification answer
            .build()
            .unwrap_or_default();
        SimContext(Arc::new(Inner {
            keys: config.keys,
            clock: config.clock,
            time_scale: config.time_scale,
            allow_http_notify: config.allow_http_notify,
            bound_to_open_platform: config.bound_to_open_platform,
            state: Mutex::new(SimState::default()),
            chaos: tokio::sync::RwLock::new(config.chaos),
            rng: std::sync::Mutex::new(StdRng::seed_from_u64(config.seed)),
            http,
            sign_errors: AtomicU64::new(0),
            delivery_slots: tokio::sync::Semaphore::new(notifier::MAX_IN_FLIGHT),
            certificates: std::sync::RwLock::default(),
            stop: CancellationToken::new(),
        }))
    }

    fn record_sign_error(&self) {
        self.sign_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A random value from the seeded generator (so a run can be replayed).
    /// Restarts the seeded generator (a test replays a run by setting the same seed).
    pub fn reseed(&self, seed: u64) {
        let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *rng = StdRng::seed_from_u64(seed);
    }

    pub fn random<T>(&self) -> T
    where
        rand::distr::StandardUniform: rand::distr::Distribution<T>,
    {
        let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        rand::Rng::random(&mut *rng)
    }
}

pub fn router(ctx: SimContext) -> Router {
    let v3 = Router::new()
        .route("/v3/pay/transactions/jsapi", post(pay::jsapi))
        .route("/v3/pay/transactions/out-trade-no/{out_trade_no}", get(pay::query))
        .route("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", post(pay::close))
        .route("/v3/refund/domestic/refunds", post(refunds::apply))
        .route("/v3/refund/domestic/refunds/{out_refund_no}", get(refunds::query))
        .route("/v3/bill/tradebill", get(bills::trade_bill))
        .route("/v3/certificates", get(certificates::list))
        .layer(from_fn_with_state(ctx.clone(), chaos::inject))
        .layer(from_fn_with_state(ctx.clone(), auth::verify_request))
        .layer(from_fn_with_state(ctx.clone(), auth::sign_response));
    // The bill file is a raw stream with no signature headers (protocol §5.9): verified like any
    // `/v3` call, but not signed; its SHA-1 from the tradebill answer stands in for a signature.
    let bill_download = Router::new()
        .route("/v3/billdownload/file", get(bills::download))
        .layer(from_fn_with_state(ctx.clone(), chaos::inject))
        .layer(from_fn_with_state(ctx.clone(), auth::verify_request));
    Router::new()
        .merge(v3)
        .merge(bill_download)
        .route("/sns/jscode2session", get(login::code2session))
        .merge(control::router())
        .with_state(ctx)
}

/// A running simulator.
#[derive(Debug)]
pub struct SimServer {
    pub addr: SocketAddr,
    pub ctx: SimContext,
}

impl SimServer {
    /// Binds `addr` (port 0 for any) and serves until the context's stop token fires.
    pub async fn spawn(config: SimConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let ctx = SimContext::new(config);
        let app = router(ctx.clone());
        let stop = ctx.stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            if let Err(err) = served {
                tracing::error!(error = %err, "simulator stopped");
            }
        });
        Ok(Self { addr, ctx })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.ctx.stop.cancel();
    }
}
