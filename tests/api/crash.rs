//! Crash safety with real processes: a worker killed with SIGKILL while holding jobs loses
//! nothing, and nothing is applied twice.

use std::time::Duration;

use futures::StreamExt;
use wxpay_recon::config::DatabaseSettings;
use wxpay_recon::demo::MiniProgram;
use wxpay_recon::storage::Db;

use crate::helpers::*;

const ORDERS: usize = 1500;

async fn count(db: &Db, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db.reader()).await.unwrap();
    n
}

/// Jobs the queue shows as taken by a worker and not finished.
async fn held_jobs(env: &TestEnv) -> i64 {
    match env.backend {
        Backend::Embedded => {
            let queue = sqlx::SqlitePool::connect(&env.settings().queue.url).await.unwrap();
            let (held,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM Jobs WHERE status IN ('Queued', 'Running') AND lock_by IS NOT NULL",
            )
            .fetch_one(&queue)
            .await
            .unwrap();
            held
        }
        Backend::Cluster => {
            let client = redis::Client::open(env.redis.as_str()).unwrap();
            // The shared Redis holds every test's keys: SCAN in steps (KEYS timed out under load).
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
            let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.unwrap();
            let pattern = format!("{}.*:inflight:*", env.prefix);
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let mut held = 0;
            for key in keys {
                let n: i64 = redis::cmd("SCARD").arg(&key).query_async(&mut conn).await.unwrap();
                held += n;
            }
            held
        }
    }
}

async fn worker_killed_mid_batch_loses_nothing_and_applies_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let mut api = env.spawn_process(&["serve", "--api-only"]).await;
    let mut client = MiniProgram::new(&api.base, &env.sim.base_url());
    client.login(None).await.unwrap();
    let client = &client;
    let orders: Vec<String> = futures::stream::iter(0..ORDERS)
        .map(|_| async move { client.create_order("sticker", 1).await.unwrap().out_trade_no })
        .buffer_unordered(16)
        .collect()
        .await;
    futures::stream::iter(&orders)
        .for_each_concurrent(16, |no| async move {
            client.pay(no).await.unwrap();
        })
        .await;

    let settings = env.settings();
    let db = Db::connect(&DatabaseSettings {
        url: settings.database.url.clone(),
        max_connections: 2,
        acquire_timeout_ms: 5000,
    })
    .await
    .unwrap();
    eventually("every notification stored by the API process", Duration::from_secs(120), || async {
        count(&db, "SELECT COUNT(*) FROM notifications").await == ORDERS as i64
    })
    .await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await,
        0,
        "no worker yet"
    );

    let mut worker = env.spawn_process(&["serve", "--worker-only"]).await;
    eventually("the worker makes progress", Duration::from_secs(60), || async {
        count(&db, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await >= 20
    })
    .await;
    worker.sigkill();
    worker.wait().await;

    let processed_at_kill = count(&db, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await;
    assert!(processed_at_kill < ORDERS as i64, "killed mid-run ({processed_at_kill} of {ORDERS} done)");
    assert!(held_jobs(&env).await > 0, "the killed worker was holding jobs");

    let _worker = env.spawn_process(&["serve", "--worker-only"]).await;
    eventually("every notification applied after restart", Duration::from_secs(120), || async {
        count(&db, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await == ORDERS as i64
    })
    .await;
    assert_eq!(orders_with_status(&db, "SUCCESS").await, ORDERS as i64);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM order_events WHERE applied = 1 AND to_status = 'SUCCESS'").await,
        ORDERS as i64,
        "exactly one applied transition per order"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM (SELECT order_id FROM order_events WHERE applied = 1 AND to_status = 'SUCCESS' GROUP BY order_id HAVING COUNT(*) > 1) AS twice").await,
        0
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM notifications WHERE outcome <> 'applied'").await, 0);
    assert!(db.dead_jobs().await.unwrap().is_empty(), "no dead job");
    api.sigkill();
}

crate::both_profiles!(worker_killed_mid_batch_loses_nothing_and_applies_once);
