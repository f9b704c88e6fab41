//! Notify benchmark: how many WeChat notifications per second the API acknowledges (verified,
//! decrypted, committed to the inbox, answered 204) and how many per second the worker applies
//! to the books (order SUCCESS + event, inbox marked processed), with the latency from the 204
//! to the commit that applied each one, on each profile, at full speed (64 senders back to back)
//! and at a fixed offered rate. Beside them, the ceilings measured in the same run:
//!
//! - RSA-2048 signature verifications per second of the library the service uses (one core,
//!   through `PlatformKeys::verify`),
//! - single-row commits per second on the same database at the same concurrency (what one
//!   commit per notification would allow).
//!
//! Every notification names an order created beforehand, as in production. The embedded profile
//! runs `serve` (API and worker in one process, the notify handler waking the applier); the
//! cluster profile runs an API-only and a worker-only instance (separate replicas in production,
//! so the worker finds new entries by its poll).
//!
//! Run: `cargo bench --bench notify_ingest` (PostgreSQL from `WXPAY_TEST_DATABASE_URL`, Redis
//! from `WXPAY_TEST_REDIS_URL`, defaults as in scripts/test.sh). `BENCH_N` sets the number of
//! notifications of the full-speed run (default 30000: shorter runs are dominated by warm-up),
//! `BENCH_RATE` and `BENCH_RATE_SECS` the fixed-rate run (default 1000/s for 60 s),
//! `BENCH_PROFILE=embedded` or `cluster` runs one profile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{dev_keys, drop_bench_keys, env_or, percentile};
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

struct Prepared {
    /// The notification id (`bench-<n>`), to find when it was applied.
    id: String,
    headers: Headers,
    body: String,
}

/// One run's figures.
struct Figures {
    acked_per_sec: f64,
    applied_per_sec: f64,
    applied_while_loaded_per_sec: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    apply_p50_ms: f64,
    apply_p99_ms: f64,
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let n = env_or("BENCH_N", 30_000usize);
    let rate = env_or("BENCH_RATE", 1000usize);
    let rate_secs = env_or("BENCH_RATE_SECS", 60usize);
    let only = std::env::var("BENCH_PROFILE").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let (keys_dir, keys, sim_keys) = dev_keys(dir.path());

    let total = n + rate * rate_secs;
    println!(
        "notify benchmark: {n} notifications at full speed ({CONCURRENCY} concurrent senders), then {rate}/s offered for {rate_secs} s"
    );
    let started = Instant::now();
    let all = prepare(&sim_keys, &keys, total).await;
    println!("  prepared (signed) {total} in {:.1} s", started.elapsed().as_secs_f64());

    let verify_rate = verify_rate(&sim_keys);
    println!("\nceiling: RSA-2048 verify, one core: {verify_rate:.0}/s");

