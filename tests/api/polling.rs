//! Pending orders never stay pending: with notifications lost and WeChat failing, polling
//! settles every paid order and closes every expired one; errors are retried or dead-lettered
//! as classified; the client's own status requests reach WeChat at most once per order.
//! Hours of order lifetime pass through the shared clock, not through sleeps.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use wxpay_recon::config::Settings;

use crate::helpers::*;

const EXPIRY: Duration = Duration::from_secs(2 * 3600 + 60);

/// The `/v3` calls the simulator received, optionally about one order.
async fn sim_calls(env: &TestEnv, out_trade_no: Option<&str>) -> Vec<Value> {
    let mut url = format!("{}/sim/calls", env.sim.base_url());
    if let Some(no) = out_trade_no {
        url.push_str(&format!("?out_trade_no={no}"));
    }
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn sim_order_state(env: &TestEnv, no: &str) -> String {
    let order: Value =
        reqwest::get(format!("{}/sim/orders/{no}", env.sim.base_url())).await.unwrap().json().await.unwrap();
    order["trade_state"].as_str().unwrap().to_owned()
}

async fn wait_for_count(app: &TestApp, status: &str, expected: i64, timeout: Duration) {
    let what = format!("{expected} orders {status}");
    eventually(&what, timeout, || async { count_status(app, status).await == expected }).await;
}

/// (source, to_status, applied) of each event of an order.
async fn trail(app: &TestApp, no: &str) -> Vec<(String, String, i64)> {
    let order = app.state.db.order_by_no(&trade_no(no)).await.unwrap().unwrap();
    let events = app.state.db.order_events(order.id).await.unwrap();
    events.into_iter().map(|e| (e.source, e.to_status, e.applied)).collect()
}

fn fast_polling(s: &mut Settings) {
    s.orders.poll_grace_secs = 60;
    s.poll.sweep_interval_ms = 100;
    s.poll.batch = 64; // several sweeps per wave: the drain loop is exercised
    s.poll.claim_secs = 30;
    s.wechat.rate_limit_per_sec = 200;
}

async fn polling_alone_settles_paid_orders_and_closes_expired_ones(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, fast_polling).await;
    let (client, _) = env.client(&app).await;
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;

    let numbers = create_orders(&client, 200).await;
    let (paid, unpaid) = numbers.split_at(150);
    pay_all(&env, paid).await;
    // The simulator decides each notification's fate when the payment is made: all dropped...
    let stats: Value = reqwest::get(format!("{}/sim/stats", env.sim.base_url())).await.unwrap().json().await.unwrap();
    assert_eq!(stats["notifications_dropped"], 150, "{stats}");
    assert_eq!(stats["notifications"], 150, "none is on its way: {stats}");
    // ...and a whole poll sweep after the payments finds nothing due within the grace period.
    wait_for_poll_sweep(&app).await;
    assert_eq!(app.metrics.poll_claimed.get(), 0, "nothing is due yet");
    assert_eq!(app.metrics.notify_received.get(), 0, "no notification arrives");
    assert_eq!(count_status(&app, "NOTPAY").await, 200, "no notification arrives and nothing is due yet");

    // Past the grace period: the poller finds the paid orders.
    env.clock.advance(Duration::from_secs(61));
    wait_for_count(&app, "SUCCESS", 150, Duration::from_secs(60)).await;
    assert_eq!(count_status(&app, "NOTPAY").await, 50);
    let paid_trail = trail(&app, &paid[0]).await;
    assert_eq!(paid_trail, vec![("api".into(), "NOTPAY".into(), 1), ("poll".into(), "SUCCESS".into(), 1)]);
    let row = app.state.db.order_by_no(&trade_no(&paid[0])).await.unwrap().unwrap();
    assert!(row.transaction_id.is_some() && row.paid_at_ms.is_some() && row.next_check_at_ms.is_none(), "{row:?}");
    // The unpaid ones are checked in the same wave (possibly just after the last payment).
    eventually("every unpaid order checked once", Duration::from_secs(30), || async {
        let numbers: Vec<_> = unpaid.iter().map(|no| trade_no(no)).collect();
        let rows = join_all(numbers.iter().map(|no| app.state.db.order_by_no(no))).await;
        rows.into_iter()
            .map(|row| row.unwrap().unwrap())
            .all(|o| o.status.as_str() == "NOTPAY" && o.check_attempts == 1)
    })
    .await;
    let pending = app.state.db.order_by_no(&trade_no(&unpaid[0])).await.unwrap().unwrap();
    assert_eq!(pending.check_attempts, 1, "checked once, rescheduled");
    assert!(pending.next_check_at_ms.unwrap() > env.clock.now_ms() + 50_000, "next check on the schedule");

    // Past time_expire: closed at WeChat, then here.
    env.clock.advance(EXPIRY);
    wait_for_count(&app, "CLOSED", 50, Duration::from_secs(60)).await;
    for no in unpaid.iter().take(5) {
        assert_eq!(sim_order_state(&env, no).await, "CLOSED", "closed at WeChat too");
        assert_eq!(
            trail(&app, no).await,
            vec![("api".into(), "NOTPAY".into(), 1), ("poll".into(), "CLOSED".into(), 1)]
        );
    }
    assert_eq!(count_status(&app, "SUCCESS").await, 150);
    assert_eq!(app.metrics.order_transitions.with_label_values(&["SUCCESS", "poll"]).get(), 150);
    assert_eq!(app.metrics.order_transitions.with_label_values(&["CLOSED", "poll"]).get(), 50);
    assert_eq!(app.metrics.poll_checks.with_label_values(&["success"]).get(), 150);
    // An expired order cannot be paid at WeChat any more.
    let late = reqwest::Client::new()
        .post(format!("{}/sim/pay", env.sim.base_url()))
        .json(&json!({ "out_trade_no": unpaid[0] }))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status().as_u16(), 409);
}

