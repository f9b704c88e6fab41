//! The storage conformance suite: the same assertions against SQLite and PostgreSQL, so the
//! one set of SQL statements behaves identically on both backends.

use std::collections::HashSet;

use wxpay_recon::config::CatalogItem;
use wxpay_recon::domain::{EventSource, Evidence, Fen, JobKind, OrderStatus, TransactionId};
use wxpay_recon::storage::inbox::NewInboxRow;
use wxpay_recon::storage::orders::{NewOrder, TransitionOutcome, TransitionRequest};
use wxpay_recon::storage::{Db, StorageError};

use crate::helpers::*;

async fn db(env: &TestEnv) -> Db {
    let db = Db::connect(&env.settings().database).await.unwrap();
    db.migrate().await.unwrap();
    db.migrate().await.unwrap(); // idempotent
    db
}

async fn order(db: &Db, no: &str) -> i64 {
    db.seed_products(&[CatalogItem { id: "p".into(), name: "P".into(), price_fen: 100 }], 0).await.unwrap();
    let user = db.upsert_user(&format!("openid-{no}"), None, "v1:x", 0).await.unwrap();
    db.insert_order(&NewOrder {
        out_trade_no: &trade_no(no),
        user_id: user.id,
        payer_openid: &user.openid,
        product_id: "p",
        quantity: 1,
        amount: Fen(100),
        description: "P",
        time_expire_ms: 10_000,
        first_check_at_ms: 1_000,
        now_ms: 0,
    })
    .await
    .unwrap()
    .id
}

fn row(id: &str, at: i64) -> NewInboxRow {
    NewInboxRow {
        notification_id: id.into(),
        event_type: "TRANSACTION.SUCCESS".into(),
        resource_type: "encrypt-resource".into(),
        summary: "s".into(),
        create_time: "t".into(),
        serial: "S".into(),
        wechat_timestamp: "1".into(),
        wechat_nonce: "n".into(),
        signature: "sig".into(),
        raw_body: "{}".into(),
        resource_json: "{}".into(),
        out_trade_no: Some("NO".into()),
        received_at_ms: at,
    }
}

async fn inbox_batches_fold_duplicates_and_report_first_delivery(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    let out = db.upsert_inbox_batch(&[row("a", 1), row("b", 1), row("a", 1)]).await.unwrap();
    assert_eq!(out.iter().map(|u| u.first_delivery).collect::<Vec<_>>(), vec![true, true, false]);
    assert_eq!(out[0].id, out[2].id);
    assert_ne!(out[0].id, out[1].id);
    let again = db.upsert_inbox_batch(&[row("b", 2), row("c", 2)]).await.unwrap();
    assert_eq!((again[0].first_delivery, again[0].id), (false, out[1].id));
    assert!(again[1].first_delivery);
    let a = db.inbox_entry(out[0].id).await.unwrap().unwrap();
    let b = db.inbox_entry(out[1].id).await.unwrap().unwrap();
    assert_eq!((a.deliveries, b.deliveries), (2, 2));

    let mut tx = db.begin().await.unwrap();
    assert!(db.mark_inbox_processed(&mut tx, a.id, "applied", None, 5).await.unwrap());
    assert!(!db.mark_inbox_processed(&mut tx, a.id, "applied", None, 6).await.unwrap(), "only once");
    tx.commit().await.unwrap();
    let after = db.upsert_inbox_batch(&[row("a", 3)]).await.unwrap();
    assert!(after[0].processed && !after[0].first_delivery);
    assert_eq!(db.inbox_backlog().await.unwrap(), (2, Some(1)));
}

/// A batch larger than one statement carries (PostgreSQL splits it to keep each INSERT in one
/// TLS record) is still one commit with the same answers, duplicates split across statements
/// included.
async fn large_inbox_batches_span_statements_and_stay_exact(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    let big = |id: &str| NewInboxRow { raw_body: "x".repeat(3000), ..row(id, 1) };
    let mut rows: Vec<NewInboxRow> = (0..40).map(|i| big(&format!("n{i:02}"))).collect();
    rows.push(big("n00"));
    rows.push(big("n39"));
    let out = db.upsert_inbox_batch(&rows).await.unwrap();
    assert_eq!(out.len(), 42);
    assert_eq!(out.iter().filter(|u| u.first_delivery).count(), 40);
    assert!(!out[40].first_delivery && !out[41].first_delivery);
    assert_eq!((out[40].id, out[41].id), (out[0].id, out[39].id));
    let ids: HashSet<i64> = out.iter().map(|u| u.id).collect();
    assert_eq!(ids.len(), 40);
    let first = db.inbox_entry(out[0].id).await.unwrap().unwrap();
    let middle = db.inbox_entry(out[20].id).await.unwrap().unwrap();
    assert_eq!((first.deliveries, middle.deliveries), (2, 1));
    assert_eq!(db.inbox_backlog().await.unwrap().0, 40);
}

