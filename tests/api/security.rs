//! Security properties that already hold, pinned so they keep holding: bearer tokens (long,
//! random, stored hashed, expiring), one user's orders out of another's reach, admin routes
//! behind the admin token, SQL-looking input stored as plain text, and the session_key never in
//! an answer.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wxpay_recon::demo::MiniProgram;

use crate::helpers::*;

/// Strings that break a query built by concatenation (and a few that break naive escaping).
const INJECTIONS: [&str; 6] = [
    "' OR '1'='1",
    "x'); DROP TABLE orders; --",
    "\"; DELETE FROM sessions; --",
    "1; UPDATE orders SET status='SUCCESS'",
    "%' OR 1=1 --",
    "\\'; SELECT pg_sleep(5); --",
];

/// One request with an optional bearer token and JSON body: (status, body as JSON or text).
async fn call(base: &str, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    scalar(&app.state, sql).await
}

async fn tokens_are_random_hashed_at_rest_and_expire(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (first, _) = env.client(&app).await;
    let (second, _) = env.client(&app).await;
    let (a, b) = (first.token().unwrap().to_owned(), second.token().unwrap().to_owned());
    assert_ne!(a, b);
    for token in [&a, &b] {
        let raw = B64URL.decode(token).unwrap_or_else(|e| panic!("token {token:?} is base64url: {e}"));
        assert!(raw.len() * 8 >= 128, "a token carries at least 128 random bits, got {} bytes", raw.len());
    }

    // At rest: only SHA-256 of each token, nothing that would let a database reader log in.
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT token_hash, user_id FROM sessions ORDER BY created_at_ms")
        .fetch_all(app.state.db.reader())
        .await
        .unwrap();
    let hashes: Vec<&str> = rows.iter().map(|(h, _)| h.as_str()).collect();
    for token in [&a, &b] {
        assert!(hashes.contains(&hex::encode(Sha256::digest(token.as_bytes())).as_str()), "{hashes:?}");
        assert!(!hashes.contains(&token.as_str()), "the token itself is not stored");
    }
    let (status, _) = call(&app.base, Method::GET, "/api/me", Some(hashes[0]), None).await;
    assert_eq!(status, 401, "the stored hash is not a token");

    // A token lives auth.token_ttl_secs (7 days by default), then stops working.
    assert_eq!(call(&app.base, Method::GET, "/api/me", Some(&a), None).await.0, 200);
    env.clock.advance(Duration::from_secs(7 * 24 * 3600 + 60));
    let (status, body) = call(&app.base, Method::GET, "/api/me", Some(&a), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "UNAUTHORIZED");
    // Near misses of a live token are refused too.
    let (fresh, _) = env.client(&app).await;
    let live = fresh.token().unwrap().to_owned();
    for forged in [format!("{live}x"), live[..live.len() - 1].to_owned(), live.to_uppercase(), String::new()] {
        assert_eq!(call(&app.base, Method::GET, "/api/me", Some(&forged), None).await.0, 401, "{forged:?}");
    }
}

async fn one_user_cannot_reach_another_users_order(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (owner, _) = env.client(&app).await;
    let (intruder, _) = env.client(&app).await;
    let unpaid = owner.create_order("coffee", 1).await.unwrap().out_trade_no;
    let paid = owner.create_order("mug", 1).await.unwrap().out_trade_no;
    owner.pay(&paid).await.unwrap();
    owner.wait_for_status(&paid, "SUCCESS", Duration::from_secs(20)).await.unwrap();
    let token = intruder.token().unwrap();

    for no in [&unpaid, &paid] {
        // The same answer as for an order that does not exist: nothing tells the intruder it does.
        for (method, path) in [
            (Method::GET, format!("/api/orders/{no}")),
            (Method::POST, format!("/api/orders/{no}/payment")),
            (Method::POST, format!("/api/orders/{no}/close")),
        ] {
            let (status, body) = call(&app.base, method.clone(), &path, Some(token), None).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
            assert_eq!(body["code"], "NOT_FOUND");
        }
        // Refunds are operators' only: a user's token, anyone's, is not enough.
        let refund = Some(json!({"amount_fen": 1}));
        assert_eq!(
            call(&app.base, Method::POST, &format!("/api/orders/{no}/refund"), Some(token), refund).await.0,
            401
        );
        assert_eq!(call(&app.base, Method::GET, &format!("/api/orders/{no}/refunds"), Some(token), None).await.0, 401);
    }
    // Nothing moved: the owner's orders are as they were.
    assert_eq!(owner.order(&unpaid).await.unwrap()["status"], "NOTPAY");
    assert_eq!(owner.order(&paid).await.unwrap()["status"], "SUCCESS");
    assert_eq!(count(&app, "SELECT COUNT(*) FROM refunds").await, 0);
}

async fn admin_routes_need_the_exact_admin_token(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    let paid = paid_coffee(&client).await;
    let user_token = client.token().unwrap().to_owned();
    let wrong = [
        None,
        Some(String::new()),
        Some(user_token),
        Some(ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1].to_owned()),
        Some(format!("{ADMIN_TOKEN}0")),
        Some(ADMIN_TOKEN.to_uppercase()),
        Some(format!(" {ADMIN_TOKEN}x")),
    ];
    let routes = [
        (Method::GET, "/admin/jobs".to_owned(), None),
        (Method::POST, format!("/api/orders/{paid}/refund"), Some(json!({"amount_fen": 100}))),
        (Method::GET, format!("/api/orders/{paid}/refunds"), None),
    ];
    for (method, path, body) in &routes {
        for token in &wrong {
            let (status, answer) = call(&app.base, method.clone(), path, token.as_deref(), body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
        }
    }
    assert_eq!(count(&app, "SELECT COUNT(*) FROM refunds").await, 0, "no refused call moved money");
    for (method, path, body) in &routes {
        let (status, answer) = call(&app.base, method.clone(), path, Some(ADMIN_TOKEN), body.clone()).await;
        assert!((200..300).contains(&status), "{method} {path} with the admin token: {status} {answer}");
    }
}

