//! Test harness: a simulator and an app (in-process, or the real binary as a child process)
//! on port 0, each test with its own directory, database and queue.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use wxpay_recon::api::AppState;
use wxpay_recon::clock::Clock;
use wxpay_recon::config::{DatabaseSettings, Settings};
use wxpay_recon::demo::MiniProgram;
use wxpay_recon::sim::notifier::{PlainNotification, envelope_body, signed_headers};
use wxpay_recon::sim::{SimConfig, SimKeys, SimServer};
use wxpay_recon::startup::{Application, Roles};
use wxpay_recon::storage::Db;
use wxpay_recon::telemetry::metrics::Metrics;
use wxpay_recon::wechat::devkeys::DevKeys;

/// An order number from a test's string (panics on a malformed one: a test bug).
pub fn trade_no(text: &str) -> wxpay_recon::domain::OutTradeNo {
    wxpay_recon::domain::OutTradeNo::parse(text).expect("test order number")
}

pub const ALL_ROLES: Roles = Roles { api: true, worker: true };

/// `server.admin_token` of every test app.
pub const ADMIN_TOKEN: &str = "test-admin-token-5f1c0b7e";

/// An operator's call to an admin route: (status, body).
pub async fn admin_post(base: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{base}{path}")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Which profile a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite data + SQLite queue in the test's directory.
    Embedded,
    /// A fresh PostgreSQL database + a Redis key prefix of the test's own.
    Cluster,
}

/// Runs each named `async fn name(backend: Backend)` as two tests, one per profile.
#[macro_export]
macro_rules! both_profiles {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Embedded).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Cluster).await
                }
            )*
        }
    };
}

