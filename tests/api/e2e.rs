//! The whole loop through the simulator: login, order, pay, notify, worker, SUCCESS.

use std::time::Duration;

use serde_json::{Value, json};
use wxpay_recon::demo::{ClientError, MiniProgram, verify_pay_sign};

use crate::helpers::*;

async fn login_order_pay_notify_reaches_success(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let mut client = MiniProgram::new(&app.base, &env.sim.base_url());

    let login = client.login(None).await.unwrap();
    let text = login.to_string();
    assert!(login["token"].as_str().is_some_and(|t| t.len() >= 40), "{text}");
    assert!(!text.contains("session_key") && !text.contains("openid"), "login must not leak WeChat secrets: {text}");

    let order = client.create_order("coffee", 2).await.unwrap();
    assert_eq!(order.amount_fen, 2 * 6800, "price comes from the catalog");
    let merchant_public = env.keys.merchant_key.public_key();
    assert!(verify_pay_sign(&order.payment, &merchant_public), "paySign verifies: {}", order.payment);
    assert_eq!(order.payment["package"].as_str().unwrap().split_once('=').unwrap().0, "prepay_id");
    assert_eq!(order.payment["appId"], env.keys.appid.as_str());

    let before = client.order(&order.out_trade_no).await.unwrap();
    assert_eq!(before["status"], "NOTPAY");

    client.pay(&order.out_trade_no).await.unwrap();
    let paid = client.wait_for_status(&order.out_trade_no, "SUCCESS", Duration::from_secs(20)).await.unwrap();
    assert!(paid["transaction_id"].as_str().is_some_and(|t| t.len() == 28 && t.starts_with("4200")), "{paid}");

    let row = app.state.db.order_by_no(&trade_no(&order.out_trade_no)).await.unwrap().unwrap();
    let events = app.state.db.order_events(row.id).await.unwrap();
    let trail: Vec<(String, String, i64)> =
        events.iter().map(|e| (e.source.clone(), e.to_status.clone(), e.applied)).collect();
    assert_eq!(trail, vec![("api".into(), "NOTPAY".into(), 1), ("notify".into(), "SUCCESS".into(), 1)]);

    let notifications: Value =
        reqwest::get(format!("{}/sim/notifications", env.sim.base_url())).await.unwrap().json().await.unwrap();
    assert_eq!(notifications[0]["attempts"], json!([204]), "acknowledged on the first delivery");
    assert_eq!(app.metrics.notify_accepted.with_label_values(&["new"]).get(), 1);
    assert_eq!(app.metrics.order_transitions.with_label_values(&["SUCCESS", "notify"]).get(), 1);
    let sealed: String = app.state.db.user_session_key(row.user_id).await.unwrap();
    assert!(sealed.starts_with("v1:"), "session_key is sealed at rest");
}

async fn simulator_rejects_a_request_with_a_bad_authorization(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let url = format!("{}/v3/pay/transactions/out-trade-no/NO123456?mchid={}", env.sim.base_url(), env.keys.mchid);
    let ts = env.clock.now().timestamp();
    // Signed with the wrong key (the platform's, not the merchant's).
    let wrong = wxpay_recon::wechat::sign::MerchantSigner {
        mchid: env.keys.mchid.clone(),
        serial: env.keys.merchant_serial.clone(),
        signer: env.keys.platform_key.clone(),
    };
    let path = format!("/v3/pay/transactions/out-trade-no/NO123456?mchid={}", env.keys.mchid);
    let auth = wrong.authorization("GET", &path, "", ts, "NONCE123").unwrap();
    let response = reqwest::Client::new()
        .get(&url)
        .header("Authorization", auth)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "SIGN_ERROR");
    assert_eq!(body["detail"]["sign_information"]["url"], path.as_str());

    // The right key but a canonical URL other than the one sent (query dropped) also fails.
    let right = wxpay_recon::wechat::sign::MerchantSigner {
        mchid: env.keys.mchid.clone(),
        serial: env.keys.merchant_serial.clone(),
        signer: env.keys.merchant_key.clone(),
    };
    let auth = right.authorization("GET", "/v3/pay/transactions/out-trade-no/NO123456", "", ts, "NONCE123").unwrap();
    let response = reqwest::Client::new()
        .get(&url)
        .header("Authorization", auth)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Correctly signed: the unknown order is a 404 ORDER_NOT_EXIST, proving the signature passed.
    let auth = right.authorization("GET", &path, "", ts, "NONCE123").unwrap();
    let response = reqwest::Client::new()
        .get(&url)
        .header("Authorization", auth)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.headers().contains_key("wechatpay-signature"), "responses are signed");
}