async fn flaky_wechat_still_settles_every_order(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            fast_polling(s);
            s.wechat.request_timeout_ms = 400;
            s.worker.max_attempts = 12;
        })
        .await;
    let (client, _) = env.client(&app).await;
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;
    let numbers = create_orders(&client, 60).await;
    let (paid, _unpaid) = numbers.split_at(40);
    pay_all(&env, paid).await;

    // 30 % of queries and closes fail, in each retryable way.
    set_chaos(
        &env,
        json!({
            "drop_rate": 1.0, "seed": 11, "fault_rate": 0.3, "hang_ms": 1200,
            "fault_endpoints": ["query", "close"],
            "fault_modes": ["server_error", "system_error", "frequency_limited", "hang", "bad_signature"],
        }),
    )
    .await;
    env.clock.advance(Duration::from_secs(61));
    wait_for_count(&app, "SUCCESS", 40, Duration::from_secs(90)).await;
    env.clock.advance(EXPIRY);
    wait_for_count(&app, "CLOSED", 20, Duration::from_secs(90)).await;
    assert_eq!(count_status(&app, "NOTPAY").await, 0, "every order ends final");

    let calls = sim_calls(&env, None).await;
    let faults: HashMap<String, usize> =
        calls.iter().filter_map(|c| c["fault"].as_str()).fold(HashMap::new(), |mut acc, f| {
            *acc.entry(f.to_owned()).or_default() += 1;
            acc
        });
    for mode in ["server_error", "system_error", "frequency_limited", "bad_signature"] {
        assert!(faults.get(mode).copied().unwrap_or(0) > 0, "{mode} was injected: {faults:?}");
    }
    let bad_signatures: u64 = ["query_order", "close_order"]
        .iter()
        .map(|e| app.metrics.wechat_calls.with_label_values(&[e, "bad_signature"]).get())
        .sum();
    assert_eq!(bad_signatures, faults["bad_signature"] as u64, "every bad response signature is caught and counted");
    assert!(app.metrics.jobs_finished.with_label_values(&["check_order", "retried"]).get() > 0);
}

async fn frequency_limited_calls_back_off(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, fast_polling).await;
    let (client, _) = env.client(&app).await;
    let numbers = create_orders(&client, 20).await;
    set_chaos(
        &env,
        json!({ "seed": 5, "fault_rate": 0.5, "fault_modes": ["frequency_limited"], "fault_endpoints": ["query"] }),
    )
    .await;
    env.clock.advance(EXPIRY);
    wait_for_count(&app, "CLOSED", 20, Duration::from_secs(90)).await;

    // After each FREQUENCY_LIMITED answer, the next call about the same order came at least
    // the policy's base delay later (settings: worker.backoff_base_ms).
    let base_ms = i64::try_from(app_settings_base_ms(&env)).unwrap();
    let mut limited = 0;
    for no in &numbers {
        let calls = sim_calls(&env, Some(no)).await;
        for pair in calls.windows(2) {
            if pair[0]["fault"] == "frequency_limited" {
                limited += 1;
                let gap = pair[1]["at_ms"].as_i64().unwrap() - pair[0]["at_ms"].as_i64().unwrap();
                assert!(gap >= base_ms, "order {no}: retried {gap} ms after FREQUENCY_LIMITED (< {base_ms} ms)");
            }
        }
    }
    assert!(limited >= 5, "the simulator answered FREQUENCY_LIMITED {limited} times with a retry after");
    assert!(app.metrics.wechat_calls.with_label_values(&["query_order", "rate_limited"]).get() > 0);
}

