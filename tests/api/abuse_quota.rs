//! Quotas, the WeChat budget split and sessions, over real HTTP on both profiles: a scripted user
//! hammering order creation is refused 429 (with Retry-After) while another user's order goes
//! through; logins are limited per address (behind the trusted proxy header) and per code, and
//! in flight; a user's unpaid orders are capped (orders whose prepay failed do not count); user
//! traffic saturating its share of the WeChat budget does not delay settling work, nor leave a
//! cancel half-done; order creation answers within the request deadline with the out_trade_no;
//! logout revokes a token and expired sessions are purged, however many.
//! The test environment turns quotas off (`helpers::TestEnv::env_vars`); each test here turns on
//! the ones it is about.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};
use wxpay_recon::demo::MiniProgram;

use crate::helpers::*;

/// One answer: status, `Retry-After` (seconds), JSON body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
    took: Duration,
}

async fn request(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    // One client (and its connection pool) for all: building one per request costs more CPU
    // than the requests being measured.
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(reqwest::Client::new);
    let started = Instant::now();
    let mut builder = client.request(method, url).timeout(Duration::from_secs(30));
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let response = builder.send().await.expect("request");
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let body = response.json().await.unwrap_or(Value::Null);
    Answer { status, retry_after, body, took: started.elapsed() }
}

async fn create_order(app: &TestApp, token: &str) -> Answer {
    create_order_at(&app.base, token).await
}

async fn create_order_at(base: &str, token: &str) -> Answer {
    request(
        reqwest::Method::POST,
        format!("{base}/api/orders"),
        Some(token),
        &[],
        Some(json!({"product_id": "sticker", "quantity": 1})),
    )
    .await
}

async fn login_from(app: &TestApp, address: &str, code: &str) -> Answer {
    request(
        reqwest::Method::POST,
        format!("{}/api/login", app.base),
        None,
        &[("x-real-ip", address)],
        Some(json!({"code": code})),
    )
    .await
}

fn refusals(app: &TestApp, quota: &str) -> u64 {
    app.metrics.quota_refusals.with_label_values(&[quota]).get()
}

fn assert_rate_limited(answer: &Answer, max_retry_after: u64) {
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.body["code"], "RATE_LIMITED", "{}", answer.body);
    let wait = answer.retry_after.expect("a 429 carries Retry-After");
    assert!((1..=max_retry_after).contains(&wait), "Retry-After {wait}");
}

/// 50 orders a second for two seconds from one user, against 10 a minute (burst 5), sent to the
/// real binary: all but the burst are refused, quickly, with Retry-After; another user orders at
/// the same time.
async fn a_user_hammering_order_creation_is_refused_while_another_user_orders(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let overrides =
        [("QUOTAS__ORDERS_CREATE_PER_MIN", "10".to_owned()), ("QUOTAS__ORDERS_CREATE_BURST", "5".to_owned())];
    let mut process = env.spawn_process_with(&["serve"], &overrides).await;
    let base = process.base.clone();
    let mut hammer = MiniProgram::new(&base, &env.sim.base_url());
    hammer.login(None).await.unwrap();
    let mut other = MiniProgram::new(&base, &env.sim.base_url());
    other.login(None).await.unwrap();
    let hammer_token = hammer.token().unwrap().to_owned();
    let started = Instant::now();
    let hammering = async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut sent = Vec::new();
        for _ in 0..100 {
            tick.tick().await;
            let (token, base) = (hammer_token.clone(), base.clone());
            // Each request starts on its tick and runs on its own.
            sent.push(tokio::spawn(async move { create_order_at(&base, &token).await }));
        }
        join_all(sent).await.into_iter().map(Result::unwrap).collect::<Vec<_>>()
    };
    let ordering = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let placed = create_order_at(&base, other.token().unwrap()).await;
        (placed, started.elapsed())
    };
    let (answers, (placed, placed_at)) = tokio::join!(hammering, ordering);
    let created = answers.iter().filter(|a| a.status == 201).count();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(created + refused.len(), 100, "only 201 or 429: {statuses:?}");
    assert!(created <= 6, "the burst of 5 (+1 refill at most): {created}");
    for answer in &refused {
        assert_rate_limited(answer, 12);
    }
    let mut took: Vec<Duration> = refused.iter().map(|a| a.took).collect();
    took.sort();
    let (median, slowest) = (took[took.len() / 2], took[took.len() - 1]);
    // Refused before any call to WeChat or the database write: never near the request timeout.
    assert!(
        median < Duration::from_millis(500) && slowest < Duration::from_secs(5),
        "refused at once: median {median:?}, slowest {slowest:?}"
    );
    println!("hammering: {created} created, {} refused (median {median:?}, slowest {slowest:?})", refused.len());
    assert_eq!(placed.status, 201, "the other user is not affected: {}", placed.body);
    // Sent 0.7 s into the hammering; answered well within the request timeout (10 s).
    assert!(placed_at < Duration::from_secs(8), "not starved by the hammering: {placed_at:?}");
    let exposition = reqwest::get(format!("{}/metrics", process.ops)).await.unwrap().text().await.unwrap();
    let counted = |series: &str| exposition.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok());
    assert_eq!(counted("wxpay_quota_refusals_total{quota=\"orders_create\"}"), Some(refused.len() as u64));
    assert_eq!(counted("wxpay_quota_refusals_total{quota=\"login_ip\"}"), Some(0));
    process.sigkill();
}

