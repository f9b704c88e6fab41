//! Notify ingest benchmark: how many WeChat notifications per second the API acknowledges
//! (verified, decrypted, committed to the inbox, answered 204), and at what latency, on each
//! profile, next to the raw ceilings measured in the same run:
//!
//! - RSA-2048 signature verifications per second (one core) through `ring`, as the API verifies,
//! - single-row commits per second on the same database at the same concurrency (what one
//!   commit per notification would allow).
//!
//! Run: `cargo bench --bench notify_ingest` (PostgreSQL from `WXPAY_TEST_DATABASE_URL`, Redis
//! from `WXPAY_TEST_REDIS_URL`, defaults as in scripts/test.sh). `BENCH_N` sets the number of
//! notifications of the throughput run (default 30000: shorter runs are dominated by warm-up); `BENCH_DIAGNOSE=1` adds a PostgreSQL
//! run with the SQLite queue, to see what the Redis enqueue costs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use sqlx::Executor;
use wxpay_recon::clock::Clock;
use wxpay_recon::config::{DatabaseSettings, Settings};
use wxpay_recon::sim::SimKeys;
use wxpay_recon::sim::notifier::{Headers, PlainNotification, envelope_body, signed_headers};
use wxpay_recon::startup::{Application, Roles};
use wxpay_recon::telemetry::metrics::Metrics;
use wxpay_recon::wechat::devkeys::DevKeys;

const CONCURRENCY: usize = 64;
const RATE_PER_SEC: usize = 1000;
const RATE_SECS: usize = 5;

struct Prepared {
    headers: Headers,
    body: String,
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("dev-keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-keys")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), keys_dir.join(entry.file_name())).unwrap();
    }
    let keys = DevKeys::load(&keys_dir).unwrap();
    let sim_keys = SimKeys::from_dev_keys(&keys).unwrap();

    println!(
        "notify ingest benchmark: {n} notifications (+{} for the latency run), {CONCURRENCY} concurrent senders",
        RATE_PER_SEC * RATE_SECS
    );
    let started = Instant::now();
    let all = prepare(&sim_keys, &keys, n + RATE_PER_SEC * RATE_SECS).await;
    println!("  prepared (signed) in {:.1} s", started.elapsed().as_secs_f64());
    let (throughput_set, rate_set) = all.split_at(n);

    let verify_rate = ring_verify_rate(&sim_keys);
    println!("\nceiling: RSA-2048 verify (ring), one core: {verify_rate:.0}/s");

    let pg_admin = std::env::var("WXPAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis = std::env::var("WXPAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis_url = redis.clone();
    let pg_name = format!("wxpay_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&pg_admin).await.expect("PostgreSQL for the cluster profile");
    admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {pg_name}"))).await.unwrap();
    let pg_url = format!("{}/{pg_name}", pg_admin.rsplit_once('/').unwrap().0);

    let mut profiles = vec![
        (
            "embedded (SQLite)",
            format!("sqlite://{}/data.sqlite", dir.path().display()),
            format!("sqlite://{}/queue.sqlite", dir.path().display()),
        ),
        ("cluster (PostgreSQL + Redis)", pg_url.clone(), redis),
    ];
    if std::env::var_os("BENCH_DIAGNOSE").is_some() {
        // PostgreSQL with the SQLite queue: how much of the cluster figure the Redis enqueue costs.
        let name = format!("wxpay_bench_{}", uuid::Uuid::new_v4().simple());
        admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
        let url = format!("{}/{name}", pg_admin.rsplit_once('/').unwrap().0);
        profiles.push((
            "diagnostic (PostgreSQL + SQLite queue)",
            url,
            format!("sqlite://{}/queue-pg.sqlite", dir.path().display()),
        ));
    }
    let mut rows = Vec::new();
    for (name, db_url, queue_url) in profiles {
        println!("\n== {name}");
        let settings = settings(&keys_dir, &db_url, &queue_url);
        let commit_rate = single_row_commit_rate(&settings.database, CONCURRENCY, Duration::from_secs(3)).await;
        println!("  ceiling: single-row commits at concurrency {CONCURRENCY}: {commit_rate:.0}/s");
        let app = Application::build(settings, Clock::system(), Roles { api: true, worker: false }, Metrics::new())
            .await
            .unwrap();
        let base = app.base_url();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(app.run(stop.clone()));
        let client = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().unwrap();
        let url = format!("{base}/api/pay/notify");

        let (acked, elapsed, mut latencies) = closed_loop(&client, &url, throughput_set).await;
        let throughput = acked as f64 / elapsed.as_secs_f64();
        latencies.sort_unstable_by(f64::total_cmp);
        println!(
            "  max throughput: {acked} acknowledged in {:.2} s = {throughput:.0}/s (p50 {:.1} ms, p99 {:.1} ms)",
            elapsed.as_secs_f64(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99)
        );
        let mut at_rate = open_loop(&client, &url, rate_set).await;
        at_rate.sort_unstable_by(f64::total_cmp);
        let (p50, p99) = (percentile(&at_rate, 0.50), percentile(&at_rate, 0.99));
        println!(
            "  at {RATE_PER_SEC}/s for {RATE_SECS} s: p50 {p50:.1} ms, p99 {p99:.1} ms ({} acknowledged)",
            at_rate.len()
        );
        println!(
            "  ratios: throughput / single-row commit rate = {:.2}; throughput / RSA verify rate (one core) = {:.2}",
            throughput / commit_rate,
            throughput / verify_rate
        );
        rows.push((name, throughput, commit_rate, p50, p99));
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "\n| profile | acknowledged/s | single-row commits/s | ratio | ring RSA verify/s (1 core) | p50 @1000/s | p99 @1000/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, throughput, commit_rate, p50, p99) in rows {
        println!(
            "| {name} | {throughput:.0} | {commit_rate:.0} | {:.2} | {verify_rate:.0} | {p50:.1} ms | {p99:.1} ms |",
            throughput / commit_rate
        );
    }
    let _ = admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)"))).await;
    drop_bench_keys(&redis_url).await;
}

