//! Where real WeChat is stricter than a friendly simulator, end to end through our API: text
//! limits in UTF-8 bytes, final answers sent with HTTP 500, login refusing our own identity,
//! busy or rate-limited logins, and closes that must not be trusted without a query.

use std::time::Duration;

use serde_json::{Value, json};
use wxpay_recon::config::{CatalogItem, Secret};
use wxpay_recon::demo::{ClientError, MiniProgram};
use wxpay_recon::domain::OrderStatus;
use wxpay_recon::sim::{SimConfig, SimServer};

use crate::helpers::*;

/// (HTTP status, body) of a failed API call.
fn refusal(err: ClientError) -> (u16, String) {
    match err {
        ClientError::Status { status, body, .. } => (status, body),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// The endpoints of the `/v3` calls the simulator received (optionally about one order).
async fn sim_endpoints(env: &TestEnv, out_trade_no: Option<&str>) -> Vec<String> {
    let mut url = format!("{}/sim/calls", env.sim.base_url());
    if let Some(no) = out_trade_no {
        url.push_str(&format!("?out_trade_no={no}"));
    }
    let calls: Vec<Value> = reqwest::get(url).await.unwrap().json().await.unwrap();
    calls.iter().map(|c| c["endpoint"].as_str().unwrap_or_default().to_owned()).collect()
}

async fn sim_order(env: &TestEnv, no: &str) -> Value {
    reqwest::get(format!("{}/sim/orders/{no}", env.sim.base_url())).await.unwrap().json().await.unwrap()
}

async fn status_here(app: &TestApp, no: &str) -> OrderStatus {
    app.state.db.order_by_no(&trade_no(no)).await.unwrap().unwrap().status
}

/// (source, to_status) of each event of an order.
async fn trail(app: &TestApp, no: &str) -> Vec<(String, String)> {
    let order = app.state.db.order_by_no(&trade_no(no)).await.unwrap().unwrap();
    app.state.db.order_events(order.id).await.unwrap().into_iter().map(|e| (e.source, e.to_status)).collect()
}

async fn a_product_named_in_50_chinese_characters_is_ordered_and_paid(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let name = "云南普洱茶饼".repeat(8) + "礼盒"; // 50 characters, 150 bytes
    assert_eq!((name.chars().count(), name.len()), (50, 150));
    let product = CatalogItem { id: "puer".into(), name: name.clone(), price_fen: 12_800 };
    let app = env.spawn_app_with(ALL_ROLES, move |s| s.catalog.push(product)).await;
    let (client, _) = env.client(&app).await;

    let order = client.create_order("puer", 1).await.unwrap();
    assert_eq!(order.amount_fen, 12_800);
    // What WeChat received, and accepted: at most 127 bytes, cut between characters.
    let sent = sim_order(&env, &order.out_trade_no).await;
    let description = sent["request"]["description"].as_str().unwrap().to_owned();
    assert!(description.len() <= 127, "{} bytes", description.len());
    assert_eq!(description.chars().count(), 42);
    assert!(name.starts_with(&description));
    assert_eq!(sent["trade_state"], "NOTPAY");

    client.pay(&order.out_trade_no).await.unwrap();
    let paid = client.wait_for_status(&order.out_trade_no, "SUCCESS", Duration::from_secs(30)).await.unwrap();
    assert_eq!(paid["amount_fen"], 12_800);
}

async fn openid_mismatch_is_final_and_system_error_is_retried(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    // A user our database holds whose openid WeChat never gave this appid (kept from before an
    // appid change, say): WeChat answers 500 OPENID_MISMATCH, which retrying cannot change.
    let now = env.clock.now_ms();
    let user = app.state.db.upsert_user("oFromAnotherApp0000000000001", None, "v1:unused", now).await.unwrap();
    let (token, hash) = wxpay_recon::vault::new_token();
    app.state.db.insert_session(&hash, user.id, now, now + 3_600_000).await.unwrap();
    let stranger = MiniProgram::new(&app.base, &env.sim.base_url()).with_token(token.expose().clone());
    let (status, body) = refusal(stranger.create_order("coffee", 1).await.unwrap_err());
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("OPENID_MISMATCH") && body.contains("UPSTREAM_ERROR"), "{body}");
    assert!(body.contains("log in again"), "the client is told what helps: {body}");
    assert_eq!(sim_endpoints(&env, None).await, ["jsapi"], "asked once, not retried");
    let calls = |outcome: &str| app.metrics.wechat_calls.with_label_values(&["jsapi_prepay", outcome]).get();
    assert_eq!((calls("client_error"), calls("server_error")), (1, 0));

    // 500 SYSTEM_ERROR is transient: three attempts, then "retry payment" with the order number.
    let (client, _) = env.client(&app).await;
    set_chaos(&env, json!({"fault_rate": 1.0, "fault_modes": ["system_error"], "fault_endpoints": ["jsapi"]})).await;
    let (status, body) = refusal(client.create_order("coffee", 1).await.unwrap_err());
    assert_eq!(status, 503, "{body}");
    assert_eq!(sim_endpoints(&env, None).await.iter().filter(|e| *e == "jsapi").count(), 1 + 3);
    assert_eq!(calls("server_error"), 3);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "PAYMENT_UNAVAILABLE");
    let no = body["out_trade_no"].as_str().unwrap().to_owned();
    set_chaos(&env, json!({})).await;
    let payment = client.post("retry payment", &format!("/api/orders/{no}/payment"), json!({})).await.unwrap();
    assert!(payment["package"].as_str().unwrap().starts_with("prepay_id=wx"));
}