/// Logins per address (from the trusted proxy header) and per code.
async fn logins_are_limited_per_address_and_per_code(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.server.client_ip_header = "X-Real-IP".into();
            s.quotas.login_per_ip_per_min = 1;
            s.quotas.login_per_ip_burst = 3;
            s.quotas.login_per_code_per_min = 1;
            s.quotas.login_per_code_burst = 2;
        })
        .await;
    let codes = MiniProgram::new(&app.base, &env.sim.base_url());
    for _ in 0..3 {
        let code = codes.sim_code(None).await.unwrap();
        let answer = login_from(&app, "203.0.113.1", &code).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let code = codes.sim_code(None).await.unwrap();
    assert_rate_limited(&login_from(&app, "203.0.113.1", &code).await, 60);
    // The same (unused) code from another address: that address has its own quota.
    assert_eq!(login_from(&app, "203.0.113.2", &code).await.status, 200);
    assert_eq!(refusals(&app, "login_ip"), 1);

    // One code, tried from three addresses: used once, refused by WeChat once (single use),
    // then refused by the code quota before it costs another call to WeChat.
    let code = codes.sim_code(None).await.unwrap();
    assert_eq!(login_from(&app, "198.51.100.1", &code).await.status, 200);
    assert_eq!(login_from(&app, "198.51.100.2", &code).await.status, 401);
    assert_rate_limited(&login_from(&app, "198.51.100.3", &code).await, 60);
    assert_eq!(refusals(&app, "login_code"), 1);
    assert_eq!(app.metrics.logins.with_label_values(&["rate_limited"]).get(), 2);
}

/// A user holds at most `open_orders_per_user` unpaid orders; cancelling one makes room.
async fn unpaid_orders_per_user_are_capped(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, |s| s.quotas.open_orders_per_user = 2).await;
    let (client, _) = env.client(&app).await;
    let (other, _) = env.client(&app).await;
    let token = client.token().unwrap();
    let first = create_order(&app, token).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(create_order(&app, token).await.status, 201);
    let refused = create_order(&app, token).await;
    assert_rate_limited(&refused, 60);
    assert!(refused.body["message"].as_str().unwrap().contains("unpaid"), "{}", refused.body);
    assert_eq!(create_order(&app, other.token().unwrap()).await.status, 201, "per user");
    assert_eq!(refusals(&app, "open_orders"), 1);

    let no = first.body["out_trade_no"].as_str().unwrap();
    client.post("close", &format!("/api/orders/{no}/close"), json!({})).await.unwrap();
    assert_eq!(create_order(&app, token).await.status, 201, "a cancelled order frees its place");
    assert_eq!(count_status(&app, "NOTPAY").await, 3);
}

