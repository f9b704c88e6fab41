//! JSAPI prepay, close and jscode2session through the simulator's router, checking the rules
//! real WeChat applies and our own client never breaks (so only a raw request shows them):
//! undocumented keys, byte limits, https notify URLs, openids of another app, time_expire
//! clamping, injected login errors and the unionid.

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::sim::chaos::Chaos;
use crate::sim::{SimContext, router};
use crate::wechat::sign::{MerchantSigner, nonce};

const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

struct Env {
    sim: SimContext,
    signer: MerchantSigner,
}

fn env(allow_http_notify: bool, bound_to_open_platform: bool) -> Env {
    let (sim, signer) = crate::sim::test_sim::test_sim(allow_http_notify, bound_to_open_platform);
    Env { sim, signer }
}

impl Env {
    async fn call(&self, method: &str, target: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let body = body.map(Value::to_string).unwrap_or_default();
        let timestamp = self.sim.clock.now().timestamp();
        let authorization =
            self.signer.authorization(method, target, &body, timestamp, &nonce(32)).expect("authorization");
        let request = Request::builder()
            .method(method)
            .uri(target)
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .header("authorization", authorization)
            .body(Body::from(body))
            .expect("request");
        self.send(request).await
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = router(self.sim.clone()).oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// `wx.login` then jscode2session, as our login does: the sim now knows `openid`.
    async fn log_in(&self, openid: &str) -> (StatusCode, Value) {
        let code =
            self.control("/sim/login-codes", json!({ "openid": openid })).await["code"].as_str().map(str::to_owned);
        let secret = self.sim.keys.app_secret.expose().clone();
        let target = format!(
            "/sns/jscode2session?appid={}&secret={secret}&js_code={}&grant_type=authorization_code",
            self.sim.keys.appid,
            code.unwrap_or_default()
        );
        self.send(Request::get(target).body(Body::empty()).expect("request")).await
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        self.send(request).await.1
    }

    fn order(&self, no: &str) -> Value {
        json!({
            "appid": self.sim.keys.appid, "mchid": self.sim.keys.mchid, "description": "贴纸",
            "out_trade_no": no, "notify_url": "https://shop.example/api/pay/notify",
            "amount": {"total": 100, "currency": "CNY"}, "payer": {"openid": OPENID},
        })
    }

    async fn prepay(&self, body: &Value) -> (StatusCode, Value) {
        self.call("POST", "/v3/pay/transactions/jsapi", Some(body)).await
    }
}

#[tokio::test]
async fn undocumented_keys_are_refused_by_pointer_and_documented_ones_accepted() {
    let env = env(false, false);
    env.log_in(OPENID).await;
    let mut body = env.order("SCHEMA0001");
    body["payer"]["foo"] = json!(1);
    body["sub_mchid"] = json!("2");
    let (status, answer) = env.prepay(&body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["code"], "PARAM_ERROR");
    assert_eq!(answer["message"], "请求中含有未在API文档中定义的参数");
    assert_eq!(answer["detail"]["value"], json!(["/body/payer/foo", "/body/sub_mchid"]));

    let mut documented = env.order("SCHEMA0002");
    documented["scene_info"] = json!({"payer_client_ip": "1.2.3.4"});
    documented["goods_tag"] = json!("WXG");
    let (status, answer) = env.prepay(&documented).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["prepay_id"].as_str().is_some_and(|id| id.starts_with("wx")));

