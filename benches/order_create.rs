//! Order creation benchmark: how many `POST /api/orders` per second the API answers (order
//! stored, JSAPI prepay at the simulator, paySign computed), and at what latency, on each
//! profile, next to the ceiling measured in the same run: RSA-2048 signatures and
//! verifications per second on one core through `aws-lc-rs`, the library the service signs with.
//!
//! Every order costs three signatures (the merchant's request to WeChat, the simulator's answer
//! as WeChat, the paySign) and two verifications (the simulator checks the request, the API
//! checks the answer). The simulator and the load generator run in this process, on the same
//! cores as the API, as they would on one machine.
//!
//! Run: `cargo bench --bench order_create` (PostgreSQL from `WXPAY_TEST_DATABASE_URL`, Redis
//! from `WXPAY_TEST_REDIS_URL`, defaults as in scripts/test.sh). Tunable: `BENCH_SECS` (closed
//! loop duration, default 10), `BENCH_CONNECTIONS` (default 16), `BENCH_RATE` (open-loop offered
//! orders/s, default 200), `BENCH_RATE_SECS` (default 10), `BENCH_PROFILE` (`embedded` or
//! `cluster` to run just one).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{dev_keys, drop_bench_keys, env_or, percentile};
use serde_json::json;
use sqlx::Executor;
use wxpay_recon::clock::Clock;
use wxpay_recon::config::Settings;
use wxpay_recon::demo::MiniProgram;
use wxpay_recon::sim::{SimConfig, SimServer};
use wxpay_recon::startup::{Application, Roles};
use wxpay_recon::telemetry::metrics::Metrics;
use wxpay_recon::wechat::sign::{self, RsaSigner};
use wxpay_recon::wechat::verify::RsaVerifier;