/// A prepay that failed (WeChat away, our budget busy) handed nothing out to pay: its NOTPAY
/// order does not count toward the unpaid-order cap, so a busy WeChat cannot lock a user out
/// of ordering. Orders handed out for payment still do.
async fn orders_whose_prepay_failed_do_not_count_toward_the_cap(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, |s| s.quotas.open_orders_per_user = 1).await;
    let (client, _) = env.client(&app).await;
    let token = client.token().unwrap();
    set_chaos(&env, json!({"fault_rate": 1.0, "fault_modes": ["system_error"], "fault_endpoints": ["jsapi"]})).await;
    let mut failed_orders = Vec::new();
    for _ in 0..2 {
        let failed = create_order(&app, token).await;
        assert_eq!(failed.status, 503, "{}", failed.body);
        assert_eq!(failed.body["code"], "PAYMENT_UNAVAILABLE", "{}", failed.body);
        failed_orders.push(failed.body["out_trade_no"].as_str().unwrap().to_owned());
    }
    set_chaos(&env, json!({})).await;
    let created = create_order(&app, token).await;
    assert_eq!(created.status, 201, "failed prepays hold no place under the cap: {}", created.body);
    assert_rate_limited(&create_order(&app, token).await, 60);
    assert_eq!(refusals(&app, "open_orders"), 1);
    // Nor are they a way around it: paying one again is held to the cap like a new order.
    let url = format!("{}/api/orders/{}/payment", app.base, failed_orders[0]);
    assert_rate_limited(&request(reqwest::Method::POST, url, Some(token), &[], None).await, 60);
    assert_eq!(refusals(&app, "open_orders"), 2);
    assert_eq!(count_status(&app, "NOTPAY").await, 3);
}

/// A login upstream that accepts connections and never answers: only `login_concurrency`
/// logins wait for it; the others are refused at once instead of piling up.
async fn logins_in_flight_are_capped(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.wechat.login_base_url = format!("http://{silent_addr}");
            s.wechat.request_timeout_ms = 2_000;
            s.quotas.login_concurrency = 2;
        })
        .await;
    let codes: Vec<String> = (0..6).map(|i| format!("code-{i}")).collect();
    let answers = join_all(codes.iter().map(|code| login_from(&app, "192.0.2.1", code))).await;
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    let waited: Vec<&Answer> = answers.iter().filter(|a| a.status != 429).collect();
    assert_eq!(refused.len(), 4, "{:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    for answer in &refused {
        assert_rate_limited(answer, 1);
        assert!(answer.took < Duration::from_millis(1_000), "refused without waiting: {:?}", answer.took);
    }
    for answer in &waited {
        assert_eq!(answer.status, 503, "WeChat login timed out: {}", answer.body);
        assert!(answer.took >= Duration::from_millis(1_500), "{:?}", answer.took);
    }
    assert_eq!(refusals(&app, "login_concurrency"), 4);
    holder.abort();
}

