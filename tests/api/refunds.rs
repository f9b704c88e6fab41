//! Refunds: operators only, never more than what is left, money moved once per refund whether
//! the notification or the poller brings the outcome.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

async fn refunded(app: &TestApp, no: &str) -> (String, i64) {
    let order = app.state.db.order_by_no(&trade_no(no)).await.unwrap().unwrap();
    (order.status.to_string(), order.refunded.0)
}

async fn partial_and_full_refunds_move_money_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    let a = client.create_order("coffee", 1).await.unwrap().out_trade_no;
    let unpaid = client.create_order("coffee", 1).await.unwrap().out_trade_no;
    client.pay(&a).await.unwrap();
    client.wait_for_status(&a, "SUCCESS", Duration::from_secs(20)).await.unwrap();
    let path = format!("/api/orders/{a}/refund");

    // Operators only.
    assert_eq!(admin_post(&app.base, &path, None, json!({"amount_fen": 100})).await.0, 401);
    assert_eq!(admin_post(&app.base, &path, Some("wrong"), json!({"amount_fen": 100})).await.0, 401);
    // A user's bearer token is not an admin token either.
    assert_eq!(admin_post(&app.base, &path, client.token(), json!({"amount_fen": 100})).await.0, 401);

    let (status, first) =
        admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 1000, "reason": "破损"})).await;
    assert_eq!(status, 201, "{first}");
    // WeChat accepted it (PROCESSING); its REFUND.SUCCESS notification may already be applied
    // by the time the answer is read back (the worker applies the inbox within milliseconds).
    assert!(["PROCESSING", "SUCCESS"].contains(&first["status"].as_str().unwrap_or("")), "{first}");
    eventually("the partial refund succeeds", Duration::from_secs(20), || async {
        refunded(&app, &a).await == ("REFUND".into(), 1000)
    })
    .await;

    // More than what is left is refused; the rest is fine.
    let (status, body) = admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 6000})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("5800"), "{body}");
    // WeChat takes one refund of an order per minute.
    env.clock.advance(Duration::from_secs(61));
    let (status, _) = admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 5800})).await;
    assert_eq!(status, 201);
    eventually("the full refund succeeds", Duration::from_secs(20), || async {
        refunded(&app, &a).await == ("REFUND".into(), 6800)
    })
    .await;
    let (status, _) = admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 1})).await;
    assert_eq!(status, 409, "nothing left");

    let order = app.state.db.order_by_no(&trade_no(&a)).await.unwrap().unwrap();
    let refunds = app.state.db.refunds_of_order(order.id).await.unwrap();
    assert_eq!(
        refunds.iter().map(|r| (r.status.as_str(), r.amount.0)).collect::<Vec<_>>(),
        vec![("SUCCESS", 1000), ("SUCCESS", 5800)]
    );
    assert!(refunds.iter().all(|r| r.refund_id.as_deref().is_some_and(|id| id.starts_with("50") && id.len() == 29)));
    let events = app.state.db.order_events(order.id).await.unwrap();
    let refund_events: Vec<(String, i64)> =
        events.iter().filter(|e| e.to_status == "REFUND").map(|e| (e.source.clone(), e.applied)).collect();
    assert_eq!(refund_events, vec![("notify".into(), 1), ("notify".into(), 1)], "one event per refund");
    assert_eq!(app.metrics.refunds.with_label_values(&["succeeded"]).get(), 2);

    // Unpaid and unknown orders.
    let (status, _) =
        admin_post(&app.base, &format!("/api/orders/{unpaid}/refund"), Some(ADMIN_TOKEN), json!({"amount_fen": 1}))
            .await;
    assert_eq!(status, 409);
    let (status, _) =
        admin_post(&app.base, "/api/orders/NOSUCHORDER123/refund", Some(ADMIN_TOKEN), json!({"amount_fen": 1})).await;
    assert_eq!(status, 404);
}