async fn transitions_are_guarded_and_always_recorded(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    let id = order(&db, "ORDER000001").await;
    let attempt = |to: OrderStatus, source: EventSource| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let (no, evidence) = (trade_no("ORDER000001"), Evidence::new(source, "ev"));
            let txid = TransactionId::parse("4200").unwrap();
            let req = TransitionRequest {
                out_trade_no: &no,
                to,
                evidence: &evidence,
                transaction_id: Some(&txid),
                paid_at_ms: Some(7),
                note: None,
                now_ms: 9,
            };
            let outcome = db.transition(&mut tx, &req).await.unwrap();
            tx.commit().await.unwrap();
            outcome
        }
    };
    assert!(db.set_prepay(id, "wx-first", 5).await.unwrap().is_some(), "a NOTPAY order takes a prepay_id");
    assert_eq!(
        attempt(OrderStatus::Success, EventSource::Notify).await,
        TransitionOutcome::Applied { order_id: id, from: OrderStatus::Notpay }
    );
    // A prepay that lands after the order moved on records nothing: its parameters must not be
    // handed out (a close that found no order at WeChat may have raced it).
    assert_eq!(db.set_prepay(id, "wx-late", 8).await.unwrap(), None);
    assert_eq!(
        attempt(OrderStatus::Success, EventSource::Poll).await,
        TransitionOutcome::NotApplied { order_id: id, current: OrderStatus::Success }
    );
    assert_eq!(
        attempt(OrderStatus::Closed, EventSource::Poll).await,
        TransitionOutcome::NotApplied { order_id: id, current: OrderStatus::Success }
    );
    assert_eq!(
        attempt(OrderStatus::Refund, EventSource::Api).await,
        TransitionOutcome::Applied { order_id: id, from: OrderStatus::Success }
    );
    let order = db.order_by_no(&trade_no("ORDER000001")).await.unwrap().unwrap();
    assert_eq!(
        (order.status.as_str(), order.paid_at_ms, order.transaction_id.as_ref().map(|t| t.as_str()), order.version),
        ("REFUND", Some(7), Some("4200"), 2)
    );
    assert_eq!(order.next_check_at_ms, None, "a final order is no longer polled");
    let events = db.order_events(id).await.unwrap();
    let trail: Vec<(Option<&str>, &str, i64, &str)> =
        events.iter().map(|e| (e.from_status.as_deref(), e.to_status.as_str(), e.applied, e.source.as_str())).collect();
    assert_eq!(
        trail,
        vec![
            (None, "NOTPAY", 1, "api"),
            (Some("NOTPAY"), "SUCCESS", 1, "notify"),
            (Some("SUCCESS"), "SUCCESS", 0, "poll"),
            (Some("SUCCESS"), "CLOSED", 0, "poll"),
            (Some("SUCCESS"), "REFUND", 1, "api"),
        ]
    );
    let mut tx = db.begin().await.unwrap();
    let (nope, evidence) = (trade_no("NOPE00000001"), Evidence::new(EventSource::Notify, "ev"));
    let missing = TransitionRequest {
        out_trade_no: &nope,
        to: OrderStatus::Success,
        evidence: &evidence,
        transaction_id: None,
        paid_at_ms: None,
        note: None,
        now_ms: 1,
    };
    assert_eq!(db.transition(&mut tx, &missing).await.unwrap(), TransitionOutcome::NotFound);
}