/// WeChat budget of 4/s, users may use half: one user creating orders from 16 connections
/// saturates the user share (prepays refused fast as busy, 503 with the out_trade_no), while
/// polls of an order (settling work) keep going through at once.
async fn user_traffic_cannot_starve_settling_calls(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.wechat.rate_limit_per_sec = 4;
            s.wechat_budget.user_share_percent = 50;
            s.wechat_budget.user_max_wait_ms = 200;
        })
        .await;
    let (client, _) = env.client(&app).await;
    let polled = client.create_order("coffee", 1).await.unwrap().out_trade_no;
    let token = client.token().unwrap().to_owned();
    let until = Instant::now() + Duration::from_secs(3_500) / 1000;
    let flood = join_all((0..16).map(|_| {
        let token = token.clone();
        let app = &app;
        async move {
            let mut answers = Vec::new();
            while Instant::now() < until {
                answers.push(create_order(app, &token).await);
            }
            answers
        }
    }));
    let polls = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut took = Vec::new();
        for _ in 0..4 {
            let started = Instant::now();
            app.state.sync.check(&trade_no(&polled)).await.expect("the poll goes through");
            took.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        took
    };
    let (answers, took) = tokio::join!(flood, polls);
    let answers: Vec<Answer> = answers.into_iter().flatten().collect();
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(busy.len() >= 5, "the flood saturates the user share: {} busy of {}", busy.len(), answers.len());
    for answer in &busy {
        assert_eq!(answer.body["code"], "PAYMENT_UNAVAILABLE", "{}", answer.body);
        assert!(answer.body["out_trade_no"].as_str().is_some_and(|no| no.len() >= 6), "{}", answer.body);
        assert!(answer.retry_after.is_some());
    }
    // What the budget made them wait (the rest of a poll's time is CPU on this shared machine).
    let budget_wait = app.metrics.wechat_budget_wait_seconds.with_label_values(&["settling"]).get();
    assert!(budget_wait < 0.5, "settling calls barely wait for the budget: {budget_wait} s over 4 polls");
    let slowest = took.iter().max().copied().unwrap();
    assert!(slowest < Duration::from_secs(3), "settling calls are not delayed by users: {took:?}");
    let admissions = |priority: &str, outcome: &str| {
        app.metrics.wechat_budget_admissions.with_label_values(&[priority, outcome]).get()
    };
    assert!(admissions("user", "refused") >= busy.len() as u64);
    assert_eq!(admissions("settling", "refused"), 0);
    // The simulator saw every poll.
    let calls: Vec<Value> = reqwest::get(format!("{}/sim/calls?out_trade_no={polled}", env.sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls.iter().filter(|c| c["endpoint"] == "query").count(), 4, "{calls:?}");
    println!(
        "priority split: {} order requests ({} busy), settling budget wait {budget_wait:.3} s, poll latencies {:?} ms",
        answers.len(),
        busy.len(),
        took.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
}

/// A budget of 2 calls/s, users allowed 1/s: the owner's cancel spends the user share on the
/// close, and the query confirming it is settling work, so the cancel completes (CLOSED here as
/// at WeChat) instead of answering SERVICE_BUSY with the order closed there and NOTPAY here.
async fn a_cancel_is_confirmed_when_the_user_share_is_spent(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.wechat.rate_limit_per_sec = 2;
            s.wechat_budget.user_share_percent = 50;
            s.wechat_budget.user_max_wait_ms = 200;
        })
        .await;
    let (client, _) = env.client(&app).await;
    let no = client.create_order("coffee", 1).await.unwrap().out_trade_no;
    // The prepay's user call refills (and leaves the budget's current second).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let url = format!("{}/api/orders/{no}/close", app.base);
    let answer = request(reqwest::Method::POST, url, client.token(), &[], Some(json!({}))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "CLOSED", "{}", answer.body);
    assert_eq!(count_status(&app, "CLOSED").await, 1);
}

/// WeChat hangs on prepay: creation answers 503 PAYMENT_UNAVAILABLE with the out_trade_no
/// before the request timeout (3 s here; three 1 s attempts plus backoff would outlive it), and
/// the order can be paid with that number once WeChat is back.
async fn order_creation_answers_within_the_request_deadline(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.server.request_timeout_ms = 3_000;
            s.orders.deadline_margin_ms = 1_000;
            s.wechat.request_timeout_ms = 1_000;
        })
        .await;
    let (client, _) = env.client(&app).await;
    set_chaos(&env, json!({"fault_rate": 1.0, "fault_modes": ["hang"], "fault_endpoints": ["jsapi"], "hang_ms": 5000}))
        .await;
    let answer = create_order(&app, client.token().unwrap()).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.body["code"], "PAYMENT_UNAVAILABLE", "{}", answer.body);
    assert!(answer.retry_after.is_some());
    assert!(answer.took < Duration::from_millis(2_900), "before the request timeout: {:?}", answer.took);
    let no = answer.body["out_trade_no"].as_str().expect("the number to retry with").to_owned();
    assert_eq!(count_status(&app, "NOTPAY").await, 1);

    set_chaos(&env, json!({})).await;
    let payment = client.post("pay again", &format!("/api/orders/{no}/payment"), json!({})).await.unwrap();
    assert!(payment["package"].as_str().unwrap().starts_with("prepay_id="), "{payment}");
    println!("order creation under a hanging WeChat answered 503 in {:?}", answer.took);
}

