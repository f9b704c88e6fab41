//! The notify endpoint under attack and under duplication: every bad notification is
//! refused or flagged, nothing is applied, everything is counted and recorded.

use std::time::Duration;

use base64::Engine;
use futures::future::join_all;
use wxpay_recon::sim::notifier::signed_headers;
use wxpay_recon::startup::Roles;

use crate::helpers::*;

fn header<'a>(headers: &'a mut [(&'static str, String)], name: &str) -> &'a mut String {
    &mut headers.iter_mut().find(|(n, _)| *n == name).unwrap().1
}

async fn bad_notifications_are_rejected_or_flagged_and_never_applied(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, openid) = env.client(&app).await;
    let order = client.create_order("mug", 1).await.unwrap();
    let no = order.out_trade_no.as_str();
    let good = env.transaction_json(no, order.amount_fen, &openid, "4200001234202611240000000001");
    let now = env.clock.now().timestamp();

    // 1. Forged: signed with a key that is not WeChat's.
    let (mut headers, body) = env.notification("n-forged", &good);
    let forged = env.keys.merchant_key.clone();
    *header(&mut headers, "Wechatpay-Signature") = forged
        .sign(&wxpay_recon::wechat::sign::response_message(
            &now.to_string(),
            "s7iEF4nIgzBQiKesvPiPEV25HyedzQGO",
            body.as_bytes(),
        ))
        .unwrap();
    *header(&mut headers, "Wechatpay-Timestamp") = now.to_string();
    assert_eq!(app.post_notify(&headers, body).await.0, 401);

    // 2. A serial we have no key for.
    let (mut headers, body) = env.notification("n-serial", &good);
    *header(&mut headers, "Wechatpay-Serial") = "PUB_KEY_ID_0000000000000000000000000000000099".into();
    assert_eq!(app.post_notify(&headers, body).await.0, 401);

    // 3. Correctly signed, but ten minutes old.
    let (_, body) = env.notification("n-stale", &good);
    let stale = signed_headers(&env.sim_keys, &body, now - 600, "NONCE0000000000000000000000STALE");
    assert_eq!(app.post_notify(&stale, body).await.0, 401);

    // 4. WeChat's signature probe.
    let (mut headers, body) = env.notification("n-probe", &good);
    *header(&mut headers, "Wechatpay-Signature") =
        format!("WECHATPAY/SIGNTEST/{}", base64::engine::general_purpose::STANDARD.encode([1u8; 256]));
    let (status, answer) = app.post_notify(&headers, body).await;
    assert_eq!((status, answer["code"].as_str()), (401, Some("FAIL")));

    // 5. Ciphertext tampered, then re-signed (a valid signature over a bad resource).
    let (_, body) = env.notification("n-tamper", &good);
    let mut envelope: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ct = envelope["resource"]["ciphertext"].as_str().unwrap().to_owned();
    let flipped = match ct.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &ct[1..]),
    };
    envelope["resource"]["ciphertext"] = flipped.into();
    let tampered = envelope.to_string();
    let headers = signed_headers(&env.sim_keys, &tampered, now, "NONCE000000000000000000000TAMPER");
    assert_eq!(app.post_notify(&headers, tampered).await.0, 401);

    // 6. Wrong associated data.
    let (_, body) = env.notification("n-aad", &good);
    let wrong_aad = body.replace("\"associated_data\":\"transaction\"", "\"associated_data\":\"refund\"");
    assert_ne!(wrong_aad, body);
    let headers = signed_headers(&env.sim_keys, &wrong_aad, now, "NONCE00000000000000000000000AAAD");
    assert_eq!(app.post_notify(&headers, wrong_aad).await.0, 401);

    // 7. Truncated in transit (headers for the whole body).
    let (headers, body) = env.notification("n-truncated", &good);
    assert_eq!(app.post_notify(&headers, body[..body.len() - 20].to_owned()).await.0, 401);

    // 8. Authentic but the amount disagrees with our order: stored, then flagged.
    let wrong_amount = env.transaction_json(no, order.amount_fen + 1, &openid, "4200001234202611240000000002");
    let (headers, body) = env.notification("n-amount", &wrong_amount);
    assert_eq!(app.post_notify(&headers, body).await.0, 204);

    // 9. Authentic, for an order we never created.
    let unknown = env.transaction_json("UNKNOWN0000000000000000001", 100, &openid, "4200001234202611240000000003");
    let (headers, body) = env.notification("n-unknown", &unknown);
    assert_eq!(app.post_notify(&headers, body).await.0, 204);

    eventually("both authentic notifications processed", Duration::from_secs(20), || async {
        scalar(&app.state, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await == 2
    })
    .await;
    assert_eq!(client.order(no).await.unwrap()["status"], "NOTPAY", "nothing was applied");
    let order_id = app.state.db.order_by_no(&trade_no(no)).await.unwrap().unwrap().id;
    let events = app.state.db.order_events(order_id).await.unwrap();
    assert!(!events.iter().any(|e| e.applied == 1 && e.to_status == "SUCCESS"), "{events:?}");
    let mut kinds: Vec<String> =
        app.state.db.anomalies(None).await.unwrap().into_iter().map(|a| a.kind.to_string()).collect();
    kinds.sort();
    assert_eq!(kinds, vec!["amount_mismatch".to_owned(), "unknown_order".to_owned()]);
    let counted = |reason: &str| app.metrics.notify_rejected.with_label_values(&[reason]).get();
    assert_eq!(
        (
            counted("bad_signature"),
            counted("unknown_serial"),
            counted("stale_timestamp"),
            counted("signature_probe"),
            counted("decrypt_failed")
        ),
        (2, 1, 1, 1, 2)
    );
    assert_eq!(app.metrics.anomalies.with_label_values(&["amount_mismatch"]).get(), 1);
    // Seven rejections are within the sampler's per-second burst: all are kept, written by its
    // background task.
    eventually("every rejection sampled for explanation", Duration::from_secs(10), || async {
        app.state.db.rejection_counts().await.unwrap().iter().map(|(_, n)| n).sum::<i64>() == 7
    })
    .await;

    // The genuine notification still applies: the refusals were not a broken setup.
    let (headers, body) = env.notification("n-good", &good);
    assert_eq!(app.post_notify(&headers, body).await.0, 204);
    client.wait_for_status(no, "SUCCESS", Duration::from_secs(20)).await.unwrap();
}