async fn api_refuses_bad_input_with_reasons(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;

    // The client cannot set a price: unknown fields are refused.
    let err = client
        .post("order", "/api/orders", json!({"product_id": "coffee", "quantity": 1, "amount_fen": 1}))
        .await
        .unwrap_err();
    assert!(matches!(&err, ClientError::Status { status: 400, body, .. } if body.contains("amount_fen")), "{err}");
    for (body, needle) in [
        (json!({"product_id": "nope"}), "unknown product"),
        (json!({"product_id": "coffee", "quantity": 0}), "quantity"),
        (json!({"product_id": "coffee", "quantity": 100}), "quantity"),
        (json!({"quantity": 1}), "product_id"),
    ] {
        let err = client.post("order", "/api/orders", body).await.unwrap_err();
        assert!(matches!(&err, ClientError::Status { status: 400, body, .. } if body.contains(needle)), "{err}");
    }
    let raw = reqwest::Client::new()
        .post(format!("{}/api/orders", app.base))
        .bearer_auth(client.token().unwrap())
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_REQUEST");

    // No token, a bad token, another user's order.
    let anonymous = MiniProgram::new(&app.base, &env.sim.base_url());
    let err = anonymous.get("me", "/api/me").await.unwrap_err();
    assert!(matches!(err, ClientError::Status { status: 401, .. }), "{err}");
    let order = client.create_order("mug", 1).await.unwrap();
    let (other, _) = env.client(&app).await;
    let err = other.order(&order.out_trade_no).await.unwrap_err();
    assert!(matches!(err, ClientError::Status { status: 404, .. }), "another user's order is a 404: {err}");
    assert_eq!(client.order(&order.out_trade_no).await.unwrap()["status"], "NOTPAY");
}

async fn login_codes_are_single_use_and_profiles_update(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let client = MiniProgram::new(&app.base, &env.sim.base_url());
    let code = client.sim_code(Some("oTestUser000000000000000001")).await.unwrap();
    let first = client.post("login", "/api/login", json!({"code": code})).await.unwrap();
    let err = client.post("login", "/api/login", json!({"code": code})).await.unwrap_err();
    assert!(matches!(&err, ClientError::Status { status: 401, body, .. } if body.contains("wx.login")), "{err}");
    let err = client.post("login", "/api/login", json!({"code": ""})).await.unwrap_err();
    assert!(matches!(err, ClientError::Status { status: 400, .. }), "{err}");

    // Same openid logs in again: same user, new token.
    let mut again = MiniProgram::new(&app.base, &env.sim.base_url());
    let second = again.login(Some("oTestUser000000000000000001")).await.unwrap();
    assert_eq!(first["user"]["id"], second["user"]["id"]);
    assert_ne!(first["token"], second["token"]);

    let updated = reqwest::Client::new()
        .put(format!("{}/api/me/profile", app.base))
        .bearer_auth(again.token().unwrap())
        .json(&json!({"nickname": "小王", "avatar_url": "https://example.com/a.png"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status().as_u16(), 200);
    let me = again.get("me", "/api/me").await.unwrap();
    assert_eq!(me["nickname"], "小王");
    assert_eq!(app.metrics.logins.with_label_values(&["bad_code"]).get(), 2);
}

crate::both_profiles!(
    login_order_pay_notify_reaches_success,
    simulator_rejects_a_request_with_a_bad_authorization,
    api_refuses_bad_input_with_reasons,
    login_codes_are_single_use_and_profiles_update
);