async fn sweeper_claims_deferred_rows_disjoint_and_once_per_age(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    let rows: Vec<NewInboxRow> = (0..250).map(|i| row(&format!("n{i}"), 1_000)).collect();
    let stored = db.upsert_inbox_batch(&rows).await.unwrap();
    // The sweeper's rows are the deferred ones (handed to their own job); the other 50 are the
    // batch applier's and never swept.
    for entry in &stored[..200] {
        assert!(db.defer_inbox(entry.id, 1_000).await.unwrap());
    }
    assert!(!db.defer_inbox(stored[0].id, 2_000).await.unwrap(), "deferred once only");
    let (a, b) = tokio::join!(db.claim_stale_inbox(5_000, 10_000, 150), db.claim_stale_inbox(5_000, 10_000, 150));
    let (a, b) = (a.unwrap(), b.unwrap());
    let a_set: HashSet<i64> = a.iter().copied().collect();
    assert!(b.iter().all(|id| !a_set.contains(id)), "two sweepers never claim the same row");
    assert_eq!(a.len() + b.len(), 200);
    assert!(db.claim_stale_inbox(5_000, 10_000, 500).await.unwrap().is_empty(), "claimed rows wait another age");
    // A deferred entry whose job is dead-lettered waits for an operator, not for the sweeper.
    db.inbox_job_dead(stored[0].id, 15_000).await.unwrap();
    assert_eq!(db.claim_stale_inbox(10_000, 20_000, 500).await.unwrap().len(), 199, "and come back after it");
    db.inbox_job_retried(stored[0].id, 25_000).await.unwrap();
    let swept = db.claim_stale_inbox(24_999, 30_000, 500).await.unwrap();
    assert_eq!(swept.len(), 199, "the others, queued at 20 s");
    assert!(!swept.contains(&stored[0].id), "the retried one has a fresh age");
    assert_eq!(db.claim_stale_inbox(25_000, 35_000, 500).await.unwrap(), vec![stored[0].id], "then is swept again");
}

/// The batch claim takes the oldest waiting entries, skips deferred ones, and (PostgreSQL) two
/// open claims take disjoint rows; a claim rolled back frees its rows for the next.
async fn batch_claims_are_oldest_first_disjoint_and_skip_deferred(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    let rows: Vec<NewInboxRow> = (0..10).map(|i| row(&format!("c{i}"), 1_000)).collect();
    let stored = db.upsert_inbox_batch(&rows).await.unwrap();
    let mut ids: Vec<i64> = stored.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    assert!(db.defer_inbox(ids[1], 2_000).await.unwrap());
    assert!(db.has_unapplied_inbox().await.unwrap());

    let mut first = db.begin().await.unwrap();
    let claimed: Vec<i64> = db.claim_inbox_batch(&mut first, 4).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(claimed, vec![ids[0], ids[2], ids[3], ids[4]], "oldest first, the deferred one skipped");
    if backend == Backend::Cluster {
        let mut second = db.begin().await.unwrap();
        let other: Vec<i64> = db.claim_inbox_batch(&mut second, 10).await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(other, ids[5..].to_vec(), "a concurrent claim skips the rows the first holds");
        second.rollback().await.unwrap();
    }
    first.rollback().await.unwrap();
    let mut again = db.begin().await.unwrap();
    assert_eq!(db.claim_inbox_batch(&mut again, 10).await.unwrap().len(), 9, "rolled back: claimable again");
    let done: Vec<(i64, String, Option<String>)> =
        ids.iter().filter(|&&id| id != ids[1]).map(|&id| (id, "applied".to_owned(), None)).collect();
    assert_eq!(db.mark_inbox_batch_processed(&mut again, &done, 3_000).await.unwrap(), 9);
    assert_eq!(db.mark_inbox_batch_processed(&mut again, &done, 3_000).await.unwrap(), 0, "marked once");
    again.commit().await.unwrap();
    assert!(!db.has_unapplied_inbox().await.unwrap(), "only the deferred entry is left, and it is not the batch's");
    assert_eq!(db.unapplied_inbox_ids(10).await.unwrap(), Vec::<i64>::new());
}

async fn leases_expire_and_release_only_their_own(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    assert!(db.try_lease("sweeper", "a", 0, 1_000).await.unwrap());
    assert!(!db.try_lease("sweeper", "b", 500, 1_000).await.unwrap(), "held by a");
    assert!(db.try_lease("sweeper", "a", 900, 1_000).await.unwrap(), "a renews");
    assert!(!db.try_lease("sweeper", "b", 1_500, 1_000).await.unwrap(), "renewal extended it to 1900");
    assert!(db.try_lease("sweeper", "b", 2_000, 1_000).await.unwrap(), "expired: b takes over");
    db.release_lease("sweeper", "a").await.unwrap();
    assert!(!db.try_lease("sweeper", "c", 2_100, 1_000).await.unwrap(), "a's release did not free b's lease");
    db.release_lease("sweeper", "b").await.unwrap();
    assert!(db.try_lease("sweeper", "c", 2_100, 1_000).await.unwrap());
}