async fn five_concurrent_deliveries_apply_once_and_late_copies_are_no_ops(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, openid) = env.client(&app).await;
    let order = client.create_order("coffee", 1).await.unwrap();
    let resource = env.transaction_json(&order.out_trade_no, order.amount_fen, &openid, "4200001234202611240000000042");
    let (headers, body) = env.notification("dup-1", &resource);

    let statuses = join_all((0..5).map(|_| app.post_notify(&headers, body.clone()))).await;
    assert!(statuses.iter().all(|(s, _)| *s == 204), "{statuses:?}");
    client.wait_for_status(&order.out_trade_no, "SUCCESS", Duration::from_secs(20)).await.unwrap();
    let (rows, deliveries) = {
        let (rows, deliveries): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), CAST(SUM(deliveries) AS BIGINT) FROM notifications")
                .fetch_one(app.state.db.reader())
                .await
                .unwrap();
        (rows, deliveries)
    };
    assert_eq!((rows, deliveries), (1, 5), "one inbox entry with five deliveries");
    assert_eq!(app.metrics.notify_accepted.with_label_values(&["new"]).get(), 1);
    assert_eq!(app.metrics.notify_accepted.with_label_values(&["duplicate"]).get(), 4);

    // A late copy after processing, and the same payment under another notification id.
    assert_eq!(app.post_notify(&headers, body).await.0, 204);
    let (headers2, body2) = env.notification("dup-2", &resource);
    assert_eq!(app.post_notify(&headers2, body2).await.0, 204);
    eventually("second notification processed", Duration::from_secs(20), || async {
        scalar(&app.state, "SELECT COUNT(*) FROM notifications WHERE processed_at_ms IS NOT NULL").await == 2
    })
    .await;
    let row = app.state.db.order_by_no(&trade_no(&order.out_trade_no)).await.unwrap().unwrap();
    let events = app.state.db.order_events(row.id).await.unwrap();
    let applied: Vec<_> = events.iter().filter(|e| e.applied == 1 && e.to_status == "SUCCESS").collect();
    assert_eq!(applied.len(), 1, "applied exactly once: {events:?}");
    assert_eq!(applied[0].evidence.as_deref(), Some("dup-1"));
    let no_op = events.iter().find(|e| e.applied == 0).expect("the second notification is a recorded no-op");
    assert_eq!((no_op.source.as_str(), no_op.evidence.as_deref()), ("notify", Some("dup-2")));
    assert_eq!(scalar(&app.state, "SELECT deliveries FROM notifications WHERE notification_id = 'dup-1'").await, 6);
}