    let pg_admin = std::env::var("WXPAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis = std::env::var("WXPAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis_url = redis.clone();
    let pg_name = format!("wxpay_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&pg_admin).await.expect("PostgreSQL for the cluster profile");
    admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {pg_name}"))).await.unwrap();
    let pg_url = format!("{}/{pg_name}", pg_admin.rsplit_once('/').unwrap().0);

    let profiles = [
        (
            "embedded",
            "embedded (SQLite)",
            format!("sqlite://{}/data.sqlite", dir.path().display()),
            format!("sqlite://{}/queue.sqlite", dir.path().display()),
        ),
        ("cluster", "cluster (PostgreSQL + Redis)", pg_url.clone(), redis),
    ];
    let mut rows = Vec::new();
    for (key, name, db_url, queue_url) in profiles {
        if !only.is_empty() && only != key {
            continue;
        }
        println!("\n== {name}");
        let settings = settings(&keys_dir, &db_url, &queue_url);
        let commit_rate = single_row_commit_rate(&settings.database, CONCURRENCY, Duration::from_secs(3)).await;
        println!("  ceiling: single-row commits at concurrency {CONCURRENCY}: {commit_rate:.0}/s");

        // `serve` on the embedded profile; an API replica and a worker replica on the cluster one.
        let split = key == "cluster";
        let roles = Roles { api: true, worker: !split };
        let app = Application::build(settings.clone(), Clock::system(), roles, Metrics::new()).await.unwrap();
        let base = app.base_url();
        let db = app.state.db.clone();
        seed_orders(&db, total).await;
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(app.run(stop.clone()));
        if split {
            let mut worker_settings = settings.clone();
            worker_settings.server.port = 0;
            let worker = Application::build(
                worker_settings,
                Clock::system(),
                Roles { api: false, worker: true },
                Metrics::new(),
            )
            .await
            .unwrap();
            tokio::spawn(worker.run(stop.clone()));
        }
        let client = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().unwrap();
        let url = format!("{base}/api/pay/notify");
        let (full_set, rate_set) = all.split_at(n);

        let full = measure(&db, full_set, || closed_loop(&client, &url, full_set)).await;
        report("full speed", &full);
        let fixed = measure(&db, rate_set, || open_loop(&client, &url, rate_set, rate)).await;
        report(&format!("{rate}/s offered"), &fixed);
        println!(
            "  ratios: applied / acknowledged = {:.2} (full speed), {:.2} ({rate}/s); acknowledged / single-row commits = {:.2}; acknowledged / RSA verify (one core) = {:.2}",
            full.applied_per_sec / full.acked_per_sec,
            fixed.applied_per_sec / fixed.acked_per_sec,
            full.acked_per_sec / commit_rate,
            full.acked_per_sec / verify_rate
        );
        rows.push((name, full, fixed, commit_rate));
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "\n| profile | acknowledged/s | applied/s | applied while loaded/s | applied ÷ acked | ack→applied p50 / p99 | at {rate}/s: ack→applied p50 / p99 | single-row commits/s | RSA verify/s (1 core) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, full, fixed, commit_rate) in rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {commit_rate:.0} | {verify_rate:.0} |",
            full.acked_per_sec,
            full.applied_per_sec,
            full.applied_while_loaded_per_sec,
            full.applied_per_sec / full.acked_per_sec,
            full.apply_p50_ms,
            full.apply_p99_ms,
            fixed.apply_p50_ms,
            fixed.apply_p99_ms,
        );
    }
    let _ = admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)"))).await;
    drop_bench_keys(&redis_url, "wxpay-bench-").await;
}

fn report(what: &str, f: &Figures) {
    println!(
        "  {what}: acknowledged {:.0}/s (answer p50 {:.1} ms, p99 {:.1} ms); applied {:.0}/s ({:.0}/s while loaded); ack→applied p50 {:.0} ms, p99 {:.0} ms",
        f.acked_per_sec,
        f.ack_p50_ms,
        f.ack_p99_ms,
        f.applied_per_sec,
        f.applied_while_loaded_per_sec,
        f.apply_p50_ms,
        f.apply_p99_ms
    );
}

/// Milliseconds since the Unix epoch: the clock the service stamps `processed_at_ms` with.
fn wall_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// NOTPAY orders `BENCH000000000000`.. for every prepared notification, inserted in bulk (the
/// bench measures applying, not order creation: see the order_create bench).
async fn seed_orders(db: &wxpay_recon::storage::Db, count: usize) {
    let now = wall_ms();
    let (user_id,): (i64,) = sqlx::query_as(
        "INSERT INTO users (openid, session_key_enc, created_at_ms, updated_at_ms) VALUES ('oBench', 'x', $1, $1) RETURNING id",
    )
    .bind(now)
    .fetch_one(db.writer())
    .await
    .unwrap();
    const ROWS: usize = 500;
    for start in (0..count).step_by(ROWS) {
        let end = (start + ROWS).min(count);
        let values: Vec<String> = (start..end)
            .map(|i| format!("('BENCH{i:012}', $1, 'oBench', 'sticker', 1, 1, 'bench', 'NOTPAY', $2, $3, $3)"))
            .collect();
        let sql = format!(
            "INSERT INTO orders (out_trade_no, user_id, payer_openid, product_id, quantity, amount_fen, description,
                 status, time_expire_ms, created_at_ms, updated_at_ms) VALUES {}",
            values.join(", ")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(now + 86_400_000)
            .bind(now)
            .execute(db.writer())
            .await
            .unwrap();
    }
}

