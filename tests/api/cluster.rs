//! The cluster profile under load and failure, with real processes: one API and several
//! worker replicas on PostgreSQL + Redis, thousands of notifications (duplicated and
//! shuffled by the simulator), and workers, Redis or PostgreSQL failing mid-run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpay_recon::config::DatabaseSettings;
use wxpay_recon::storage::Db;

use crate::chaos::{Proxy, RedisServer};
use crate::helpers::*;

async fn count(db: &Db, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db.reader()).await.unwrap();
    n
}

async fn direct_db(env: &TestEnv) -> Db {
    Db::connect(&DatabaseSettings { url: env.settings().database.url, max_connections: 8, acquire_timeout_ms: 5000 })
        .await
        .unwrap()
}

/// `n` NOTPAY orders, in our database and at the simulator, as if placed through the API.
/// The API's ordering path has its own tests; seeding spares these load tests three RSA
/// signatures per order, so their time goes to the notification path they are about.
async fn seed_orders(env: &TestEnv, db: &Db, api: &str, n: usize) -> Vec<String> {
    db.migrate().await.unwrap();
    let now = env.clock.now_ms();
    db.seed_products(&env.settings().catalog, now).await.unwrap();
    let (openid, orders) = insert_sticker_orders(env, db, "oLoadTestUser000000000000001", "LOAD", n).await;
    let seed: Vec<Value> = orders
        .iter()
        .map(|no| json!({"out_trade_no": no, "total": 1, "openid": openid, "notify_url": format!("{api}/api/pay/notify"), "description": "Sticker"}))
        .collect();
    let response =
        reqwest::Client::new().post(format!("{}/sim/orders", env.sim.base_url())).json(&seed).send().await.unwrap();
    assert!(response.status().is_success());
    orders
}