/// The PostgreSQL server tests create their databases on (`scripts/test.sh` makes sure it runs).
pub fn admin_database_url() -> String {
    std::env::var("WXPAY_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("WXPAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database of the test's own, dropped (best effort) when the test ends.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        let admin = admin_database_url();
        let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is required for the cluster-profile tests (run scripts/test.sh): {e}")
        });
        let name = format!("wxpay_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("create database");
        pool.close().await;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        Self { url: format!("{base}/{name}"), name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context: a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(pool) = sqlx::PgPool::connect(&admin_database_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&pool)
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One test's world: a directory, dev keys, a clock and a running simulator.
pub struct TestEnv {
    pub dir: TempDir,
    pub clock: Clock,
    pub keys: DevKeys,
    pub sim_keys: SimKeys,
    pub sim: SimServer,
    pub backend: Backend,
    pub pg: Option<PgDatabase>,
    /// Redis URL and key prefix of this test (cluster profile).
    pub redis: String,
    pub prefix: String,
}

impl TestEnv {
    pub async fn new(backend: Backend) -> Self {
        Self::with_time_scale(backend, 1000.0).await
    }

    /// `time_scale` divides WeChat's notification retry schedule (1000: 15 s -> 15 ms).
    pub async fn with_time_scale(backend: Backend, time_scale: f64) -> Self {
        install_crypto();
        if std::env::var_os("TEST_LOG").is_some() {
            wxpay_recon::telemetry::init(wxpay_recon::config::LogFormat::Compact, "info");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_dir = dir.path().join("dev-keys");
        copy_dir(&fixture("dev-keys"), &keys_dir);
        let keys = DevKeys::load(&keys_dir).expect("fixture keys");
        let sim_keys = SimKeys::from_dev_keys(&keys).expect("sim keys");
        let clock = Clock::system();
        let config = SimConfig {
            keys: sim_keys.clone(),
            clock: clock.clone(),
            time_scale,
            seed: 7,
            chaos: Default::default(),
            // Our test apps listen on plain http.
            allow_http_notify: true,
            bound_to_open_platform: false,
        };
        let sim = SimServer::spawn(config, "127.0.0.1:0".parse().expect("addr")).await.expect("sim");
        let pg = match backend {
            Backend::Cluster => Some(PgDatabase::create().await),
            Backend::Embedded => None,
        };
        let prefix = format!("wxpay-test-{}", uuid::Uuid::new_v4().simple());
        Self { dir, clock, keys, sim_keys, sim, backend, pg, redis: redis_url(), prefix }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Settings for an app in this environment, as `WXPAY_RECON__*` pairs (used both
    /// in-process and for child processes, so both see exactly the same configuration).
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("WECHAT__USE_DEV_KEYS", "true".to_owned()),
            ("WECHAT__DEV_KEYS_DIR", self.path("dev-keys").display().to_string()),
            ("WECHAT__PAY_BASE_URL", self.sim.base_url()),
            ("WECHAT__LOGIN_BASE_URL", self.sim.base_url()),
            // The simulator and our notify_url are plain http on this machine.
            ("WECHAT__ALLOW_INSECURE_HTTP", "true".to_owned()),
            ("SERVER__PORT", "0".to_owned()),
            ("SERVER__OPS_PORT", "0".to_owned()),
            ("QUEUE__POLL_INTERVAL_MS", "50".to_owned()),
            ("QUEUE__HEARTBEAT_SECS", "1".to_owned()),
            ("QUEUE__MISSED_HEARTBEATS", "2".to_owned()),
            ("WORKER__SWEEP_INTERVAL_MS", "300".to_owned()),
            ("WORKER__SWEEP_MIN_AGE_MS", "2000".to_owned()),
            ("WORKER__BACKOFF_BASE_MS", "100".to_owned()),
            ("WORKER__BACKOFF_CAP_MS", "1000".to_owned()),
            ("LOG__FORMAT", "json".to_owned()),
            // Status requests ask WeChat once per order per minute: tests of the notify path stay
            // about notifications (tests of client sync set their own).
            ("POLL__CLIENT_SYNC_CACHE_MS", "60000".to_owned()),
            ("SERVER__ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            // The poller would race the notifications of slow tests: it is tested on its own.
            ("ORDERS__POLL_GRACE_SECS", "3600".to_owned()),
            // The daily reconciliation runs only in the tests about it.
            ("RECONCILE__ENABLED", "false".to_owned()),
            ("RECONCILE__WORK_DIR", self.path("bill-tmp").display().to_string()),
            ("RECONCILE__REPORTS_DIR", self.path("reports").display().to_string()),
            ("QUEUE__PREFIX", self.prefix.clone()),
            // Database gauges are computed in the background: often enough for tests that scrape.
            ("GAUGES__REFRESH_INTERVAL_MS", "200".to_owned()),
            // Every test client logs in from 127.0.0.1 and many create dozens of orders at once:
            // the quotas are off except in the tests about them (`abuse_quota`).
            ("QUOTAS__LOGIN_PER_IP_PER_MIN", "0".to_owned()),
            ("QUOTAS__LOGIN_CONCURRENCY", "1000".to_owned()),
            ("QUOTAS__ORDERS_CREATE_PER_MIN", "0".to_owned()),
            ("QUOTAS__ORDERS_REFRESH_PER_MIN", "0".to_owned()),
            ("QUOTAS__OPEN_ORDERS_PER_USER", "0".to_owned()),
        ];
        match (self.backend, &self.pg) {
            (Backend::Cluster, Some(pg)) => {
                vars.push(("DATABASE__URL", pg.url.clone()));
                vars.push(("QUEUE__URL", self.redis.clone()));
            }
            _ => {
                vars.push(("DATABASE__URL", format!("sqlite://{}", self.path("data.sqlite").display())));
                vars.push(("QUEUE__URL", format!("sqlite://{}", self.path("queue.sqlite").display())));
            }
        }
        vars.into_iter().map(|(k, v)| (format!("WXPAY_RECON__{k}"), v)).collect()
    }

    pub fn settings(&self) -> Settings {
        use figment::providers::Format;
        let mut figment = figment::Figment::from(figment::providers::Toml::string(wxpay_recon::config::DEFAULT_TOML));
        for (key, value) in self.env_vars() {
            let path = key.trim_start_matches("WXPAY_RECON__").to_lowercase().replace("__", ".");
            let value: figment::value::Value =
                value.parse().unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            figment = figment.merge(figment::providers::Serialized::default(&path, value));
        }
        let settings: Settings = figment.extract().expect("test settings");
        settings.validate().expect("valid test settings");
        settings
    }

    pub async fn spawn_app(&self, roles: Roles) -> TestApp {
        self.spawn_app_with(roles, |_| {}).await
    }

    pub async fn spawn_app_with(&self, roles: Roles, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = self.settings();
        tweak(&mut settings);
        let database = settings.database.clone();
        let metrics = Metrics::new();
        let app = Application::build(settings, self.clock.clone(), roles, metrics.clone()).await.expect("app builds");
        let base = app.base_url();
        let ops = app.ops_base_url();
        let state = app.state.clone();
        let stop = CancellationToken::new();
        tokio::spawn(app.run(stop.clone()));
        TestApp {
            base,
            ops,
            state,
            metrics,
            stop,
            database,
            dead_jobs_expected: AtomicBool::new(false),
            unapplied_allowed: AtomicBool::new(false),
        }
    }

    /// A mini-program client of `app`, logged in as a new user.
    pub async fn client(&self, app: &TestApp) -> (MiniProgram, String) {
        let mut client = MiniProgram::new(&app.base, &self.sim.base_url());
        let login = client.login(None).await.expect("login");
        let user_id = login["user"]["id"].as_i64().expect("user id");
        let openid = app.state.db.user(user_id).await.expect("user").openid;
        (client, openid)
    }

    /// A `TRANSACTION.SUCCESS` resource for an order, as WeChat would encrypt it.
    pub fn transaction_json(&self, out_trade_no: &str, total: i64, openid: &str, transaction_id: &str) -> String {
        json!({
            "mchid": self.keys.mchid, "appid": self.keys.appid, "out_trade_no": out_trade_no,
            "transaction_id": transaction_id, "trade_type": "JSAPI", "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": "",
            "success_time": "2026-11-24T10:34:56+08:00", "payer": {"openid": openid},
            "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"}
        })
        .to_string()
    }

    /// A signed, encrypted notification (headers, body) for `resource_json`.
    pub fn notification(&self, id: &str, resource_json: &str) -> (Vec<(&'static str, String)>, String) {
        let plain = PlainNotification::transaction_success(id.to_owned(), resource_json.to_owned(), self.clock.now());
        let body = envelope_body(&self.sim_keys, &plain, "Fmwp04ry88f3");
        let headers =
            signed_headers(&self.sim_keys, &body, self.clock.now().timestamp(), "s7iEF4nIgzBQiKesvPiPEV25HyedzQGO");
        (headers, body)
    }

    /// Starts the real binary with this environment's settings; waits for it to listen.
    pub async fn spawn_process(&self, args: &[&str]) -> Process {
        self.spawn_process_with(args, &[]).await
    }

    /// Like [`Self::spawn_process`] with some settings overridden (`("DATABASE__URL", ...)`).
    pub async fn spawn_process_with(&self, args: &[&str], overrides: &[(&str, String)]) -> Process {
        self.spawn_process_inner(args, overrides, None).await
    }

    /// Like [`Self::spawn_process_with`], also collecting every line the process writes on
    /// stdout and stderr (for tests about its logs).
    pub async fn spawn_process_logged(&self, args: &[&str], overrides: &[(&str, String)]) -> (Process, Output) {
        let output = Output::default();
        let process = self.spawn_process_inner(args, overrides, Some(output.clone())).await;
        (process, output)
    }

    async fn spawn_process_inner(
        &self,
        args: &[&str],
        overrides: &[(&str, String)],
        output: Option<Output>,
    ) -> Process {
        // `serve` runs on the dev keys these settings select only when told so on its command
        // line (unless the test turns them off).
        let mut args = args.to_vec();
        let dev_keys_off = overrides.iter().any(|(k, v)| *k == "WECHAT__USE_DEV_KEYS" && v == "false");
        if args.first() == Some(&"serve") && !args.contains(&"--dev-keys") && !dev_keys_off {
            args.push("--dev-keys");
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_wxpay-recon"));
        let stderr = match &output {
            Some(_) => Stdio::piped(),
            None if std::env::var_os("TEST_LOG").is_some() => Stdio::inherit(),
            None => Stdio::null(),
        };
        command.args(args).envs(self.env_vars()).stdout(Stdio::piped()).stderr(stderr).kill_on_drop(true);
        for (key, value) in overrides {
            command.env(format!("WXPAY_RECON__{key}"), value);
        }
        let mut child = command.spawn().expect("spawn wxpay-recon");
        let mut readers = Vec::new();
        if let (Some(output), Some(stderr)) = (&output, child.stderr.take()) {
            let output = output.clone();
            let mut lines = BufReader::new(stderr).lines();
            readers.push(tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    output.push(Stream::Stderr, line);
                }
            }));
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (base, ops) = loop {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .expect("process did not start listening in time")
                .expect("read stdout")
                .unwrap_or_else(|| {
                    let seen = output.as_ref().map(Output::lines).unwrap_or_default();
                    panic!("process exited before listening; its output so far: {seen:#?}")
                });
            if let Some(output) = &output {
                output.push(Stream::Stdout, line.clone());
            }
            if let Some(urls) = line.strip_prefix("wxpay-recon listening on ") {
                let (base, ops) = urls.split_once(", ops on ").expect("start line names the ops address");
                break (base.trim().to_owned(), ops.trim().to_owned());
            }
        };
        readers.push(tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(output) = &output {
                    output.push(Stream::Stdout, line);
                }
            }
        }));
        Process { child, base, ops, readers }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Lines a child process wrote, in the order they were read.
#[derive(Debug, Clone, Default)]
pub struct Output(std::sync::Arc<std::sync::Mutex<Vec<(Stream, String)>>>);

impl Output {
    fn push(&self, stream: Stream, line: String) {
        self.0.lock().expect("output lock").push((stream, line));
    }

    pub fn lines(&self) -> Vec<(Stream, String)> {
        self.0.lock().expect("output lock").clone()
    }
}

/// An in-process app. When it is dropped at the end of a test that did not fail, it asserts
/// that nothing was left behind: no dead job (`wxpay-recon jobs dead` would list none) and no
/// notification stored but not applied (after giving the still-running worker a few seconds to
/// apply what is in flight). A test that means to leave either says so first
/// ([`Self::expect_dead_jobs`], [`Self::allow_unapplied`]).
pub struct TestApp {
    pub base: String,
    /// The ops listener (`/metrics`, `/readyz`).
    pub ops: String,
    pub state: AppState,
    pub metrics: Metrics,
    stop: CancellationToken,
    database: DatabaseSettings,
    dead_jobs_expected: AtomicBool,
    unapplied_allowed: AtomicBool,
}

/// How long the teardown check waits for the worker to apply notifications still in flight.
const TEARDOWN_INBOX_WAIT: Duration = Duration::from_secs(10);

impl TestApp {
    /// POSTs a notification exactly as given; returns (status, body).
    pub async fn post_notify(&self, headers: &[(&str, String)], body: impl Into<reqwest::Body>) -> (u16, Value) {
        post_notify(&self.base, headers, body).await
    }

    /// This test leaves dead jobs on purpose: the teardown does not check the dead-letter list.
    pub fn expect_dead_jobs(&self) {
        self.dead_jobs_expected.store(true, Ordering::Relaxed);
    }

    /// This test leaves inbox entries unapplied on purpose: the teardown does not check the inbox.
    pub fn allow_unapplied(&self) {
        self.unapplied_allowed.store(true, Ordering::Relaxed);
    }

    /// What the test left behind that it did not announce, one line each (empty: clean).
    async fn leftovers(database: &DatabaseSettings, check_dead: bool, check_inbox: bool) -> Vec<String> {
        let db = match Db::connect(database).await {
            Ok(db) => db,
            Err(err) => return vec![format!("teardown cannot open the database: {err}")],
        };
        let mut found = Vec::new();
        if check_inbox {
            // The worker still runs: what arrived last may be applying right now.
            let deadline = Instant::now() + TEARDOWN_INBOX_WAIT;
            loop {
                match db.inbox_backlog().await {
                    Ok((0, _)) => break,
                    Ok((n, oldest)) if Instant::now() >= deadline => {
                        found.push(format!(
                            "{n} inbox notification(s) still unapplied after {TEARDOWN_INBOX_WAIT:?} \
                             (oldest received at {oldest:?} ms); call app.allow_unapplied() if this test means it"
                        ));
                        break;
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(err) => {
                        found.push(format!("teardown cannot read the inbox: {err}"));
                        break;
                    }
                }
            }
        }
        if check_dead {
            match db.dead_jobs().await {
                Ok(dead) => found.extend(dead.into_iter().map(|job| {
                    format!(
                        "dead job {} ({}, {} attempt(s)): {} -- payload {}; call app.expect_dead_jobs() if this test means it",
                        job.id, job.kind, job.attempts, job.last_error, job.payload
                    )
                })),
                Err(err) => found.push(format!("teardown cannot list dead jobs: {err}")),
            }
        }
        db.close().await;
        found
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let check_dead = !self.dead_jobs_expected.load(Ordering::Relaxed);
        let check_inbox = !self.unapplied_allowed.load(Ordering::Relaxed);
        // A failing test already says what went wrong; a second panic would abort the process.
        if !std::thread::panicking() && (check_dead || check_inbox) {
            let database = self.database.clone();
            // Drop runs outside async context: a short-lived runtime on its own thread, while the
            // app keeps running on the test's runtime (so in-flight notifications can still apply).
            let found = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("teardown runtime");
                rt.block_on(Self::leftovers(&database, check_dead, check_inbox))
            })
            .join()
            .unwrap_or_else(|_| vec!["the teardown check itself panicked".to_owned()]);
            if !found.is_empty() {
                self.stop.cancel();
                panic!("the test left work behind:\n  {}", found.join("\n  "));
            }
        }
        self.stop.cancel();
    }
}

pub async fn post_notify(base: &str, headers: &[(&str, String)], body: impl Into<reqwest::Body>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/api/pay/notify"))
        .header("Content-Type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("notify request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A child `wxpay-recon` process.
pub struct Process {
    pub child: Child,
    pub base: String,
    /// The ops listener (`/metrics`, `/readyz`).
    pub ops: String,
    /// The tasks reading its stdout (and stderr when captured); they end at end of file.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    pub fn sigkill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
    }

    pub async fn wait(&mut self) {
        let _ = self.child.wait().await;
    }

    /// Waits for the process to exit and for its output to be read to the end.
    pub async fn wait_output(&mut self) {
        self.wait().await;
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        }
    }
}

/// A loopback port nobody listens on right now (free at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("local addr").port()
}

