//! The notify endpoint faces the internet: junk from anyone must cost a counter increment, not a
//! database row, a log line or the writer WeChat's genuine notifications need.
//!
//! - A flood of 20,000 junk notifications (every way to fail before a valid signature) beside
//!   1,000 genuine ones, against the real binary: every genuine one acknowledged within WeChat's
//!   5 s and applied; the rejection table stays under its cap; the process memory stays bounded;
//!   every junk answer is the same generic FAIL.
//! - The rejection sample is capped and its fields cut (cheap, in-process).
//! - `/metrics` renders cached gauges; the background refresher computes them, and on PostgreSQL
//!   the server itself stops its queries at their deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use wxpay_recon::config::DatabaseSettings;
use wxpay_recon::sim::notifier::signed_headers;
use wxpay_recon::storage::Db;

use crate::helpers::*;

/// Genuine notifications, and junk ones sent at the same time.
const VALID: usize = 1_000;
const JUNK: usize = 20_000;
/// The rejection table's cap in the flood test (far below what the flood would otherwise write).
const MAX_ROWS: usize = 500;
/// What the process may grow to, resident, during the flood: 54-62 MiB measured on either
/// profile (debug build); the bound leaves room for allocator slack, not for a leak per request.
const RSS_BOUND_KIB: u64 = 160 * 1024;
/// WeChat gives up on an answer after 5 s and redelivers later.
const WECHAT_PATIENCE: Duration = Duration::from_secs(5);
/// The generic answer of every refusal.
const REFUSED: &str = "notification refused";