async fn a_refund_whose_notification_is_lost_is_settled_by_polling(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.orders.poll_grace_secs = 60;
            s.poll.sweep_interval_ms = 100;
        })
        .await;
    let (client, _) = env.client(&app).await;
    let b = client.create_order("coffee", 1).await.unwrap().out_trade_no;
    client.pay(&b).await.unwrap();
    client.wait_for_status(&b, "SUCCESS", Duration::from_secs(20)).await.unwrap();
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;
    let (status, _) =
        admin_post(&app.base, &format!("/api/orders/{b}/refund"), Some(ADMIN_TOKEN), json!({"amount_fen": 6800})).await;
    assert_eq!(status, 201);
    // WeChat finishes the refund and its notification is dropped...
    eventually("the refund's notification is dropped", Duration::from_secs(20), || async {
        sim_notifications(&env)
            .await
            .iter()
            .any(|n| n["out_trade_no"] == b.as_str() && n["event_type"] == "REFUND.SUCCESS" && n["dropped"] == true)
    })
    .await;
    // ...and a whole poll sweep after that finds nothing due within the grace period.
    wait_for_poll_sweep(&app).await;
    assert_eq!(app.metrics.poll_claimed.get(), 0, "the refund is not due for a check yet");
    assert_eq!(refunded(&app, &b).await, ("SUCCESS".into(), 0), "no notification: nothing moves yet");
    env.clock.advance(Duration::from_secs(61));
    eventually("polling settles the refund", Duration::from_secs(30), || async {
        refunded(&app, &b).await == ("REFUND".into(), 6800)
    })
    .await;
    let order = app.state.db.order_by_no(&trade_no(&b)).await.unwrap().unwrap();
    let events = app.state.db.order_events(order.id).await.unwrap();
    assert_eq!(events.last().map(|e| (e.source.as_str(), e.to_status.as_str())), Some(("poll", "REFUND")));
}

/// A refund WeChat closes moves no money and frees the amount; an abnormal one waits for an
/// operator. Both arrive as `REFUND.*` notifications through the inbox.
async fn closed_and_abnormal_refunds_move_no_money(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    let no = paid_coffee(&client).await;
    let path = format!("/api/orders/{no}/refund");
    let order_id = app.state.db.order_by_no(&trade_no(&no)).await.unwrap().unwrap().id;
    let statuses = || async {
        app.state
            .db
            .refunds_of_order(order_id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.status.to_string())
            .collect::<Vec<_>>()
    };

    set_chaos(&env, json!({ "refund_outcome": "CLOSED" })).await;
    assert_eq!(admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 6800})).await.0, 201);
    eventually("REFUND.CLOSED applied", Duration::from_secs(20), || async { statuses().await == vec!["CLOSED"] }).await;
    assert_eq!(refunded(&app, &no).await, ("SUCCESS".into(), 0), "a closed refund moves no money");

    set_chaos(&env, json!({ "refund_outcome": "ABNORMAL" })).await;
    // WeChat takes one refund of an order per minute.
    env.clock.advance(Duration::from_secs(61));
    assert_eq!(
        admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 6800})).await.0,
        201,
        "the closed amount is free again"
    );
    eventually("REFUND.ABNORMAL applied", Duration::from_secs(20), || async {
        statuses().await == vec!["CLOSED", "ABNORMAL"]
    })
    .await;
    assert_eq!(refunded(&app, &no).await, ("SUCCESS".into(), 0));
    let (status, _) = admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 1})).await;
    assert_eq!(status, 409, "an abnormal refund still holds its amount until an operator settles it");
    assert_eq!(app.metrics.refunds.with_label_values(&["closed"]).get(), 1);
    assert_eq!(app.metrics.refunds.with_label_values(&["abnormal"]).get(), 1);
    let outcomes: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM notifications WHERE event_type IN ('REFUND.CLOSED', 'REFUND.ABNORMAL') AND outcome = 'applied'")
        .fetch_one(app.state.db.reader())
        .await
        .unwrap();
    assert_eq!(outcomes.0, 2, "both went through the inbox and the worker");
}

/// Two operators (or one retrying client) sending the same out_refund_no at once: the unique
/// key decides, and nobody gets a 500. The same request twice is the same refund; the same
/// number for another amount is a 409.
async fn concurrent_refunds_with_one_number_never_fail(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    let no = paid_coffee(&client).await;
    let path = format!("/api/orders/{no}/refund");

    let same = json!({"amount_fen": 100, "out_refund_no": "RACE-SAME-1"});
    let answers =
        futures::future::join_all((0..8).map(|_| admin_post(&app.base, &path, Some(ADMIN_TOKEN), same.clone()))).await;
    for (status, body) in &answers {
        assert!(matches!(status, 201 | 202), "the same request is the same refund: {status} {body}");
        assert_eq!(body["out_refund_no"], "RACE-SAME-1", "{body}");
    }

    let answers = futures::future::join_all((1..=8).map(|i| {
        admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 100 + i, "out_refund_no": "RACE-DIFF-1"}))
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses.iter().filter(|s| matches!(s, 201 | 202)).count(), 1, "one amount wins: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 7, "the others are told why: {statuses:?}");
    let conflict = answers.iter().find(|(s, _)| *s == 409).map(|(_, b)| b.clone()).unwrap();
    assert!(conflict["message"].as_str().unwrap().contains("RACE-DIFF-1"), "{conflict}");

    let order = app.state.db.order_by_no(&trade_no(&no)).await.unwrap().unwrap();
    let refunds = app.state.db.refunds_of_order(order.id).await.unwrap();
    assert_eq!(refunds.len(), 2, "one refund per number: {refunds:?}");

    // The same request for everything that is left: the first takes it all, the others are
    // the same refund (not "more than what is left").
    let left = 6800 - refunds.iter().map(|r| r.amount.0).sum::<i64>();
    let all = json!({"amount_fen": left, "out_refund_no": "RACE-ALL-1"});
    let answers =
        futures::future::join_all((0..4).map(|_| admin_post(&app.base, &path, Some(ADMIN_TOKEN), all.clone()))).await;
    for (status, body) in &answers {
        assert!(matches!(status, 201 | 202), "the same request is the same refund: {status} {body}");
    }
    assert_eq!(app.state.db.refunds_of_order(order.id).await.unwrap().len(), 3);
}