async fn login_refusing_our_app_secret_is_a_configuration_error(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // WeChat holds another AppSecret for our appid than the one we were given.
    let mut keys = env.sim_keys.clone();
    keys.app_secret = Secret::new("not-the-secret-we-were-given".to_owned());
    let config = SimConfig {
        keys,
        clock: env.clock.clone(),
        time_scale: 1000.0,
        seed: 7,
        chaos: Default::default(),
        allow_http_notify: true,
        bound_to_open_platform: false,
    };
    let wechat = SimServer::spawn(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let overrides = [("WECHAT__LOGIN_BASE_URL", wechat.base_url())];
    let (process, output) = env.spawn_process_logged(&["serve", "--dev-keys"], &overrides).await;

    let mut client = MiniProgram::new(&process.base, &wechat.base_url());
    let (status, body) = refusal(client.login(None).await.unwrap_err());
    assert_eq!(status, 500, "not a 503: retrying cannot help ({body})");
    assert!(body.contains("SERVER_MISCONFIGURED"), "{body}");
    eventually("an ERROR line naming wechat.app_secret", Duration::from_secs(10), || async {
        output.lines().iter().any(|(_, line)| line.contains("ERROR") && line.contains("wechat.app_secret"))
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", process.ops)).await.unwrap().text().await.unwrap();
    for series in [
        r#"wxpay_logins_total{outcome="misconfigured"} 1"#,
        r#"wxpay_wechat_calls_total{endpoint="code2session",outcome="config_error"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
    wechat.stop();
}

async fn busy_or_rate_limited_login_is_retry_later_and_a_risky_user_is_blocked(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    for (errcode, expected) in [(-1, 503), (45011, 503), (40226, 409)] {
        set_chaos(&env, json!({"login_fault_rate": 1.0, "login_fault_codes": [errcode]})).await;
        let mut client = MiniProgram::new(&app.base, &env.sim.base_url());
        let (status, body) = refusal(client.login(None).await.unwrap_err());
        assert_eq!(status, expected, "errcode {errcode}: {body}");
    }
    set_chaos(&env, json!({})).await;
    MiniProgram::new(&app.base, &env.sim.base_url()).login(None).await.unwrap();
    let logins = |outcome: &str| app.metrics.logins.with_label_values(&[outcome]).get();
    assert_eq!((logins("unavailable"), logins("blocked"), logins("misconfigured"), logins("ok")), (2, 1, 0, 1));
}

async fn closing_asks_wechat_before_recording_closed(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    // Notifications are lost: only the close path can learn of a payment.
    set_chaos(&env, json!({"drop_rate": 1.0})).await;
    let numbers = create_orders(&client, 2).await;
    let (paid, open) = (&numbers[0], &numbers[1]);
    pay_all(&env, std::slice::from_ref(paid)).await;

    // The payer paid; the close is refused with some code that is not ORDERPAID. The order is
    // queried, found paid and recorded paid, never CLOSED.
    let close_fails =
        |mode: &str| json!({"drop_rate": 1.0, "fault_rate": 1.0, "fault_modes": [mode], "fault_endpoints": ["close"]});
    set_chaos(&env, close_fails("param_error")).await;
    let (status, body) =
        refusal(client.post("cancel", &format!("/api/orders/{paid}/close"), json!({})).await.unwrap_err());
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already paid"), "{body}");
    assert_eq!(status_here(&app, paid).await, OrderStatus::Success);
    assert!(!trail(&app, paid).await.iter().any(|(_, to)| to == "CLOSED"));
    assert_eq!(sim_endpoints(&env, Some(paid)).await, ["close", "query"]);

    // Unpaid, and the close fails: queried, still open at WeChat, so not closed here either;
    // the owner is told to try again.
    set_chaos(&env, close_fails("system_error")).await;
    let (status, body) =
        refusal(client.post("cancel", &format!("/api/orders/{open}/close"), json!({})).await.unwrap_err());
    assert_eq!(status, 503, "{body}");
    assert_eq!(status_here(&app, open).await, OrderStatus::Notpay);
    assert_eq!(sim_order(&env, open).await["trade_state"], "NOTPAY");

    // WeChat answers 204: the owner's cancel still asks once more before recording CLOSED.
    set_chaos(&env, json!({"drop_rate": 1.0})).await;
    let closed = client.post("cancel", &format!("/api/orders/{open}/close"), json!({})).await.unwrap();
    assert_eq!(closed["status"], "CLOSED");
    assert_eq!(sim_endpoints(&env, Some(open)).await, ["close", "query", "close", "query"]);
    assert_eq!(trail(&app, open).await.last().unwrap(), &("api".to_owned(), "CLOSED".to_owned()));
}

crate::both_profiles!(
    a_product_named_in_50_chinese_characters_is_ordered_and_paid,
    openid_mismatch_is_final_and_system_error_is_retried,
    login_refusing_our_app_secret_is_a_configuration_error,
    busy_or_rate_limited_login_is_retry_later_and_a_risky_user_is_blocked,
    closing_asks_wechat_before_recording_closed,
);