    let close = "/v3/pay/transactions/out-trade-no/SCHEMA0002/close";
    let (status, answer) = env.call("POST", close, Some(&json!({"mchid": env.sim.keys.mchid, "reason": "x"}))).await;
    assert_eq!((status, answer["detail"]["value"].clone()), (StatusCode::BAD_REQUEST, json!(["/body/reason"])));
    let (status, _) = env.call("POST", close, Some(&json!({"mchid": env.sim.keys.mchid}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn lengths_are_utf8_bytes_with_the_count_in_the_detail() {
    let env = env(false, false);
    env.log_in(OPENID).await;
    // The real refusal: 69 characters, 135 bytes.
    let mut body = env.order("BYTES00001");
    body["description"] = json!(format!("{}{}", "中".repeat(33), "x".repeat(36)));
    assert_eq!(body["description"].as_str().map(|d| (d.chars().count(), d.len())), Some((69, 135)));
    let (status, answer) = env.prepay(&body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!((answer["code"].as_str(), answer["detail"]["value"].as_u64()), (Some("PARAM_ERROR"), Some(135)));
    assert_eq!(answer["detail"]["field"], "/description");

    body["description"] = json!("中".repeat(42)); // 126 bytes
    assert_eq!(env.prepay(&body).await.0, StatusCode::OK);

    let mut attach = env.order("BYTES00002");
    attach["attach"] = json!("a".repeat(129));
    let (status, answer) = env.prepay(&attach).await;
    assert_eq!((status, answer["detail"]["value"].as_u64()), (StatusCode::BAD_REQUEST, Some(129)));
    attach["attach"] = json!("a".repeat(128));
    assert_eq!(env.prepay(&attach).await.0, StatusCode::OK);

    let mut emoji = env.order("BYTES00003");
    emoji["description"] = json!("mug 🍵");
    let (status, answer) = env.prepay(&emoji).await;
    assert_eq!((status, answer["detail"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("/description")));
}

#[tokio::test]
async fn notify_urls_must_be_https_unless_the_simulator_allows_http() {
    for (allow, expected) in [(false, StatusCode::BAD_REQUEST), (true, StatusCode::OK)] {
        let env = env(allow, false);
        env.log_in(OPENID).await;
        let mut body = env.order("NOTIFY0001");
        body["notify_url"] = json!("http://127.0.0.1:8080/api/pay/notify");
        let (status, answer) = env.prepay(&body).await;
        assert_eq!(status, expected, "allow_http_notify = {allow}: {answer}");
        if status != StatusCode::OK {
            assert_eq!(
                (answer["code"].as_str(), answer["detail"]["field"].as_str()),
                (Some("PARAM_ERROR"), Some("/notify_url"))
            );
        }
        let mut query = env.order("NOTIFY0002");
        query["notify_url"] = json!("https://shop.example/notify?shop=1");
        assert_eq!(env.prepay(&query).await.0, StatusCode::BAD_REQUEST, "a query string is refused either way");
    }
}

#[tokio::test]
async fn refund_notify_urls_must_be_https_too() {
    let env = env(false, false);
    env.log_in(OPENID).await;
    assert_eq!(env.prepay(&env.order("REFUNDURL01")).await.0, StatusCode::OK);
    env.control("/sim/pay", json!({"out_trade_no": "REFUNDURL01"})).await;
    let refund = |no: &str, url: &str| {
        json!({"out_trade_no": "REFUNDURL01", "out_refund_no": no, "notify_url": url,
               "amount": {"refund": 10, "total": 100, "currency": "CNY"}})
    };
    let (status, answer) = env
        .call("POST", "/v3/refund/domestic/refunds", Some(&refund("R1", "http://127.0.0.1:8080/api/pay/notify")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["detail"]["field"], "/body/notify_url", "{answer}");
    let (status, answer) = env
        .call("POST", "/v3/refund/domestic/refunds", Some(&refund("R2", "https://shop.example/api/pay/notify")))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn only_openids_of_this_app_may_pay() {
    let env = env(false, false);
    let (status, answer) = env.prepay(&env.order("OPENID0001")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["code"], "OPENID_MISMATCH");
    // A code was issued for it but never exchanged: still not an openid the merchant has.
    env.control("/sim/login-codes", json!({ "openid": OPENID })).await;
    assert_eq!(env.prepay(&env.order("OPENID0001")).await.1["code"], "OPENID_MISMATCH");
    let (status, login) = env.log_in(OPENID).await;
    assert_eq!((status, login["openid"].as_str()), (StatusCode::OK, Some(OPENID)));
    assert_eq!(env.prepay(&env.order("OPENID0001")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn time_expire_is_clamped_and_cannot_change_on_a_reorder() {
    let env = env(false, false);
    env.log_in(OPENID).await;
    let mut body = env.order("EXPIRE0001");
    body["time_expire"] = json!("2020-01-01T00:00:00+08:00");
    assert_eq!(env.prepay(&body).await.0, StatusCode::OK);
    let stored = env.sim.state.lock().await.orders.get("EXPIRE0001").map(|o| (o.created_at, o.time_expire));
    let (created, expire) = stored.expect("order");
    assert_eq!(expire, Some(created + chrono::Duration::minutes(1)));

    assert_eq!(env.prepay(&env.order("EXPIRE0002")).await.0, StatusCode::OK);
    let stored = env.sim.state.lock().await.orders.get("EXPIRE0002").map(|o| (o.created_at, o.time_expire));
    let (created, expire) = stored.expect("order");
    assert_eq!(expire, Some(created + chrono::Duration::days(7)));

    let mut changed = env.order("EXPIRE0001");
    changed["time_expire"] = json!("2020-01-02T00:00:00+08:00");
    let (status, answer) = env.prepay(&changed).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::FORBIDDEN, Some("OUT_TRADE_NO_USED")));
}

#[tokio::test]
async fn an_old_prepay_id_cannot_open_the_payment_sheet() {
    let env = env(false, false);
    env.log_in(OPENID).await;
    let mut body = env.order("PREPAY0001");
    body["time_expire"] =
        json!(crate::domain::time::to_wechat_rfc3339(env.sim.clock.now() + chrono::Duration::days(1)));
    assert_eq!(env.prepay(&body).await.0, StatusCode::OK);
    env.sim.clock.advance(std::time::Duration::from_secs(2 * 3600));
    let answer = env.control("/sim/pay", json!({ "out_trade_no": "PREPAY0001" })).await;
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("prepay_id expired")), "{answer}");
    // The merchant asks again with identical parameters: a fresh prepay_id, and the user pays.
    assert_eq!(env.prepay(&body).await.0, StatusCode::OK);
    let answer = env.control("/sim/pay", json!({ "out_trade_no": "PREPAY0001" })).await;
    assert!(answer["transaction_id"].is_string(), "{answer}");
}

#[tokio::test]
async fn login_errors_are_injectable_and_a_bound_app_answers_a_unionid() {
    let env = env(false, true);
    let (_, first) = env.log_in("oUser00000000000000000000001").await;
    let (_, again) = env.log_in("oUser00000000000000000000001").await;
    let unionid = first["unionid"].as_str().expect("unionid for a bound app");
    assert_eq!(unionid.len(), 28);
    assert_eq!(again["unionid"].as_str(), Some(unionid), "stable per user");
    let (_, other) = env.log_in("oUser00000000000000000000002").await;
    assert_ne!(other["unionid"].as_str(), Some(unionid));

    for code in [-1, 45011, 40226] {
        *env.sim.chaos.write().await =
            Chaos { login_fault_rate: 1.0, login_fault_codes: vec![code], ..Chaos::default() };
        let (_, answer) = env.log_in("oUser00000000000000000000003").await;
        assert_eq!(answer["errcode"].as_i64(), Some(code), "{answer}");
        assert!(answer["errmsg"].as_str().is_some_and(|m| m.contains(", rid: ")), "{answer}");
    }
    assert!(Chaos { login_fault_rate: 1.0, login_fault_codes: vec![40125], ..Chaos::default() }.validate().is_err());

    let unbound = super::pay_tests::env(false, false);
    let (_, plain) = unbound.log_in("oUser00000000000000000000001").await;
    assert!(plain.get("unionid").is_none_or(Value::is_null), "{plain}");
}