/// An ABNORMAL refund is not the end: the operator resolves it in the merchant console (the
/// simulator's resolve endpoint), WeChat sends no notification for that, and only the slow poll
/// of ABNORMAL refunds finds the SUCCESS and moves the order's refunded amount. The gauge counts
/// the refund while it is ABNORMAL.
async fn an_abnormal_refund_resolved_later_is_found_by_the_slow_poll(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.poll.sweep_interval_ms = 100;
            s.poll.abnormal_refund_interval_secs = 1800;
        })
        .await;
    let (client, _) = env.client(&app).await;
    let no = paid_coffee(&client).await;
    set_chaos(&env, json!({ "refund_outcome": "ABNORMAL" })).await;
    let (status, body) = admin_post(
        &app.base,
        &format!("/api/orders/{no}/refund"),
        Some(ADMIN_TOKEN),
        json!({"amount_fen": 2000, "out_refund_no": "ABN-RESOLVE-1"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let refund_no = wxpay_recon::domain::OutRefundNo::parse("ABN-RESOLVE-1").unwrap();
    let refund_status = || async { app.state.db.refund_by_no(&refund_no).await.unwrap().unwrap().status.to_string() };
    eventually("REFUND.ABNORMAL applied", Duration::from_secs(20), || async { refund_status().await == "ABNORMAL" })
        .await;
    let abnormal = app.state.db.refund_by_no(&refund_no).await.unwrap().unwrap();
    let next = abnormal.next_check_at_ms.expect("an ABNORMAL refund stays on the poll");
    assert!(next - env.clock.now_ms() > 25 * 60 * 1000, "slowly: about 30 min from now, not {next}");
    app.state.operations.refresh_gauges().await;
    assert_eq!(app.metrics.refunds_abnormal.get(), 1);

    // The operator resolves it at WeChat; no notification follows.
    let resolved = resolve_at_wechat(&env, "ABN-RESOLVE-1", "SUCCESS").await;
    assert_eq!(resolved["status"], "SUCCESS", "{resolved}");
    // A whole sweep later nothing has moved: the refund is not due yet.
    wait_for_poll_sweep(&app).await;
    assert_eq!(refunded(&app, &no).await, ("SUCCESS".into(), 0));
    assert_eq!(refund_status().await, "ABNORMAL");

    env.clock.advance(Duration::from_secs(31 * 60));
    eventually("the slow poll finds the SUCCESS", Duration::from_secs(30), || async {
        refunded(&app, &no).await == ("REFUND".into(), 2000)
    })
    .await;
    assert_eq!(refund_status().await, "SUCCESS");
    let order = app.state.db.order_by_no(&trade_no(&no)).await.unwrap().unwrap();
    let events = app.state.db.order_events(order.id).await.unwrap();
    assert_eq!(events.last().map(|e| (e.source.as_str(), e.to_status.as_str())), Some(("poll", "REFUND")));
    let notified = sim_notifications(&env).await;
    assert!(
        !notified.iter().any(|n| n["event_type"] == "REFUND.SUCCESS"),
        "the resolution was seen by polling alone: {notified:?}"
    );
    app.state.operations.refresh_gauges().await;
    assert_eq!(app.metrics.refunds_abnormal.get(), 0);
}

/// The operator settles an ABNORMAL refund in the merchant console (the simulator's stand-in).
async fn resolve_at_wechat(env: &TestEnv, out_refund_no: &str, outcome: &str) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{}/sim/refunds/{out_refund_no}/resolve", env.sim.base_url()))
        .json(&json!({ "outcome": outcome }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An ABNORMAL refund the operator gives up on ends CLOSED here too: no money moved, and its
/// amount is free to refund again.
async fn an_abnormal_refund_closed_by_the_operator_frees_its_amount(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, |s| s.poll.sweep_interval_ms = 100).await;
    let (client, _) = env.client(&app).await;
    let no = paid_coffee(&client).await;
    set_chaos(&env, json!({ "refund_outcome": "ABNORMAL" })).await;
    let path = format!("/api/orders/{no}/refund");
    let body = json!({"amount_fen": 6800, "out_refund_no": "ABN-CLOSE-1"});
    assert_eq!(admin_post(&app.base, &path, Some(ADMIN_TOKEN), body).await.0, 201);
    let refund_no = wxpay_recon::domain::OutRefundNo::parse("ABN-CLOSE-1").unwrap();
    let refund_status = || async { app.state.db.refund_by_no(&refund_no).await.unwrap().unwrap().status.to_string() };
    eventually("REFUND.ABNORMAL applied", Duration::from_secs(20), || async { refund_status().await == "ABNORMAL" })
        .await;
    let (status, _) = admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 1})).await;
    assert_eq!(status, 409, "the ABNORMAL refund holds the whole order");

    let closed = resolve_at_wechat(&env, "ABN-CLOSE-1", "CLOSED").await;
    assert_eq!(closed["status"], "CLOSED", "{closed}");
    env.clock.advance(Duration::from_secs(31 * 60));
    eventually("the slow poll finds it CLOSED", Duration::from_secs(30), || async {
        refund_status().await == "CLOSED"
    })
    .await;
    assert_eq!(refunded(&app, &no).await, ("SUCCESS".into(), 0), "no money moved");
    set_chaos(&env, json!({})).await;
    let (status, body) =
        admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 6800, "out_refund_no": "ABN-CLOSE-2"}))
            .await;
    assert_eq!(status, 201, "the amount is free again: {body}");
}