/// Records an apply job as dead, as the worker does when one exhausts its attempts
/// (`worker::jobs::bury`), and tells the app's teardown it is expected.
pub async fn bury_a_job(env: &TestEnv, app: &TestApp) {
    app.expect_dead_jobs();
    let payload = serde_json::to_string(&wxpay_recon::queue::Job::ApplyNotification { inbox_id: 0 }).expect("json");
    app.state
        .db
        .insert_dead_job(
            wxpay_recon::domain::JobKind::ApplyNotification,
            &payload,
            8,
            "test: attempts exhausted",
            env.clock.now_ms(),
        )
        .await
        .expect("dead job recorded");
}

/// Waits until `check` is true or `timeout` passes (then panics with `what`).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns once a poll sweep that read the clock after this call has run to its end: whatever
/// was due by then has been claimed, queued for a check and counted in
/// `wxpay_poll_claimed_total`. So "nothing was claimed" after this is a fact, not a guess about
/// timing. A sweep is seen through the poller's lease, which every sweep renews before it
/// claims. Sweeps run one after the other: the second renewal seen after this call comes from
/// a sweep that started after the first one had finished (so it read the clock after this
/// call), and the third shows that this second sweep has finished too.
pub async fn wait_for_poll_sweep(app: &TestApp) {
    // No library function reads a lease (the service only takes, renews and releases them).
    async fn lease(app: &TestApp) -> Option<i64> {
        sqlx::query_as::<_, (i64,)>("SELECT expires_at_ms FROM leases WHERE name = $1")
            .bind(wxpay_recon::worker::poller::LEASE)
            .fetch_optional(app.state.db.reader())
            .await
            .expect("read the poller's lease")
            .map(|(expires,)| expires)
    }
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    let mut seen = lease(app).await;
    for renewal in 1..=3 {
        loop {
            let now = lease(app).await;
            if now.is_some() && now != seen {
                seen = now;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for poll sweep renewal {renewal} of 3"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until every execution of `kind` jobs this app started has finished (succeeded,
/// scheduled its retry, or died), as `wxpay_jobs_started_total` and `wxpay_jobs_finished_total`
/// count them. A retry is queued by the failing execution before it finishes, so after this
/// `jobs_finished{outcome="retried"}` says whether any is waiting. (`JobQueue::stats` would say
/// it more directly, but on Redis it fails with WRONGTYPE once a job is done or dead.)
pub async fn wait_for_jobs_settled(app: &TestApp, kind: &str) {
    eventually(&format!("every {kind} execution finished"), Duration::from_secs(30), || async {
        let finished: u64 = ["succeeded", "retried", "dead"]
            .iter()
            .map(|outcome| app.metrics.jobs_finished.with_label_values(&[kind, outcome]).get())
            .sum();
        app.metrics.jobs_started.with_label_values(&[kind]).get() == finished
    })
    .await;
}

/// Every notification the simulator registered (delivered, dropped or still on its way).
pub async fn sim_notifications(env: &TestEnv) -> Vec<Value> {
    reqwest::get(format!("{}/sim/notifications", env.sim.base_url())).await.unwrap().json().await.unwrap()
}

/// One scalar from the app database.
pub async fn scalar(state: &AppState, sql: &'static str) -> i64 {
    let (value,): (i64,) = sqlx::query_as(sql).fetch_one(state.db.reader()).await.expect(sql);
    value
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy fixture");
    }
}

pub async fn set_chaos(env: &TestEnv, chaos: Value) {
    let response =
        reqwest::Client::new().put(format!("{}/sim/chaos", env.sim.base_url())).json(&chaos).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap_or_default());
}

pub async fn create_orders(client: &MiniProgram, n: usize) -> Vec<String> {
    let mut numbers = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let placed = futures::future::join_all(chunk.iter().map(|_| client.create_order("sticker", 1))).await;
        numbers.extend(placed.into_iter().map(|p| p.unwrap().out_trade_no));
    }
    numbers
}

pub async fn pay_all(env: &TestEnv, numbers: &[String]) {
    let paid: Value = reqwest::Client::new()
        .post(format!("{}/sim/pay-batch", env.sim.base_url()))
        .json(&json!({ "out_trade_nos": numbers }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paid["paid"], numbers.len(), "{paid}");
}

/// A coffee ordered, paid through the simulator and seen SUCCESS by its owner: its number.
pub async fn paid_coffee(client: &MiniProgram) -> String {
    let no = client.create_order("coffee", 1).await.expect("order").out_trade_no;
    client.pay(&no).await.expect("pay");
    client.wait_for_status(&no, "SUCCESS", Duration::from_secs(20)).await.expect("paid");
    no
}

pub async fn count_status(app: &TestApp, status: &str) -> i64 {
    orders_with_status(&app.state.db, status).await
}

/// How many orders are in `status` (what the `wxpay_orders` gauge reads).
pub async fn orders_with_status(db: &Db, status: &str) -> i64 {
    let counts = db.order_counts().await.expect("order counts");
    counts.into_iter().find(|(s, _)| s.as_str() == status).map_or(0, |(_, n)| n)
}

/// `n` unpaid 1-fen sticker orders of one user, straight in the database, numbered
/// `<prefix><now><i>`: load and abuse tests seed this way so their time goes to the path they are
/// about, not to three RSA signatures per order. Returns the user's openid and the numbers.
pub async fn insert_sticker_orders(
    env: &TestEnv,
    db: &Db,
    openid: &str,
    prefix: &str,
    n: usize,
) -> (String, Vec<String>) {
    let now = env.clock.now_ms();
    let user = db.upsert_user(openid, None, "v1:unused", now).await.unwrap();
    let orders: Vec<String> = (0..n).map(|i| format!("{prefix}{now}{i:08}")).collect();
    futures::StreamExt::for_each_concurrent(futures::stream::iter(&orders), 16, |text| {
        let user = &user;
        async move {
            db.insert_order(&wxpay_recon::storage::orders::NewOrder {
                out_trade_no: &trade_no(text),
                user_id: user.id,
                payer_openid: &user.openid,
                product_id: "sticker",
                quantity: 1,
                amount: wxpay_recon::domain::Fen(1),
                description: "Sticker",
                time_expire_ms: now + 7_200_000,
                first_check_at_ms: now + 3_600_000,
                now_ms: now,
            })
            .await
            .unwrap();
        }
    })
    .await;
    (user.openid, orders)
}