/// A paid order reported paid again under another transaction: the anomaly stores the two
/// transaction ids as values, and what operators read (the notification's outcome detail,
/// `order show`) says them plainly, never `Some("…")`.
async fn a_second_transaction_for_a_paid_order_is_recorded_by_value(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, openid) = env.client(&app).await;
    let order = client.create_order("mug", 1).await.unwrap();
    let no = order.out_trade_no.as_str();
    let (first, second) = ("4200001234202611240000000011", "4200001234202611240000000012");
    let (headers, body) = env.notification("n-first", &env.transaction_json(no, order.amount_fen, &openid, first));
    assert_eq!(app.post_notify(&headers, body).await.0, 204);
    client.wait_for_status(no, "SUCCESS", Duration::from_secs(20)).await.unwrap();
    let (headers, body) = env.notification("n-second", &env.transaction_json(no, order.amount_fen, &openid, second));
    assert_eq!(app.post_notify(&headers, body).await.0, 204);
    eventually("the second notification is refused", Duration::from_secs(20), || async {
        !app.state.db.anomalies(Some(no)).await.unwrap().is_empty()
    })
    .await;

    let anomalies = app.state.db.anomalies(Some(no)).await.unwrap();
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    let anomaly = &anomalies[0];
    assert_eq!((anomaly.kind.as_str(), anomaly.evidence.as_deref()), ("transaction_mismatch", Some("n-second")));
    assert_eq!((anomaly.ours.as_deref(), anomaly.theirs.as_deref()), (Some(first), Some(second)));
    let (detail,): (String,) =
        sqlx::query_as("SELECT outcome_detail FROM notifications WHERE notification_id = 'n-second'")
            .fetch_one(app.state.db.reader())
            .await
            .unwrap();
    assert_eq!(detail, format!("order is SUCCESS with transaction {first}, notify says {second}"));

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpay-recon"))
        .args(["order", "show", no])
        .envs(env.env_vars())
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}\n{}", String::from_utf8_lossy(&output.stderr));
    let line = shown.lines().find(|l| l.contains("transaction_mismatch")).unwrap_or_else(|| panic!("{shown}"));
    assert!(line.contains(&format!("ours={first} theirs={second}")) && line.contains("evidence=n-second"), "{line}");
    assert!(!shown.contains("Some("), "{shown}");
}

crate::both_profiles!(
    bad_notifications_are_rejected_or_flagged_and_never_applied,
    five_concurrent_deliveries_apply_once_and_late_copies_are_no_ops,
    a_second_transaction_for_a_paid_order_is_recorded_by_value,
    an_entry_the_batch_cannot_apply_is_deferred_and_the_rest_applied,
    reports_of_one_order_in_one_batch_are_judged_in_order,
);

