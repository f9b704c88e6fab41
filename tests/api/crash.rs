//! Crash safety with real processes: a worker killed with SIGKILL in the middle of an inbox
//! batch (its transaction open, waiting to commit) loses nothing, and nothing is applied twice.

use std::time::Duration;

use futures::StreamExt;
use sqlx::Connection;
use wxpay_recon::config::DatabaseSettings;
use wxpay_recon::demo::MiniProgram;
use wxpay_recon::storage::Db;

use crate::helpers::*;

const ORDERS: usize = 1500;

async fn count(db: &Db, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db.reader()).await.unwrap();
    n
}

/// Entries per batch of the worker that is killed, each held open before its commit.
const BATCH: i64 = 64;

/// Whether some process holds a write transaction open right now: on PostgreSQL a session idle
/// inside one (the batch waiting to commit), on SQLite the write lock refusing a second writer.
async fn write_transaction_open(env: &TestEnv, db: &Db) -> bool {
    match env.backend {
        Backend::Cluster => {
            count(
                db,
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state = 'idle in transaction'",
            )
            .await
                > 0
        }
        Backend::Embedded => {
            let url = env.settings().database.url.replacen("sqlite://", "", 1);
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(url).busy_timeout(Duration::ZERO);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
            let locked = sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.is_err();
            if !locked {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
            locked
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

    // Each batch waits 400 ms before its commit, so the kill lands inside one.
    let overrides = [("APPLY__BATCH_SIZE", BATCH.to_string()), ("APPLY__HOLD_BEFORE_COMMIT_MS", "400".into())];
    let mut worker = env.spawn_process_with(&["serve", "--worker-only"], &overrides).await;
    eventually("the worker commits a batch", Duration::from_secs(60), || async {
        count(&db, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await >= BATCH
    })
    .await;
    eventually("a batch is open, waiting to commit", Duration::from_secs(30), || write_transaction_open(&env, &db))
        .await;
    worker.sigkill();
    worker.wait().await;

    let processed_at_kill = count(&db, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await;
    assert!(processed_at_kill < ORDERS as i64, "killed mid-run ({processed_at_kill} of {ORDERS} done)");
    assert_eq!(processed_at_kill % BATCH, 0, "whole batches only: the open one rolled back ({processed_at_kill})");
    assert!(
        count(&db, "SELECT COUNT(*) FROM orders WHERE status = 'SUCCESS'").await == processed_at_kill,
        "orders moved with their batch's marks, not without them"
    );

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