fn app_settings_base_ms(env: &TestEnv) -> u64 {
    env.settings().worker.backoff_base_ms
}

async fn dead_check_is_listed_and_retried_from_the_cli(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            fast_polling(s);
            s.poll.claim_secs = 86_400; // only the operator brings these back
            s.worker.max_attempts = 3;
            // This test counts exact attempts. With the suite's 1 s heartbeat and 2 missed beats,
            // a worker starved for 2 s on a loaded machine has its running job re-queued by a
            // sibling worker (apalis' orphan recovery), which runs it twice: more margin here.
            s.queue.heartbeat_secs = 5;
            s.queue.missed_heartbeats = 3;
        })
        .await;
    let (client, _) = env.client(&app).await;
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;
    let final_no = create_orders(&client, 1).await.remove(0);
    pay_all(&env, std::slice::from_ref(&final_no)).await;

    // A final error (PARAM_ERROR) is not retried: one call, then dead.
    set_chaos(
        &env,
        json!({ "drop_rate": 1.0, "fault_rate": 1.0, "fault_modes": ["param_error"], "fault_endpoints": ["query"] }),
    )
    .await;
    env.clock.advance(Duration::from_secs(61));
    eventually("the check is dead", Duration::from_secs(30), || async {
        app.state.db.dead_jobs().await.unwrap().len() == 1
    })
    .await;
    // Every check that started has finished, and none of them queued a retry: nothing about
    // this order is left to run (the poller will not claim it again for a day).
    wait_for_jobs_settled(&app, "check_order").await;
    assert_eq!(app.metrics.jobs_finished.with_label_values(&["check_order", "retried"]).get(), 0);
    assert_eq!(app.metrics.jobs_started.with_label_values(&["check_order"]).get(), 1);
    assert_eq!(app.state.db.dead_jobs().await.unwrap()[0].attempts, 1, "dead after its first attempt");
    assert_eq!(sim_calls(&env, Some(&final_no)).await.len(), 1, "a final error is not retried");

    // A retryable error is retried until the attempts run out.
    let exhausted_no = create_orders(&client, 1).await.remove(0);
    pay_all(&env, std::slice::from_ref(&exhausted_no)).await;
    set_chaos(
        &env,
        json!({ "drop_rate": 1.0, "fault_rate": 1.0, "fault_modes": ["system_error"], "fault_endpoints": ["query"] }),
    )
    .await;
    env.clock.advance(Duration::from_secs(61));
    eventually("the second check is dead", Duration::from_secs(30), || async {
        app.state.db.dead_jobs().await.unwrap().len() == 2
    })
    .await;
    assert_eq!(sim_calls(&env, Some(&exhausted_no)).await.len(), 3, "max_attempts = 3");
    assert_eq!(app.metrics.jobs_finished.with_label_values(&["check_order", "dead"]).get(), 2);

    let listed = run_cli(&env, &["jobs", "dead"]).await;
    assert!(listed.contains(&final_no) && listed.contains(&exhausted_no), "{listed}");
    assert!(listed.contains("PARAM_ERROR") && listed.contains("SYSTEM_ERROR"), "{listed}");
    assert!(listed.contains("attempts=1") && listed.contains("attempts=3"), "{listed}");
    // Each line starts with the dead job's id (`jobs retry <id>`) and names the job as the
    // worker's log did (`job.id`, the order number for a check).
    for dead in app.state.db.dead_jobs().await.unwrap() {
        let line = listed.lines().find(|l| l.trim_start().starts_with(&format!("{} ", dead.id))).unwrap_or("");
        let no = if dead.payload.contains(&final_no) { &final_no } else { &exhausted_no };
        assert!(line.contains(&format!("job.id={no}")), "dead job {}: {listed}", dead.id);
    }

    // The fault is gone; the operator retries; both orders settle.
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;
    let retried = run_cli(&env, &["jobs", "retry", "--all"]).await;
    assert_eq!(retried.matches("re-enqueued").count(), 2, "{retried}");
    wait_for_count(&app, "SUCCESS", 2, Duration::from_secs(30)).await;
    assert!(app.state.db.dead_jobs().await.unwrap().is_empty(), "retried jobs leave the dead list");
    let shown = run_cli(&env, &["order", "show", &final_no]).await;
    assert!(shown.contains("poll") && shown.contains("SUCCESS"), "{shown}");
}