/// WeChat's refund rules as the simulator enforces them, seen through our API: one refund per
/// order per minute (FREQUENCY_LIMITED: retried by the poller, so the request is accepted as
/// 202), and a merchant balance too low (NOT_ENOUGH: refused).
async fn wechat_s_refund_rules_reach_the_operator(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    let no = paid_coffee(&client).await;
    let path = format!("/api/orders/{no}/refund");
    assert_eq!(admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 100})).await.0, 201);
    let (status, body) = admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 100})).await;
    assert_eq!(status, 202, "a second refund within the minute waits for the poller: {body}");
    let calls: Vec<serde_json::Value> =
        reqwest::get(format!("{}/sim/calls", env.sim.base_url())).await.unwrap().json().await.unwrap();
    let refund_statuses: Vec<u64> =
        calls.iter().filter(|c| c["endpoint"] == "refund").filter_map(|c| c["status"].as_u64()).collect();
    assert_eq!(refund_statuses, vec![200, 429]);

    set_chaos(&env, json!({ "refund_not_enough": true })).await;
    env.clock.advance(Duration::from_secs(61));
    let (status, body) = admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 100})).await;
    assert!(status >= 400, "NOT_ENOUGH is WeChat's refusal, not an accepted refund: {status} {body}");
    assert!(body.to_string().contains("NOT_ENOUGH"), "{body}");
    set_chaos(&env, json!({})).await;

    // A reason is limited to 80 bytes, not characters: 27 Chinese characters are 81 bytes.
    let long = "退".repeat(27);
    let (status, body) =
        admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 1, "reason": long})).await;
    assert_eq!(status, 400, "refused here, before WeChat refuses it: {body}");
    env.clock.advance(Duration::from_secs(61));
    let fits = "退".repeat(26);
    assert_eq!(admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 1, "reason": fits})).await.0, 201);

    // At most 50 refunds per order: two reached WeChat so far (100 fen and the 26-character
    // one), so 48 more are accepted and the next is refused.
    let mut answers = Vec::new();
    for _ in 0..49 {
        env.clock.advance(Duration::from_secs(61));
        answers.push(admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({"amount_fen": 1})).await);
    }
    let (last_status, last_body) = answers.pop().unwrap();
    assert!(answers.iter().all(|(s, _)| *s == 201), "{answers:?}");
    assert!(last_status >= 400 && last_body.to_string().contains("RULE_LIMIT"), "{last_status} {last_body}");

    // A year and a day after the payment, WeChat refuses any refund.
    let other = paid_coffee(&client).await;
    env.clock.advance(Duration::from_secs(366 * 24 * 3600));
    let (status, body) =
        admin_post(&app.base, &format!("/api/orders/{other}/refund"), Some(ADMIN_TOKEN), json!({"amount_fen": 1}))
            .await;
    assert!(status >= 400 && body.to_string().contains("INVALID_REQUEST"), "{status} {body}");
}

crate::both_profiles!(
    an_abnormal_refund_resolved_later_is_found_by_the_slow_poll,
    an_abnormal_refund_closed_by_the_operator_frees_its_amount,
    wechat_s_refund_rules_reach_the_operator,
    concurrent_refunds_with_one_number_never_fail,
    closed_and_abnormal_refunds_move_no_money,
    partial_and_full_refunds_move_money_once,
    a_refund_whose_notification_is_lost_is_settled_by_polling
);