/// Sends `set` with `send`, then waits until every one of them is applied, and computes the
/// figures from the client's acknowledgement times and the inbox's `processed_at_ms`.
async fn measure<F, Fut>(db: &wxpay_recon::storage::Db, set: &[Prepared], send: F) -> Figures
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Vec<(usize, i64, f64)>>,
{
    let processed = |db: wxpay_recon::storage::Db| async move {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL")
            .fetch_one(db.reader())
            .await
            .unwrap();
        count as usize
    };
    let before = processed(db.clone()).await;
    let start_ms = wall_ms();
    let started = Instant::now();
    let acks = send().await;
    let send_secs = started.elapsed().as_secs_f64();
    let applied_at_end_of_send = processed(db.clone()).await - before;
    let deadline = Instant::now() + Duration::from_secs(600);
    while processed(db.clone()).await - before < set.len() {
        assert!(Instant::now() < deadline, "not every notification was applied within 10 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT notification_id, processed_at_ms FROM notifications WHERE processed_at_ms IS NOT NULL")
            .fetch_all(db.reader())
            .await
            .unwrap();
    let processed_at: std::collections::HashMap<String, i64> = rows.into_iter().collect();
    let mut apply_latency = Vec::with_capacity(acks.len());
    let mut answer_latency = Vec::with_capacity(acks.len());
    let mut last_applied = start_ms;
    for (i, acked_ms, answer_ms) in &acks {
        let id = &set[*i].id;
        let at = *processed_at.get(id).unwrap_or_else(|| {
            let sample: Vec<_> = processed_at.keys().take(3).collect();
            panic!("{id} not processed ({} processed, e.g. {sample:?})", processed_at.len())
        });
        last_applied = last_applied.max(at);
        apply_latency.push((at - acked_ms).max(0) as f64);
        answer_latency.push(*answer_ms);
    }
    apply_latency.sort_unstable_by(f64::total_cmp);
    answer_latency.sort_unstable_by(f64::total_cmp);
    Figures {
        acked_per_sec: set.len() as f64 / send_secs,
        applied_per_sec: set.len() as f64 / ((last_applied - start_ms) as f64 / 1000.0).max(send_secs),
        applied_while_loaded_per_sec: applied_at_end_of_send as f64 / send_secs,
        ack_p50_ms: percentile(&answer_latency, 0.50),
        ack_p99_ms: percentile(&answer_latency, 0.99),
        apply_p50_ms: percentile(&apply_latency, 0.50),
        apply_p99_ms: percentile(&apply_latency, 0.99),
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
    // Our notify_url is derived from the bound address: plain http on this machine.
    settings.wechat.allow_insecure_http = true;
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
                        Prepared { id: format!("bench-{i}"), headers, body }
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

/// Verifications per second on one core through [`PlatformKeys::verify`], i.e. with the library
/// the API verifies notifications with.
///
/// [`PlatformKeys::verify`]: wxpay_recon::wechat::verify::PlatformKeys::verify
fn verify_rate(sim_keys: &SimKeys) -> f64 {
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

/// Sends one notification; returns whether it was acknowledged and how long the answer took.
async fn post(client: &reqwest::Client, url: &str, p: &Prepared) -> (bool, f64) {
    let started = Instant::now();
    let mut request = client.post(url).header("Content-Type", "application/json").body(p.body.clone());
    for (name, value) in &p.headers {
        request = request.header(*name, value);
    }
    let ok = request.send().await.is_ok_and(|r| r.status().as_u16() == 204);
    (ok, started.elapsed().as_secs_f64() * 1000.0)
}

/// `CONCURRENCY` senders back to back: the maximum acknowledged rate. Returns (index, when
/// acknowledged, answer latency) for each.
async fn closed_loop(client: &reqwest::Client, url: &str, set: &[Prepared]) -> Vec<(usize, i64, f64)> {
    let results: Vec<(usize, i64, f64)> = futures::stream::iter(set.iter().enumerate())
        .map(|(i, p)| async move {
            let (ok, ms) = post(client, url, p).await;
            assert!(ok, "every notification must be acknowledged");
            (i, wall_ms(), ms)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results
}

/// Notifications sent at `rate` per second, whatever the answers: latency under a steady load.
async fn open_loop(client: &reqwest::Client, url: &str, set: &[Prepared], rate: usize) -> Vec<(usize, i64, f64)> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(set.len());
    for (i, p) in set.iter().enumerate() {
        tokio::time::sleep_until(start + interval * u32::try_from(i).unwrap()).await;
        let (client, url) = (client.clone(), url.to_owned());
        let p = Prepared { id: p.id.clone(), headers: p.headers.clone(), body: p.body.clone() };
        tasks.push(tokio::spawn(async move {
            let (ok, ms) = post(&client, &url, &p).await;
            assert!(ok, "every notification must be acknowledged");
            (i, wall_ms(), ms)
        }));
    }
    let mut acks = Vec::with_capacity(tasks.len());
    for task in tasks {
        acks.push(task.await.unwrap());
    }
    acks
}