/// Runs the real binary with this test's settings; returns stdout (asserting success).
async fn run_cli(env: &TestEnv, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpay-recon"))
        .args(args)
        .envs(env.env_vars())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

async fn status_requests_ask_wechat_once_and_owners_can_cancel(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, |s| s.poll.client_sync_cache_ms = 300).await;
    let (client, _) = env.client(&app).await;
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;
    let numbers = create_orders(&client, 3).await;
    let (paid_no, open_no, cancel_no) = (&numbers[0], &numbers[1], &numbers[2]);
    pay_all(&env, std::slice::from_ref(paid_no)).await;

    // Twenty concurrent status requests after paying: one query, and the honest answer.
    let answers = join_all((0..20).map(|_| client.order(paid_no))).await;
    for answer in answers {
        assert_eq!(answer.unwrap()["status"], "SUCCESS");
    }
    assert_eq!(sim_calls(&env, Some(paid_no)).await.iter().filter(|c| c["endpoint"] == "query").count(), 1);
    assert_eq!(trail(&app, paid_no).await[1], ("poll".into(), "SUCCESS".into(), 1));

    // Unpaid: concurrent requests share one query; after the cache lapses, one more.
    join_all((0..10).map(|_| client.order(open_no))).await;
    assert_eq!(sim_calls(&env, Some(open_no)).await.len(), 1);
    // Keep asking: requests inside the cache window do not reach WeChat; the first one after it
    // lapses does, exactly once.
    eventually("a status request after the cache lapsed asks WeChat again", Duration::from_secs(10), || async {
        assert_eq!(client.order(open_no).await.unwrap()["status"], "NOTPAY");
        sim_calls(&env, Some(open_no)).await.len() >= 2
    })
    .await;
    let calls = sim_calls(&env, Some(open_no)).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    let gap = calls[1]["at_ms"].as_i64().unwrap() - calls[0]["at_ms"].as_i64().unwrap();
    assert!(gap >= 290, "asked again {gap} ms after the first query, inside the 300 ms cache");

    // Cancel: closed at WeChat and here; a second cancel and a paid order's cancel are 409.
    let closed = client.post("close", &format!("/api/orders/{cancel_no}/close"), json!({})).await.unwrap();
    assert_eq!(closed["status"], "CLOSED");
    assert_eq!(sim_order_state(&env, cancel_no).await, "CLOSED");
    assert_eq!(trail(&app, cancel_no).await[1], ("api".into(), "CLOSED".into(), 1));
    for no in [cancel_no, paid_no] {
        let err = client.post("close", &format!("/api/orders/{no}/close"), json!({})).await.unwrap_err();
        assert!(err.to_string().contains("409"), "{err}");
    }
    // Somebody else's order is not found.
    let (stranger, _) = env.client(&app).await;
    let err = stranger.post("close", &format!("/api/orders/{open_no}/close"), json!({})).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    assert_eq!(count_status(&app, "NOTPAY").await, 1);
}

crate::both_profiles!(
    polling_alone_settles_paid_orders_and_closes_expired_ones,
    flaky_wechat_still_settles_every_order,
    frequency_limited_calls_back_off,
    dead_check_is_listed_and_retried_from_the_cli,
    status_requests_ask_wechat_once_and_owners_can_cancel,
);

/// Two replicas with 20 calls/s each share one budget through Redis: never more than 20 calls
/// in any second between them (each alone would allow 20, so 40 together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wechat_rate_limit_is_shared_across_replicas() {
    use wxpay_recon::telemetry::metrics::Metrics;
    use wxpay_recon::wechat::ratelimit::RateLimiter;

    let client = redis::Client::open(redis_url()).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    let prefix = format!("wxpay-test-{}", uuid::Uuid::new_v4().simple());
    let metrics = Metrics::new();
    let replicas = [
        RateLimiter::new(20, metrics.clone()).unwrap().shared_through(conn.clone(), &prefix),
        RateLimiter::new(20, metrics.clone()).unwrap().shared_through(conn, &prefix),
    ];
    let seconds = join_all((0..80).map(|i| {
        let limiter = replicas[i % 2].clone();
        async move {
            limiter.acquire().await;
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        }
    }))
    .await;
    let mut per_second: HashMap<u64, usize> = HashMap::new();
    for s in seconds {
        *per_second.entry(s).or_default() += 1;
    }
    // A call admitted in the last instant of a second may be stamped in the next one: allow 2
    // for that; unshared, the two replicas would reach 40.
    assert!(per_second.values().all(|&n| n <= 22), "about 20 calls in any second: {per_second:?}");
    assert!(per_second.len() >= 4, "80 calls at 20/s span at least four seconds: {per_second:?}");
    assert!(metrics.rate_limit_waits.with_label_values(&["shared"]).get() > 0);
}