/// The simulator settles every order and sends `copies` deliveries of each notification.
async fn pay_all(sim: &str, orders: &[String], copies: usize) {
    let response: Value = reqwest::Client::new()
        .post(format!("{sim}/sim/pay-batch"))
        .json(&json!({ "out_trade_nos": orders, "copies": copies, "shuffle": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["paid"].as_u64(), Some(orders.len() as u64), "{response}");
}

async fn processed(db: &Db) -> i64 {
    count(db, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await
}

/// Every order SUCCESS through exactly one applied transition; no inbox row left behind.
async fn assert_settled_exactly_once(db: &Db, orders: usize) {
    let n = orders as i64;
    assert_eq!(count(db, "SELECT COUNT(*) FROM notifications").await, n, "one inbox entry per notification id");
    assert_eq!(db.inbox_backlog().await.unwrap().0, 0, "no inbox entry left unapplied");
    assert_eq!(orders_with_status(db, "SUCCESS").await, n);
    assert_eq!(count(db, "SELECT COUNT(*) FROM order_events WHERE applied = 1 AND to_status = 'SUCCESS'").await, n);
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM (SELECT order_id FROM order_events WHERE applied = 1 AND to_status = 'SUCCESS' GROUP BY order_id HAVING COUNT(*) > 1) AS twice").await,
        0,
        "no order changed twice"
    );
    assert!(db.dead_jobs().await.unwrap().is_empty(), "no dead job");
}

async fn sim_notifications(sim: &str) -> Vec<Value> {
    let all: Value = reqwest::get(format!("{sim}/sim/notifications")).await.unwrap().json().await.unwrap();
    all.as_array().cloned().unwrap_or_default()
}

async fn wait_all_processed(db: &Db, orders: usize, timeout: Duration) {
    eventually("every notification applied", timeout, || async { processed(db).await == orders as i64 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_replicas_killed_every_two_seconds_apply_each_payment_once() {
    const ORDERS: usize = 5000;
    let env = TestEnv::new(Backend::Cluster).await;
    // One API and three workers start together on a fresh database: migrations take a lock.
    let (api, w1, w2, w3) = tokio::join!(
        env.spawn_process(&["serve", "--api-only"]),
        env.spawn_process(&["serve", "--worker-only"]),
        env.spawn_process(&["serve", "--worker-only"]),
        env.spawn_process(&["serve", "--worker-only"]),
    );
    let mut workers = [w1, w2, w3];
    let db = direct_db(&env).await;
    let orders = seed_orders(&env, &db, &api.base, ORDERS).await;
    let started = Instant::now();
    pay_all(&env.sim.base_url(), &orders, 3).await;

    let mut kills = 0;
    while processed(&db).await < ORDERS as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not settled after 300 s ({} of {ORDERS})",
            processed(&db).await
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = kills % workers.len();
        workers[victim].sigkill();
        workers[victim].wait().await;
        eprintln!(
            "{:>5.1} s: killed worker {victim}; {} stored, {} applied",
            started.elapsed().as_secs_f64(),
            count(&db, "SELECT COUNT(*) FROM notifications").await,
            processed(&db).await
        );
        workers[victim] = env.spawn_process(&["serve", "--worker-only"]).await;
        kills += 1;
    }
    eprintln!("{:>5.1} s: all {ORDERS} applied after {kills} kills", started.elapsed().as_secs_f64());
    assert!(kills >= 2, "workers were killed during the run ({kills})");
    assert_settled_exactly_once(&db, ORDERS).await;
    // Duplicates may still be on their way (a copy whose answer timed out under load is sent again
    // on WeChat's schedule): every one is acknowledged in the end, and stored as a delivery.
    let sim = env.sim.base_url();
    eventually("every delivery acknowledged", Duration::from_secs(120), || async {
        sim_notifications(&sim).await.into_iter().all(|n| n["delivered"] == true)
    })
    .await;
    let (deliveries,): (i64,) = sqlx::query_as("SELECT CAST(SUM(deliveries) AS BIGINT) FROM notifications")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert!(deliveries >= 3 * ORDERS as i64, "all duplicate deliveries were received: {deliveries}");
    assert_settled_exactly_once(&db, ORDERS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run_loses_nothing_and_acks_only_after_commit() {
    const ORDERS: usize = 2000;
    let env = TestEnv::new(Backend::Cluster).await;
    let mut redis = RedisServer::start().await;
    let queue = [("QUEUE__URL", redis.url())];
    let (api, _w1, _w2) = tokio::join!(
        env.spawn_process_with(&["serve", "--api-only"], &queue),
        env.spawn_process_with(&["serve", "--worker-only"], &queue),
        env.spawn_process_with(&["serve", "--worker-only"], &queue),
    );
    let db = direct_db(&env).await;
    let orders = seed_orders(&env, &db, &api.base, ORDERS).await;
    pay_all(&env.sim.base_url(), &orders, 2).await;

    eventually("some progress before the outage", Duration::from_secs(60), || async { processed(&db).await >= 100 })
        .await;
    redis.kill().await;
    let ready: Value = reqwest::get(format!("{}/readyz", api.ops)).await.unwrap().json().await.unwrap();
    assert_eq!(ready["database"], "ok");
    assert!(ready["queue"].as_str().unwrap().starts_with("error"), "{ready}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart().await; // empty: every job queued before the crash is gone

    wait_all_processed(&db, ORDERS, Duration::from_secs(180)).await;
    assert_settled_exactly_once(&db, ORDERS).await;
    // Storing never depended on Redis: every delivery was acknowledged the first time.
    let notifications = sim_notifications(&env.sim.base_url()).await;
    assert_eq!(notifications.len(), 2 * ORDERS);
    let retried: Vec<&Value> = notifications.iter().filter(|n| n["attempts"] != json!([204])).collect();
    assert!(
        retried.is_empty(),
        "deliveries that were not acknowledged at once: {:?}",
        &retried[..retried.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_run_answers_fail_then_recovers_everything() {
    const ORDERS: usize = 2000;
    let env = TestEnv::new(Backend::Cluster).await;
    let direct = env.settings().database.url;
    let target = tokio::net::lookup_host(direct.split('@').nth(1).unwrap().split('/').next().unwrap())
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let via_proxy = [("DATABASE__URL", direct.replace(&target.to_string(), &proxy.addr.to_string()))];
    let (api, _w1, _w2) = tokio::join!(
        env.spawn_process_with(&["serve", "--api-only"], &via_proxy),
        env.spawn_process_with(&["serve", "--worker-only"], &via_proxy),
        env.spawn_process_with(&["serve", "--worker-only"], &via_proxy),
    );
    let db = direct_db(&env).await;
    let orders = seed_orders(&env, &db, &api.base, ORDERS).await;
    pay_all(&env.sim.base_url(), &orders, 1).await;

    eventually("notifications arriving before the outage", Duration::from_secs(60), || async {
        count(&db, "SELECT COUNT(*) FROM notifications").await >= 100
    })
    .await;
    proxy.cut().await;
    let during: Value = reqwest::get(format!("{}/readyz", api.ops)).await.unwrap().json().await.unwrap();
    assert!(during["database"].as_str().unwrap().starts_with("error"), "{during}");
    assert_eq!(during["queue"], "ok");
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();

    wait_all_processed(&db, ORDERS, Duration::from_secs(180)).await;
    assert_settled_exactly_once(&db, ORDERS).await;
    let notifications = sim_notifications(&env.sim.base_url()).await;
    let refused: usize = notifications
        .iter()
        .map(|n| n["attempts"].as_array().unwrap().iter().filter(|s| s.as_u64() != Some(204)).count())
        .sum();
    assert!(refused > 0, "the outage was seen by WeChat as FAIL answers");
    assert!(notifications.iter().all(|n| n["delivered"] == true), "WeChat's retries delivered everything");
}