/// A stored text the domain does not accept is reported as corrupt data, naming the value,
/// never a panic and never a guess. (Raw SQL on purpose: no storage call writes bad data.
/// Statuses are also guarded by CHECK constraints in both schemas, so the columns without one
/// are what can go wrong: a transaction id, a job kind another version wrote.)
async fn unknown_stored_values_are_corrupt_not_a_panic(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    order(&db, "ORDER000002").await;
    let status =
        sqlx::query("UPDATE orders SET status = 'PAID' WHERE out_trade_no = 'ORDER000002'").execute(db.writer()).await;
    assert!(status.is_err(), "the schema refuses an unknown status itself");
    sqlx::query("UPDATE orders SET transaction_id = 'not a txid!' WHERE out_trade_no = 'ORDER000002'")
        .execute(db.writer())
        .await
        .unwrap();
    let err = db.order_by_no(&trade_no("ORDER000002")).await.expect_err("invalid transaction id");
    assert!(matches!(err, StorageError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains(r#""not a txid!""#), "{err}");
    db.insert_dead_job(JobKind::CheckOrder, "{}", 1, "x", 1).await.unwrap();
    sqlx::query("UPDATE dead_jobs SET kind = 'mystery'").execute(db.writer()).await.unwrap();
    let err = db.dead_jobs().await.expect_err("unknown kind");
    assert!(err.to_string().contains("mystery"), "{err}");
}

async fn dead_jobs_sessions_and_users(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    let id = db.insert_dead_job(JobKind::ApplyNotification, "{}", 8, "boom", 1).await.unwrap();
    db.insert_dead_job(JobKind::ApplyNotification, "{}", 8, "boom", 2).await.unwrap();
    assert_eq!(db.dead_job_counts().await.unwrap(), vec![(JobKind::ApplyNotification, 2)]);
    assert!(db.mark_dead_job_retried(id, 3).await.unwrap());
    assert!(!db.mark_dead_job_retried(id, 4).await.unwrap(), "retried once");
    assert_eq!(db.dead_jobs().await.unwrap().len(), 1);

    let user = db.upsert_user("o1", Some("u1"), "v1:a", 1).await.unwrap();
    let again = db.upsert_user("o1", None, "v1:b", 2).await.unwrap();
    assert_eq!((again.id, again.unionid.as_deref()), (user.id, Some("u1")), "unionid kept when not re-sent");
    assert_eq!(db.user_session_key(user.id).await.unwrap(), "v1:b");
    db.insert_session("hash", user.id, 10, 20).await.unwrap();
    assert_eq!(db.session_user("hash", 19).await.unwrap(), Some(user.id));
    assert_eq!(db.session_user("hash", 20).await.unwrap(), None, "expired");
    assert_eq!(db.session_user("other", 1).await.unwrap(), None);
}

/// 100,000 pending orders, none due: a sweep reads the due index and no order row. Then 1,000
/// become due: the claim takes exactly those, once.
async fn a_poll_sweep_costs_what_is_due(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let db = db(&env).await;
    let seed_order = order(&db, "SEEDORDER0").await;
    let now: i64 = 1_000_000_000;
    // next_check far in the future for all, except every 100th which is due at `now - 1`.
    let seed = match backend {
        Backend::Cluster => {
            "INSERT INTO orders (out_trade_no, user_id, payer_openid, product_id, quantity, amount_fen, description,
                 status, time_expire_ms, next_check_at_ms, created_at_ms, updated_at_ms)
             SELECT 'BULK' || n, 1, 'o', 'p', 1, 100, 'P', 'NOTPAY', 9000000000000, 5000000000000 + n, 0, 0
             FROM generate_series(1, 100000) AS n"
        }
        Backend::Embedded => {
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 100000)
             INSERT INTO orders (out_trade_no, user_id, payer_openid, product_id, quantity, amount_fen, description,
                 status, time_expire_ms, next_check_at_ms, created_at_ms, updated_at_ms)
             SELECT 'BULK' || n, 1, 'o', 'p', 1, 100, 'P', 'NOTPAY', 9000000000000, 5000000000000 + n, 0, 0 FROM seq"
        }
    };
    sqlx::query(seed).execute(db.writer()).await.unwrap();
    db.stop_checks(seed_order, 0).await.unwrap();
    if backend == Backend::Cluster {
        sqlx::query("ANALYZE orders").execute(db.writer()).await.unwrap();
    }

    let plan = db.explain_due_selection(now, 500).await.unwrap();
    assert!(plan.contains("orders_due"), "the due index is used:\n{plan}");
    match backend {
        Backend::Cluster => {
            assert!(!plan.contains("Seq Scan"), "{plan}");
            assert!(plan.contains("actual rows=0"), "nothing due, no row read:\n{plan}");
        }
        Backend::Embedded => assert!(!plan.contains("SCAN orders"), "{plan}"),
    }
    assert!(db.claim_due_orders(now, now + 60_000, 500).await.unwrap().is_empty());

    sqlx::query("UPDATE orders SET next_check_at_ms = $1 WHERE out_trade_no LIKE 'BULK%' AND CAST(SUBSTR(out_trade_no, 5) AS BIGINT) % 100 = 0")
        .bind(now - 1)
        .execute(db.writer())
        .await
        .unwrap();
    assert_eq!(db.due_order_count(now).await.unwrap(), 1000);
    if backend == Backend::Cluster {
        let plan = db.explain_due_selection(now, 5000).await.unwrap();
        assert!(
            plan.contains("orders_due") && plan.contains("actual rows=1000"),
            "reads exactly the due rows:\n{plan}"
        );
    }
    let claimed = db.claim_due_orders(now, now + 60_000, 5000).await.unwrap();
    let claimed: HashSet<String> = claimed.into_iter().collect();
    let expected: HashSet<String> = (1..=1000).map(|i| format!("BULK{}", i * 100)).collect();
    assert_eq!(claimed, expected);
    assert!(db.claim_due_orders(now, now + 60_000, 5000).await.unwrap().is_empty(), "claimed once");
    assert_eq!(db.due_order_count(now + 60_000).await.unwrap(), 1000, "due again when the claim lapses");
}

/// Two handles on one database, as the daemon and a CLI command beside it: a transaction that
/// reads its order and then changes it commits although the other wrote meanwhile. (On SQLite
/// the deferred transaction used to fail at once, "database is locked", whatever busy_timeout
/// said: its snapshot was stale. Now it holds the write lock from BEGIN and the other waits.)
async fn a_transaction_commits_beside_another_writer(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let daemon = db(&env).await;
    let cli = db(&env).await;
    let id = order(&daemon, "BESIDE0001").await;
    let no = trade_no("BESIDE0001");
    let mut tx = daemon.begin().await.unwrap();
    assert!(daemon.lock_order(&mut tx, &no).await.unwrap().is_some());
    let other = tokio::spawn(async move { cli.insert_dead_job(JobKind::CheckOrder, "{}", 1, "beside", 1).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let evidence = Evidence::new(EventSource::Ops, "beside");
    let request = TransitionRequest {
        out_trade_no: &no,
        to: OrderStatus::Closed,
        evidence: &evidence,
        transaction_id: None,
        paid_at_ms: None,
        note: None,
        now_ms: 2,
    };
    let outcome = daemon.transition(&mut tx, &request).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outcome, TransitionOutcome::Applied { order_id: id, from: OrderStatus::Notpay });
    other.await.unwrap().unwrap();
    assert_eq!(daemon.dead_jobs().await.unwrap().len(), 1, "the other writer's row is there too");
}

crate::both_profiles!(
    a_transaction_commits_beside_another_writer,
    a_poll_sweep_costs_what_is_due,
    large_inbox_batches_span_statements_and_stay_exact,
    inbox_batches_fold_duplicates_and_report_first_delivery,
    transitions_are_guarded_and_always_recorded,
    sweeper_claims_deferred_rows_disjoint_and_once_per_age,
    batch_claims_are_oldest_first_disjoint_and_skip_deferred,
    leases_expire_and_release_only_their_own,
    dead_jobs_sessions_and_users,
    unknown_stored_values_are_corrupt_not_a_panic,
);