/// The queue keys of this run's jobs (one hash per job): left behind they fill the shared Redis.
async fn drop_bench_keys(redis_url: &str) {
    let Ok(client) = redis::Client::open(redis_url) else { return };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("wxpay-bench-*")
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

fn settings(keys_dir: &Path, db_url: &str, queue_url: &str) -> Settings {
    let mut settings = Settings::load_dev(None).unwrap();
    settings.wechat.dev_keys_dir = keys_dir.to_owned();
    settings.database.url = db_url.to_owned();
    settings.database.max_connections = 16;
    settings.notify.writers = 8;
    settings.queue.url = queue_url.to_owned();
    settings.queue.prefix = format!("wxpay-bench-{}", uuid::Uuid::new_v4().simple());
    settings.server.port = 0;
    settings.log.filter = "error".into();
    // Signed once, up front; sending them all takes longer than WeChat's 5 minutes allow.
    settings.notify.timestamp_tolerance_secs = 3600;
    settings
}

/// Distinct, signed, encrypted notifications, signed on every core before timing starts.
async fn prepare(sim_keys: &SimKeys, keys: &DevKeys, count: usize) -> Arc<Vec<Prepared>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let now = Clock::system().now();
    let chunks: Vec<_> = (0..threads)
        .map(|t| {
            let (sim_keys, appid, mchid) = (sim_keys.clone(), keys.appid.clone(), keys.mchid.clone());
            tokio::task::spawn_blocking(move || {
                (t..count)
                    .step_by(threads)
                    .map(|i| {
                        let resource = json!({
                            "mchid": mchid, "appid": appid, "out_trade_no": format!("BENCH{i:012}"),
                            "transaction_id": format!("4200001234202611{i:012}"), "trade_type": "JSAPI",
                            "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
                            "attach": "", "success_time": "2026-11-24T10:34:56+08:00", "payer": {"openid": "oBench"},
                            "amount": {"total": 1, "payer_total": 1, "currency": "CNY", "payer_currency": "CNY"}
                        })
                        .to_string();
                        let plain = PlainNotification::transaction_success(format!("bench-{i}"), resource, now);
                        let body = envelope_body(&sim_keys, &plain, "Fmwp04ry88f3");
                        let headers = signed_headers(&sim_keys, &body, now.timestamp(), &format!("NONCE{i:027}"));
                        Prepared { headers, body }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for chunk in chunks {
        all.extend(chunk.await.unwrap());
    }
    Arc::new(all)
}

/// Verifications per second on one core through [`PlatformKeys::verify`], i.e. with `ring`, the
/// library the API verifies notifications with.
///
/// [`PlatformKeys::verify`]: wxpay_recon::wechat::verify::PlatformKeys::verify
fn ring_verify_rate(sim_keys: &SimKeys) -> f64 {
    let mut keys = wxpay_recon::wechat::verify::PlatformKeys::default();
    keys.insert(sim_keys.platform_serial.clone(), sim_keys.platform.public_key());
    let body = "{\"id\":\"x\"}";
    let headers = signed_headers(sim_keys, body, 1_700_000_000, "NONCE");
    let get = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
    let signed = wxpay_recon::wechat::verify::SignedHeaders {
        timestamp: get("Wechatpay-Timestamp"),
        nonce: get("Wechatpay-Nonce"),
        signature: get("Wechatpay-Signature"),
        serial: get("Wechatpay-Serial"),
        signature_type: get("Wechatpay-Signature-Type"),
    };
    let rounds = 20_000;
    let started = Instant::now();
    for _ in 0..rounds {
        keys.verify(&signed, body.as_bytes(), 1_700_000_000, 300).unwrap();
    }
    f64::from(rounds) / started.elapsed().as_secs_f64()
}

/// One INSERT + COMMIT per transaction from `concurrency` tasks for `duration`.
async fn single_row_commit_rate(settings: &DatabaseSettings, concurrency: usize, duration: Duration) -> f64 {
    let db = wxpay_recon::deps::database(&DatabaseSettings { max_connections: 16, ..settings.clone() }).await.unwrap();
    db.writer()
        .execute("CREATE TABLE IF NOT EXISTS bench_commit (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        .await
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (db, done) = (db.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let mut tx = db.begin().await.unwrap();
                    sqlx::query("INSERT INTO bench_commit (id, body) VALUES ($1, $2)")
                        .bind(format!("{t}-{i}"))
                        .bind("x".repeat(900))
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    db.writer().execute("DROP TABLE bench_commit").await.unwrap();
    db.close().await;
    rate
}

async fn post(client: &reqwest::Client, url: &str, p: &Prepared) -> (bool, f64) {
    let started = Instant::now();
    let mut request = client.post(url).header("Content-Type", "application/json").body(p.body.clone());
    for (name, value) in &p.headers {
        request = request.header(*name, value);
    }
    let ok = request.send().await.is_ok_and(|r| r.status().as_u16() == 204);
    (ok, started.elapsed().as_secs_f64() * 1000.0)
}

/// `CONCURRENCY` senders back to back: the maximum acknowledged rate.
async fn closed_loop(client: &reqwest::Client, url: &str, set: &[Prepared]) -> (usize, Duration, Vec<f64>) {
    let started = Instant::now();
    let results: Vec<(bool, f64)> =
        futures::stream::iter(set).map(|p| post(client, url, p)).buffer_unordered(CONCURRENCY).collect().await;
    let elapsed = started.elapsed();
    let acked = results.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(acked, set.len(), "every notification must be acknowledged");
    (acked, elapsed, results.into_iter().map(|(_, ms)| ms).collect())
}

/// Notifications sent at a fixed rate, whatever the answers: latency under a steady load.
async fn open_loop(client: &reqwest::Client, url: &str, set: &[Prepared]) -> Vec<f64> {
    let interval = Duration::from_secs_f64(1.0 / RATE_PER_SEC as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(set.len());
    for (i, p) in set.iter().enumerate() {
        tokio::time::sleep_until(start + interval * u32::try_from(i).unwrap()).await;
        let (client, url) = (client.clone(), url.to_owned());
        let p = Prepared { headers: p.headers.clone(), body: p.body.clone() };
        tasks.push(tokio::spawn(async move { post(&client, &url, &p).await }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (ok, ms) = task.await.unwrap();
        assert!(ok, "every notification must be acknowledged");
        latencies.push(ms);
    }
    latencies
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