type Headers = Vec<(&'static str, String)>;

/// Headers signed once for the whole flood (RSA signing 20,000 times would dominate the test).
struct Signed {
    now: Headers,
    stale: Headers,
    future: Headers,
    far_future: Headers,
}

impl Signed {
    fn new(env: &TestEnv, template: &str) -> Self {
        let now = env.clock.now().timestamp();
        let sign = |ts: i64| signed_headers(&env.sim_keys, template, ts, "JUNKNONCE0000000000000000000000J");
        Self { now: sign(now), stale: sign(now - 600), future: sign(now + 10_000), far_future: sign(i64::MAX) }
    }
}

/// The `i`-th junk notification: headers and body, cycling through every way to fail before a
/// valid signature. `template` is a genuine body (signed for itself, not for these headers).
fn junk(i: usize, signed: &Signed, template: &str) -> (Headers, Vec<u8>) {
    let with = |name: &str, value: String| -> Headers {
        signed.now.iter().map(|(n, v)| if *n == name { (*n, value.clone()) } else { (*n, v.clone()) }).collect()
    };
    let body = template.as_bytes().to_vec();
    match i % 10 {
        // Oversized headers: 4 KiB mostly (refused by the notify pre-check), 256 KiB at times
        // (over server.max_header_bytes: refused with 431 before a handler runs).
        0 => {
            let len = if i.is_multiple_of(100) { 256 * 1024 } else { 4096 };
            (with("Wechatpay-Serial", "F".repeat(len)), body)
        }
        1 => (Vec::new(), body),
        2 => (signed.stale.clone(), body),
        3 => (if i % 20 == 3 { signed.far_future.clone() } else { signed.future.clone() }, body),
        4 => {
            let serial = if i % 20 == 4 { format!("{i:040X}") } else { format!("PUB_KEY_ID_{i:032}") };
            (with("Wechatpay-Serial", serial), body)
        }
        5 => (with("Wechatpay-Signature", format!("WECHATPAY/SIGNTEST/{}", B64.encode([7u8; 256]))), body),
        6 => (with("Wechatpay-Signature", "not base64 at all!".to_owned()), body),
        // Well-formed but wrong: the only junk that reaches RSA.
        7 => (with("Wechatpay-Signature", B64.encode([u8::try_from(i % 251).unwrap(); 256])), body),
        // Over server.body_limit_bytes (64 KiB).
        8 => (signed.now.clone(), vec![b'x'; 80 * 1024]),
        _ => {
            let ts = if i % 20 == 9 { "-9223372036854775808" } else { "1.7e9" };
            (with("Wechatpay-Timestamp", ts.to_owned()), body)
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn post(client: &reqwest::Client, base: &str, headers: &Headers, body: Vec<u8>) -> (u16, Value) {
    let mut request = client.post(format!("{base}/api/pay/notify")).header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.body(body).send().await.expect("notify request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn junk_flood_never_delays_a_genuine_notification(backend: Backend) {
    let started = Instant::now();
    let env = TestEnv::new(backend).await;
    let overrides = [
        ("NOTIFY__REJECTION_MAX_ROWS", MAX_ROWS.to_string()),
        // Sample far more than the default, so the cap (not the rate) is what bounds the table.
        ("NOTIFY__REJECTION_SAMPLES_PER_SEC", "1000".to_owned()),
    ];
    let process = env.spawn_process_with(&["serve", "--dev-keys"], &overrides).await;
    let pid = process.child.id().expect("pid");
    let base = process.base.clone();
    let db = Db::connect(&DatabaseSettings {
        url: env.settings().database.url.clone(),
        max_connections: 2,
        acquire_timeout_ms: 5000,
    })
    .await
    .unwrap();
    let (openid, orders) = insert_sticker_orders(&env, &db, "oAbuseTestUser00000000000001", "ABUSE", VALID).await;
    let genuine: Vec<(Headers, String)> = orders
        .iter()
        .enumerate()
        .map(|(i, no)| {
            let resource = env.transaction_json(no, 1, &openid, &format!("42000{i:023}"));
            env.notification(&format!("abuse-{i}"), &resource)
        })
        .collect();
    let template = genuine[0].1.clone();
    let signed = Signed::new(&env, &template);
    let junk: Vec<(Headers, Vec<u8>)> = (0..JUNK).map(|i| junk(i, &signed, &template)).collect();
    let prepared = started.elapsed();

    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampling = {
        let peak = Arc::clone(&peak_rss);
        tokio::spawn(async move {
            while let Some(kib) = rss_kib(pid) {
                peak.fetch_max(kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let flood_started = Instant::now();
    let junk_client = reqwest::Client::new();
    let junk_answers = futures::stream::iter(junk)
        .map(|(headers, body)| {
            let (client, base) = (&junk_client, &base);
            async move { post(client, base, &headers, body).await }
        })
        .buffer_unordered(48)
        .collect::<Vec<_>>()
        .map(|answers| (answers, flood_started.elapsed()));
    let valid_client = reqwest::Client::new();
    let genuine_answers = async {
        // The genuine ones start once the flood is under way.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let answers = futures::stream::iter(genuine)
            .map(|(headers, body)| {
                let (client, base) = (&valid_client, &base);
                async move {
                    let (sent, offset) = (Instant::now(), flood_started.elapsed());
                    let (status, _) = post(client, base, &headers, body.into_bytes()).await;
                    (status, sent.elapsed(), offset)
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        (answers, flood_started.elapsed())
    };
    let ((junk_answers, flood), (genuine_answers, genuine_done)) = tokio::join!(junk_answers, genuine_answers);
    let during = genuine_answers.iter().filter(|(_, _, offset)| *offset < flood).count();
    assert!(during >= VALID / 2, "only {during} genuine notifications were sent while the junk flowed ({flood:?})");

    let slowest = genuine_answers.iter().map(|(_, took, _)| *took).max().unwrap();
    let refused: Vec<_> = genuine_answers.iter().filter(|(status, _, _)| *status != 204).collect();
    assert!(refused.is_empty(), "genuine notifications not acknowledged: {:?}", &refused[..refused.len().min(5)]);
    assert!(slowest < WECHAT_PATIENCE, "the slowest genuine notification took {slowest:?}");
    for (status, answer) in &junk_answers {
        if *status == 431 {
            continue; // the request head over server.max_header_bytes: refused by the server itself
        }
        assert!(matches!(status, 401 | 413), "junk answered {status}: {answer}");
        assert_eq!((answer["code"].as_str(), answer["message"].as_str()), (Some("FAIL"), Some(REFUSED)), "{answer}");
    }

    eventually("every genuine payment applied", Duration::from_secs(120), || async {
        orders_with_status(&db, "SUCCESS").await == i64::try_from(VALID).unwrap()
    })
    .await;
    let exposition = reqwest::get(format!("{}/metrics", process.ops)).await.unwrap().text().await.unwrap();
    let rejected: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("wxpay_notify_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // The heads over server.max_header_bytes never reach the handler: the server counts them.
    let head_too_large =
        metric(&exposition, "wxpay_http_connections_total{listener=\"public\",outcome=\"header_too_large\"}");
    assert!(head_too_large > 0.0, "the 256 KiB serials were refused by the server");
    assert_eq!(
        rejected + head_too_large,
        f64::from(u32::try_from(JUNK).unwrap()),
        "every junk notification is counted"
    );
    let sampled =
        |outcome: &str| metric(&exposition, &format!("wxpay_notify_rejection_samples_total{{outcome=\"{outcome}\"}}"));
    let pruned = metric(&exposition, "wxpay_notify_rejections_pruned_total");
    assert!(pruned > 0.0, "the flood reached the cap, so rows were pruned");
    let (rows, longest_field, longest_excerpt): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(MAX(LENGTH(serial)), 0), COALESCE(MAX(LENGTH(body_excerpt)), 0) FROM notify_rejections",
    )
    .fetch_one(db.reader())
    .await
    .unwrap();
    assert!(rows <= i64::try_from(MAX_ROWS).unwrap(), "{rows} rejection rows, cap {MAX_ROWS}");
    assert!(longest_field <= 256 && longest_excerpt <= 1024, "fields cut: {longest_field}, {longest_excerpt}");
    sampling.abort();
    let peak = peak_rss.load(Ordering::Relaxed);
    assert!(peak > 0 && peak < RSS_BOUND_KIB, "peak RSS {peak} KiB (bound {RSS_BOUND_KIB} KiB)");
    eprintln!(
        "abuse flood ({backend:?}): prepared in {prepared:?}; {JUNK} junk + {VALID} genuine in {flood:?} (genuine done at {genuine_done:?}, {during} sent during the junk); \
         slowest genuine {slowest:?}; peak RSS {} MiB; samples stored {} rate_limited {} queue_full {}; \
         pruned {pruned}; rows {rows}; test wall time {:?}",
        peak / 1024,
        sampled("stored"),
        sampled("rate_limited"),
        sampled("queue_full"),
        started.elapsed()
    );
    db.close().await;
}

/// A burst of oversized junk leaves at most `rejection_max_rows` rows, every field cut, while
/// every rejection is counted.
async fn the_rejection_sample_is_capped_and_cut(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.notify.rejection_max_rows = 5;
            s.notify.rejection_samples_per_sec = 1000;
        })
        .await;
    let (_, body) = env.notification("n-capped", "{}");
    let now = env.clock.now().timestamp();
    for i in 0..30 {
        let mut headers = signed_headers(&env.sim_keys, &body, now - 600, "CAPPED00000000000000000000000000");
        // Stale and carrying an oversized serial: refused by the cheap precheck.
        headers
            .iter_mut()
            .filter(|(n, _)| *n == "Wechatpay-Serial")
            .for_each(|(_, v)| *v = format!("{i}{}", "S".repeat(8 * 1024)));
        let (status, answer) = app.post_notify(&headers, body.clone()).await;
        assert_eq!((status, answer["message"].as_str()), (401, Some(REFUSED)), "{answer}");
    }
    let stored = || app.metrics.notify_rejection_samples.with_label_values(&["stored"]).get();
    eventually("all thirty samples written", Duration::from_secs(10), || async { stored() == 30 }).await;
    assert_eq!(app.metrics.notify_rejected.with_label_values(&["oversized_header"]).get(), 30);
    assert_eq!(app.state.db.rejection_rows().await.unwrap(), 5, "pruned to the cap, oldest first");
    assert!(app.metrics.notify_rejections_pruned.get() >= 25);
    let (serial, id): (String, i64) =
        sqlx::query_as("SELECT serial, id FROM notify_rejections ORDER BY id DESC LIMIT 1")
            .fetch_one(app.state.db.reader())
            .await
            .unwrap();
    assert!(serial.len() <= 256 && serial.starts_with("29"), "the newest kept, cut: {} bytes", serial.len());
    assert!(id >= 30);
}

/// A scrape renders the cached gauges and runs no query; the background refresher updates them.
async fn scrapes_render_cached_gauges(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, |s| s.gauges.refresh_interval_ms = 3_600_000).await;
    eventually("the first background refresh", Duration::from_secs(10), || async {
        app.metrics.gauges_refreshed.get() > 0
    })
    .await;
    let (client, _) = env.client(&app).await;
    client.create_order("mug", 1).await.unwrap();
    let scrape = || async { reqwest::get(format!("{}/metrics", app.ops)).await.unwrap().text().await.unwrap() };
    let notpay = r#"wxpay_orders{status="NOTPAY"}"#;
    assert_eq!(metric(&scrape().await, notpay), 0.0, "a scrape does not recompute: the value is the cached one");
    app.state.operations.refresh_gauges().await;
    assert_eq!(metric(&scrape().await, notpay), 1.0, "the refresher's value is what the scrape shows");
    assert!(metric(&scrape().await, "wxpay_gauges_refreshed_timestamp_seconds") > 0.0);
}

/// On PostgreSQL the gauge queries' deadline is enforced by the server: a query outliving it is
/// cancelled there (statement_timeout), not merely abandoned by our future while it keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stops_a_gauge_query_past_its_deadline() {
    let env = TestEnv::new(Backend::Cluster).await;
    let db = Db::connect(&env.settings().database).await.unwrap();
    let bounded = db.with_statement_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = sqlx::query("SELECT pg_sleep(5)").execute(bounded.reader()).await.unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "stopped by the server after {:?}", started.elapsed());
    let (timeout,): (String,) = sqlx::query_as("SHOW statement_timeout").fetch_one(bounded.reader()).await.unwrap();
    assert_eq!(timeout, "200ms");
    let (unbounded,): (String,) = sqlx::query_as("SHOW statement_timeout").fetch_one(db.reader()).await.unwrap();
    assert_eq!(unbounded, "0", "the service's own pool is untouched");
}

/// The refreshed-at timestamp moves only when every gauge query answered: while `orders` is
/// locked the orders gauge times out, the timestamp stays put (so DatabaseGaugesStale can see
/// it age), and it moves again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gauge_refresh_does_not_look_fresh() {
    let env = TestEnv::new(Backend::Cluster).await;
    let app = env.spawn_app_with(ALL_ROLES, |s| s.gauges.query_timeout_ms = 300).await;
    let refreshed = || app.metrics.gauges_refreshed.get();
    let failures = || app.metrics.gauges_refresh_failures.get();
    eventually("a first full refresh", Duration::from_secs(10), || async { refreshed() > 0 }).await;

    let locker = Db::connect(&env.settings().database).await.unwrap();
    let mut tx = locker.reader().begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.unwrap();
    let before = failures();
    eventually("a refresh fails on the lock", Duration::from_secs(10), || async { failures() > before }).await;
    let stale = refreshed();
    let failed = failures();
    eventually("two more failed refreshes, two seconds later", Duration::from_secs(20), || async {
        failures() >= failed + 2 && env.clock.now().timestamp() >= stale + 2
    })
    .await;
    assert_eq!(refreshed(), stale, "a refresh with a failed query does not move the timestamp");

    tx.rollback().await.unwrap();
    eventually("a full refresh once the lock is gone", Duration::from_secs(10), || async { refreshed() > stale }).await;
}

crate::both_profiles!(
    junk_flood_never_delays_a_genuine_notification,
    the_rejection_sample_is_capped_and_cut,
    scrapes_render_cached_gauges,
);