/// Forwards TCP to `target`, holding every chunk the client sends for `delay`: each request
/// (on pooled connections too) reaches the simulator that much later.
async fn slow_forwarder(target: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                let back = tokio::spawn(async move { tokio::io::copy(&mut out_read, &mut in_write).await });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = in_read.read(&mut buf).await {
                    tokio::time::sleep(delay).await;
                    if out_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                back.abort();
            });
        }
    });
    addr
}

/// The prepay succeeds but its prepay_id cannot be recorded before the deadline (the order row
/// is locked): the answer is still ours, 503 PAYMENT_UNAVAILABLE with the out_trade_no at the
/// order deadline, not the timeout layer's bare 503 a second later.
async fn order_creation_answers_with_its_number_when_recording_the_prepay_hangs(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let sim = env.sim.base_url();
    let authority = sim.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let slow = slow_forwarder(authority.parse().unwrap(), Duration::from_millis(400)).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.server.request_timeout_ms = 3_000;
            s.orders.deadline_margin_ms = 1_000;
            s.wechat.request_timeout_ms = 1_500;
            s.wechat.pay_base_url = sim.replace(&authority, &slow.to_string());
        })
        .await;
    let (client, _) = env.client(&app).await;
    let token = client.token().unwrap().to_owned();
    let url = format!("{}/api/orders", app.base);
    let creation = tokio::spawn(async move {
        request(reqwest::Method::POST, url, Some(&token), &[], Some(json!({"product_id": "coffee"}))).await
    });
    // The order is stored before the (slowed) prepay: lock its row until the answer is in.
    let no = loop {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT out_trade_no FROM orders").fetch_optional(app.state.db.reader()).await.unwrap();
        if let Some((no,)) = row {
            break no;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut lock = app.state.db.writer().begin().await.unwrap();
    sqlx::query("UPDATE orders SET prepay_id = prepay_id WHERE out_trade_no = $1")
        .bind(&no)
        .execute(&mut *lock)
        .await
        .unwrap();
    let answer = creation.await.unwrap();
    lock.rollback().await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.body["code"], "PAYMENT_UNAVAILABLE", "{}", answer.body);
    assert_eq!(answer.body["out_trade_no"], no.as_str(), "{}", answer.body);
    assert!(answer.took < Duration::from_millis(2_900), "before the request timeout: {:?}", answer.took);
}

/// `POST /api/logout` revokes only the presented token; a login purges expired sessions, all of
/// them even when they are more than one batch (1,000) of the purge.
async fn logout_revokes_the_token_and_expired_sessions_are_purged(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let now = env.clock.now_ms();
    let user = app.state.db.upsert_user("o-expired-session", None, "sealed", now).await.unwrap();
    app.state.db.insert_session("expired-session-hash", user.id, now - 2_000, now - 1_000).await.unwrap();
    for i in 0..1_500 {
        app.state.db.insert_session(&format!("backlog-{i}"), user.id, now - 5_000, now - 4_000 + i).await.unwrap();
    }
    app.state.db.insert_session("live-session-hash", user.id, now, now + 3_600_000).await.unwrap();

    let (client, openid) = env.client(&app).await;
    // That login purged every expired session (in the background), and only them.
    eventually("the login's purge is done", Duration::from_secs(20), || async {
        app.metrics.sessions_purged.get() == 1_501
    })
    .await;
    assert_eq!(scalar(&app.state, "SELECT COUNT(*) FROM sessions WHERE token_hash = 'expired-session-hash'").await, 0);
    assert_eq!(scalar(&app.state, "SELECT COUNT(*) FROM sessions WHERE token_hash LIKE 'backlog-%'").await, 0);
    assert_eq!(scalar(&app.state, "SELECT COUNT(*) FROM sessions WHERE token_hash = 'live-session-hash'").await, 1);
    assert_eq!(app.metrics.sessions_purged.get(), 1_501);

    let mut second = MiniProgram::new(&app.base, &env.sim.base_url());
    second.login(Some(&openid)).await.unwrap();
    let me = |token: String| {
        let url = format!("{}/api/me", app.base);
        async move { request(reqwest::Method::GET, url, Some(&token), &[], None).await }
    };
    let token = client.token().unwrap().to_owned();
    assert_eq!(me(token.clone()).await.status, 200);
    let logout = |token: String| {
        let url = format!("{}/api/logout", app.base);
        async move { request(reqwest::Method::POST, url, Some(&token), &[], None).await }
    };
    assert_eq!(logout(token.clone()).await.status, 204);
    assert_eq!(me(token.clone()).await.status, 401, "a revoked token is refused");
    assert_eq!(logout(token.clone()).await.status, 401, "and cannot log out twice");
    assert_eq!(me(second.token().unwrap().to_owned()).await.status, 200, "the user's other session stays");
}