/// Orders the closed loop places before timing starts (connections, caches, JIT-free warm-up
/// of the database's plans).
const WARM_UP_ORDERS: usize = 200;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let secs: u64 = env_or("BENCH_SECS", 10);
    let connections: usize = env_or("BENCH_CONNECTIONS", 16);
    let rate: u32 = env_or("BENCH_RATE", 200);
    let rate_secs: u32 = env_or("BENCH_RATE_SECS", 10);
    let only = std::env::var("BENCH_PROFILE").ok();

    let dir = tempfile::tempdir().unwrap();
    let (keys_dir, keys, sim_keys) = dev_keys(dir.path());

    println!(
        "order create benchmark: closed loop {connections} connections for {secs} s; open loop {rate}/s for {rate_secs} s"
    );
    let (sign_rate, verify_rate) = rsa_rates(&keys.merchant_key);
    println!("\nceiling: RSA-2048 (aws-lc-rs), one core: sign {sign_rate:.0}/s, verify {verify_rate:.0}/s");
    println!(
        "  3 signatures + 2 verifications per order: at most {:.0} orders/s per core from RSA alone",
        1.0 / (3.0 / sign_rate + 2.0 / verify_rate)
    );

    let sim = SimServer::spawn(
        SimConfig {
            keys: sim_keys,
            clock: Clock::system(),
            time_scale: 1000.0,
            seed: 7,
            chaos: Default::default(),
            allow_http_notify: true,
            bound_to_open_platform: false,
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();

    let pg_admin = std::env::var("WXPAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis = std::env::var("WXPAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pg_name = format!("wxpay_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&pg_admin).await.expect("PostgreSQL for the cluster profile");
    admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {pg_name}"))).await.unwrap();
    let pg_url = format!("{}/{pg_name}", pg_admin.rsplit_once('/').unwrap().0);
    let prefix = format!("wxpay-bench-{}", uuid::Uuid::new_v4().simple());

    let profiles = [
        (
            "embedded",
            "embedded (SQLite)",
            format!("sqlite://{}/data.sqlite", dir.path().display()),
            format!("sqlite://{}/queue.sqlite", dir.path().display()),
        ),
        ("cluster", "cluster (PostgreSQL + Redis)", pg_url, redis.clone()),
    ];
    let mut rows = Vec::new();
    for (key, name, db_url, queue_url) in profiles {
        if only.as_deref().is_some_and(|o| o != key) {
            continue;
        }
        println!("\n== {name}");
        let settings = settings(&keys_dir, &sim.base_url(), &db_url, &queue_url, &prefix);
        let app = Application::build(settings, Clock::system(), Roles { api: true, worker: false }, Metrics::new())
            .await
            .unwrap();
        let base = app.base_url();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(app.run(stop.clone()));
        let users = log_in(&base, &sim.base_url(), connections).await;

        let (placed, elapsed, mut latencies) = closed_loop(&users, Duration::from_secs(secs)).await;
        let throughput = placed as f64 / elapsed.as_secs_f64();
        latencies.sort_unstable_by(f64::total_cmp);
        let (c50, c99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
        println!(
            "  closed loop, {connections} connections: {placed} orders in {:.2} s = {throughput:.0}/s (p50 {c50:.1} ms, p99 {c99:.1} ms)",
            elapsed.as_secs_f64(),
        );
        let mut at_rate = open_loop(&users, rate, rate_secs).await;
        at_rate.sort_unstable_by(f64::total_cmp);
        let (p50, p99) = (percentile(&at_rate, 0.50), percentile(&at_rate, 0.99));
        println!(
            "  open loop, {rate}/s for {rate_secs} s: p50 {p50:.1} ms, p99 {p99:.1} ms ({} orders)",
            at_rate.len()
        );
        println!("  ratio: orders/s / RSA signatures/s (one core) = {:.3}", throughput / sign_rate);
        rows.push((name, throughput, c50, c99, p50, p99));
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sim.stop();

    println!(
        "\n| profile | orders/s @{connections} conn | p50 | p99 | p50 @{rate}/s | p99 @{rate}/s | RSA sign/s (1 core) | RSA verify/s (1 core) | orders/s / sign/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, throughput, c50, c99, p50, p99) in rows {
        println!(
            "| {name} | {throughput:.0} | {c50:.1} ms | {c99:.1} ms | {p50:.1} ms | {p99:.1} ms | {sign_rate:.0} | {verify_rate:.0} | {:.3} |",
            throughput / sign_rate
        );
    }
    let _ = admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)"))).await;
    drop_bench_keys(&redis, &prefix).await;
}

fn settings(keys_dir: &Path, sim_url: &str, db_url: &str, queue_url: &str, prefix: &str) -> Settings {
    let mut settings = Settings::load_dev(None).unwrap();
    settings.wechat.dev_keys_dir = keys_dir.to_owned();
    settings.wechat.pay_base_url = sim_url.to_owned();
    settings.wechat.login_base_url = sim_url.to_owned();
    settings.wechat.allow_insecure_http = true;
    // The default budget (100 calls/s, WeChat's per-merchant limit) would be the only thing
    // measured: the simulator has no limit.
    settings.wechat.rate_limit_per_sec = 0;
    settings.database.url = db_url.to_owned();
    settings.database.max_connections = 16;
    settings.queue.url = queue_url.to_owned();
    settings.queue.prefix = prefix.to_owned();
    settings.server.port = 0;
    settings.log.filter = "error".into();
    // A few users create orders as fast as they can: what is measured is the path, not the quotas.
    settings.quotas.orders_create_per_min = 0;
    settings.quotas.open_orders_per_user = 0;
    settings.quotas.login_per_ip_per_min = 0;
    settings
}

/// One logged-in mini-program user per connection (`wx.login` code from the simulator).
async fn log_in(api: &str, sim: &str, count: usize) -> Arc<Vec<MiniProgram>> {
    let mut users = Vec::with_capacity(count);
    for _ in 0..count {
        let mut user = MiniProgram::new(api, sim);
        user.login(None).await.unwrap();
        users.push(user);
    }
    Arc::new(users)
}

/// One order: `(ok, milliseconds)`.
async fn order(user: &MiniProgram) -> (bool, f64) {
    let started = Instant::now();
    let placed = user.post("create order", "/api/orders", json!({"product_id": "coffee", "quantity": 1})).await;
    let ok = placed.is_ok_and(|body| body["payment"]["paySign"].as_str().is_some_and(|s| !s.is_empty()));
    (ok, started.elapsed().as_secs_f64() * 1000.0)
}

/// Each connection orders back to back for `duration` (after a warm-up): the maximum rate.
async fn closed_loop(users: &Arc<Vec<MiniProgram>>, duration: Duration) -> (usize, Duration, Vec<f64>) {
    let per_user = WARM_UP_ORDERS.div_ceil(users.len());
    let warm_up: Vec<_> = (0..users.len())
        .map(|u| {
            let users = Arc::clone(users);
            tokio::spawn(async move {
                for _ in 0..per_user {
                    assert!(order(&users[u]).await.0, "warm-up order failed");
                }
            })
        })
        .collect();
    for task in warm_up {
        task.await.unwrap();
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..users.len())
        .map(|u| {
            let users = Arc::clone(users);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let (ok, ms) = order(&users[u]).await;
                    assert!(ok, "every order must be created");
                    latencies.push(ms);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    (latencies.len(), started.elapsed(), latencies)
}

/// Orders at a fixed rate whatever the answers (spread over the users): latency under load.
async fn open_loop(users: &Arc<Vec<MiniProgram>>, rate: u32, secs: u32) -> Vec<f64> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let total = rate * secs;
    let mut tasks = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i).await;
        let users = Arc::clone(users);
        let u = usize::try_from(i).unwrap() % users.len();
        tasks.push(tokio::spawn(async move { order(&users[u]).await }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (ok, ms) = task.await.unwrap();
        assert!(ok, "every order must be created");
        latencies.push(ms);
    }
    latencies
}

/// Signatures and verifications per second on one core with the service's own types, over a
/// message the size of a prepay request's signing string.
fn rsa_rates(signer: &RsaSigner) -> (f64, f64) {
    let body = json!({"appid": "wx0000000000000000", "mchid": "1900000000", "description": "coffee",
        "out_trade_no": "20261124103456000000000001", "notify_url": "https://example.com/api/pay/notify",
        "amount": {"total": 6800, "currency": "CNY"}, "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}})
    .to_string();
    let message = sign::request_message("POST", "/v3/pay/transactions/jsapi", 1_700_000_000, "NONCE", &body);
    let rounds = 4000;
    let started = Instant::now();
    let mut signature = String::new();
    for _ in 0..rounds {
        signature = signer.sign(message.as_bytes()).unwrap();
    }
    let sign_rate = f64::from(rounds) / started.elapsed().as_secs_f64();
    let verifier: RsaVerifier = signer.public_key();
    let raw = base64_decode(&signature);
    let rounds = 20_000;
    let started = Instant::now();
    for _ in 0..rounds {
        assert!(verifier.verify(message.as_bytes(), &raw));
    }
    (sign_rate, f64::from(rounds) / started.elapsed().as_secs_f64())
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}