async fn sql_in_every_text_field_is_stored_as_text(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    let token = client.token().unwrap().to_owned();
    let paid = paid_coffee(&client).await;
    let before = (
        count(&app, "SELECT COUNT(*) FROM orders").await,
        count(&app, "SELECT COUNT(*) FROM sessions").await,
        count(&app, "SELECT COUNT(*) FROM users").await,
    );

    for evil in INJECTIONS {
        // Stored and read back exactly.
        let (status, user) =
            call(&app.base, Method::PUT, "/api/me/profile", Some(&token), Some(json!({"nickname": evil}))).await;
        assert_eq!((status, user["nickname"].as_str()), (200, Some(evil)), "{user}");
        let avatar = format!("https://example.com/{evil}");
        let (status, user) =
            call(&app.base, Method::PUT, "/api/me/profile", Some(&token), Some(json!({"avatar_url": avatar}))).await;
        assert_eq!((status, user["avatar_url"].as_str()), (200, Some(avatar.as_str())), "{user}");
        // Refused or not found as any other unknown value would be.
        let (status, body) =
            call(&app.base, Method::POST, "/api/orders", Some(&token), Some(json!({"product_id": evil}))).await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = call(&app.base, Method::POST, "/api/login", None, Some(json!({"code": evil}))).await;
        assert!([400, 401].contains(&status), "login code {evil:?}: {status} {body}");
        let path = format!("/api/orders/{}", urlencode(evil));
        assert!([400, 404].contains(&call(&app.base, Method::GET, &path, Some(&token), None).await.0), "{path}");
        // An operator's free text: a refund reason and a refund number. WeChat refuses a second
        // refund of one order within a minute.
        env.clock.advance(Duration::from_secs(61));
        let refund = format!("/api/orders/{paid}/refund");
        let (status, body) =
            admin_post(&app.base, &refund, Some(ADMIN_TOKEN), json!({"amount_fen": 1, "reason": evil})).await;
        assert_eq!(status, 201, "reason {evil:?}: {body}");
        assert_eq!(body["reason"].as_str(), Some(evil));
        let (status, body) =
            admin_post(&app.base, &refund, Some(ADMIN_TOKEN), json!({"amount_fen": 1, "out_refund_no": evil})).await;
        assert_eq!(status, 400, "out_refund_no {evil:?}: {body}");
    }

    let after = (
        count(&app, "SELECT COUNT(*) FROM orders").await,
        count(&app, "SELECT COUNT(*) FROM sessions").await,
        count(&app, "SELECT COUNT(*) FROM users").await,
    );
    assert_eq!(before, after, "no row appeared or vanished");
    assert_eq!(client.order(&paid).await.unwrap()["status"].as_str().map(|s| s != "NOTPAY"), Some(true));
    let refunds = count(&app, "SELECT COUNT(*) FROM refunds").await;
    assert_eq!(refunds, i64::try_from(INJECTIONS.len()).unwrap(), "one refund per reason, nothing else");
}

/// Percent-encodes everything but unreserved characters (a path segment the router passes on).
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn the_session_key_is_in_no_answer(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let mut client = MiniProgram::new(&app.base, &env.sim.base_url());
    let login = client.login(None).await.unwrap();
    let user_id = login["user"]["id"].as_i64().unwrap();
    let token = client.token().unwrap().to_owned();
    let order = client.create_order("coffee", 1).await.unwrap();
    let mut answers = vec![login.to_string(), order.payment.to_string()];
    for (method, path, body) in [
        (Method::GET, "/api/me".to_owned(), None),
        (Method::PUT, "/api/me/profile".to_owned(), Some(json!({"nickname": "n"}))),
        (Method::GET, format!("/api/orders/{}", order.out_trade_no), None),
        (Method::POST, format!("/api/orders/{}/payment", order.out_trade_no), None),
        (Method::POST, format!("/api/orders/{}/close", order.out_trade_no), None),
    ] {
        let (status, answer) = call(&app.base, method, &path, Some(&token), body).await;
        assert_eq!(status / 100, 2, "{path}: {answer}");
        answers.push(answer.to_string());
    }

    // The service keeps it sealed with the data key (the dev one here); opened, it is in no answer.
    let sealed = app.state.db.user_session_key(user_id).await.unwrap();
    let data_key = std::fs::read_to_string(env.path("dev-keys").join("data_key")).unwrap();
    let vault =
        wxpay_recon::vault::Vault::from_base64(&wxpay_recon::config::Secret::new(data_key.trim().to_owned())).unwrap();
    let session_key = vault.open(&sealed).unwrap().expose().clone();
    assert!(session_key.len() >= 16, "{session_key:?}");
    for answer in &answers {
        assert!(!answer.contains(&session_key), "session_key in an answer: {answer}");
        assert!(!answer.contains(&sealed), "sealed session_key in an answer: {answer}");
        assert!(!answer.contains("session_key"), "{answer}");
    }
}

crate::both_profiles!(
    tokens_are_random_hashed_at_rest_and_expire,
    one_user_cannot_reach_another_users_order,
    admin_routes_need_the_exact_admin_token,
    sql_in_every_text_field_is_stored_as_text,
    the_session_key_is_in_no_answer
);