crate::both_profiles!(
    a_user_hammering_order_creation_is_refused_while_another_user_orders,
    logins_are_limited_per_address_and_per_code,
    unpaid_orders_per_user_are_capped,
    orders_whose_prepay_failed_do_not_count_toward_the_cap,
    logins_in_flight_are_capped,
    user_traffic_cannot_starve_settling_calls,
    order_creation_answers_within_the_request_deadline,
    order_creation_answers_with_its_number_when_recording_the_prepay_hangs,
    a_cancel_is_confirmed_when_the_user_share_is_spent,
    logout_revokes_the_token_and_expired_sessions_are_purged,
);

/// Two replicas sharing a budget of 20 calls/s through Redis, users allowed half: whatever each
/// replica's own limiters allow (10 user calls/s each, so 20 together), user calls across both
/// stay near 10 in any second, and settling calls keep flowing beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_budget_keeps_the_user_share_across_replicas() {
    use std::collections::HashMap;
    use wxpay_recon::telemetry::metrics::Metrics;
    use wxpay_recon::wechat::ratelimit::{BudgetSplit, Priority, RateLimiter};

    let started = Instant::now();
    let conn = redis::Client::open(redis_url()).unwrap().get_connection_manager().await.unwrap();
    let prefix = format!("wxpay-test-{}", uuid::Uuid::new_v4().simple());
    let metrics = Metrics::new();
    let split = BudgetSplit {
        user_share_percent: 50,
        user_max_wait: Duration::from_secs(2),
        settling_max_wait: Duration::from_secs(10),
    };
    let replica = || RateLimiter::with_split(20, split, metrics.clone()).unwrap().shared_through(conn.clone(), &prefix);
    let replicas = [replica(), replica()];
    let calls = (0..60).map(|i| {
        let limiter = replicas[i % 2].clone();
        let priority = if i % 3 == 0 { Priority::Settling } else { Priority::User };
        async move {
            let admitted = limiter.admit(priority).await.is_ok();
            let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            (priority, admitted, second)
        }
    });
    let outcomes = join_all(calls).await;
    let mut per_second: HashMap<(u64, Priority), usize> = HashMap::new();
    for (priority, admitted, second) in &outcomes {
        if *admitted {
            *per_second.entry((*second, *priority)).or_default() += 1;
        }
    }
    // A call admitted in the last instant of a second may be stamped in the next: 2 of slack.
    for ((second, priority), n) in &per_second {
        if *priority == Priority::User {
            assert!(*n <= 12, "about 10 user calls in second {second} across both replicas: {per_second:?}");
        }
    }
    let settling = outcomes.iter().filter(|(p, ok, _)| *p == Priority::Settling && *ok).count();
    assert_eq!(settling, 20, "every settling call is admitted: {per_second:?}");
    let user = outcomes.iter().filter(|(p, ok, _)| *p == Priority::User && *ok).count();
    assert!(user >= 10, "users get their share: {user}");
    println!("shared split: {user} user + {settling} settling admitted in {:?}", started.elapsed());
}