/// Three reports of one order stored before any worker runs land in one batch, judged in inbox
/// order against the order as the batch moves it: the first pays it, the second (same payment,
/// another notification id) is a recorded no-op, the third (another transaction) an anomaly.
async fn reports_of_one_order_in_one_batch_are_judged_in_order(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let api = env.spawn_app(Roles { api: true, worker: false }).await;
    let (client, openid) = env.client(&api).await;
    let order = client.create_order("mug", 1).await.unwrap();
    let no = order.out_trade_no.as_str();
    let (paid, other) = ("4200001234202611240000000021", "4200001234202611240000000022");
    for (id, transaction) in [("n-one", paid), ("n-again", paid), ("n-other", other)] {
        let (headers, body) = env.notification(id, &env.transaction_json(no, order.amount_fen, &openid, transaction));
        assert_eq!(api.post_notify(&headers, body).await.0, 204);
    }
    // One claimer: two could split the three entries between their batches.
    let worker = env.spawn_app_with(Roles { api: false, worker: true }, |s| s.apply.claimers = 1).await;
    let db = &api.state.db;
    eventually("the three notifications are processed", Duration::from_secs(20), || async {
        db.inbox_backlog().await.unwrap().0 == 0
    })
    .await;
    assert_eq!(
        worker.metrics.apply_batch.get_sample_count(),
        1,
        "one batch held all three (else this test proves nothing)"
    );
    let outcomes: Vec<(String, String)> =
        sqlx::query_as("SELECT notification_id, outcome FROM notifications ORDER BY id")
            .fetch_all(db.reader())
            .await
            .unwrap();
    let expected = [("n-one", "applied"), ("n-again", "duplicate"), ("n-other", "anomaly:transaction_mismatch")];
    assert_eq!(outcomes, expected.map(|(a, b)| (a.to_owned(), b.to_owned())));
    let stored = db.order_by_no(&wxpay_recon::domain::OutTradeNo::parse(no).unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.transaction_id.as_ref().map(|t| t.as_str()), Some(paid));
    let events: Vec<(String, i64, Option<String>)> = db
        .order_events(stored.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.to_status == "SUCCESS")
        .map(|e| (e.from_status.unwrap_or_default(), e.applied, e.evidence))
        .collect();
    assert_eq!(
        events,
        vec![
            ("NOTPAY".to_owned(), 1, Some("n-one".to_owned())),
            ("SUCCESS".to_owned(), 0, Some("n-again".to_owned())),
            ("SUCCESS".to_owned(), 0, Some("n-other".to_owned())),
        ]
    );
    let anomalies = db.anomalies(Some(no)).await.unwrap();
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert_eq!((anomalies[0].ours.as_deref(), anomalies[0].theirs.as_deref()), (Some(paid), Some(other)));
}

/// One entry the batch cannot apply (its order row is corrupt) does not hold back the others:
/// they are applied, and it is deferred to its own job, which dead-letters it (a corrupt row is
/// final, retrying cannot help).
async fn an_entry_the_batch_cannot_apply_is_deferred_and_the_rest_applied(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let api = env.spawn_app(Roles { api: true, worker: false }).await;
    let (client, openid) = env.client(&api).await;
    let mut orders = Vec::new();
    for _ in 0..10 {
        orders.push(client.create_order("sticker", 1).await.unwrap());
    }
    let poisoned = orders[3].out_trade_no.clone();
    sqlx::query("UPDATE orders SET transaction_id = 'not a transaction id' WHERE out_trade_no = $1")
        .bind(&poisoned)
        .execute(api.state.db.writer())
        .await
        .unwrap();
    for (i, order) in orders.iter().enumerate() {
        let resource = env.transaction_json(&order.out_trade_no, order.amount_fen, &openid, &format!("42000{i:023}"));
        let (headers, body) = env.notification(&format!("n-batch-{i}"), &resource);
        assert_eq!(api.post_notify(&headers, body).await.0, 204);
    }

    let worker = env.spawn_app(Roles { api: false, worker: true }).await;
    worker.expect_dead_jobs();
    worker.allow_unapplied();
    api.expect_dead_jobs();
    api.allow_unapplied();
    let db = &api.state.db;
    eventually(
        "every other payment applied, and the poisoned entry dead-lettered in its own job",
        Duration::from_secs(60),
        || async { orders_with_status(db, "SUCCESS").await == 9 && !db.dead_jobs().await.unwrap().is_empty() },
    )
    .await;
    let (deferred, processed): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(deferred_at_ms), COUNT(processed_at_ms) FROM notifications WHERE out_trade_no = $1",
    )
    .bind(&poisoned)
    .fetch_one(db.reader())
    .await
    .unwrap();
    assert_eq!((deferred, processed), (1, 0), "deferred, not applied");
    let dead = db.dead_jobs().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(worker.metrics.inbox_deferred.get(), 1);
}
