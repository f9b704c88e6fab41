//! The two bill endpoints through the simulator's router: signed requests in, the tradebill
//! answer signed, the file unsigned and matching its hash, and WeChat's errors.

use std::io::Read;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use chrono::Days;
use flate2::read::GzDecoder;
use serde_json::Value;
use sha1::{Digest, Sha1};
use tower::ServiceExt;

use crate::bill::read_bill;
use crate::domain::time::wechat_date;
use crate::sim::chaos::{BillChaos, BillCorruption};
use crate::sim::state::SimOrder;
use crate::sim::{SimContext, router};
use crate::wechat::sign::{MerchantSigner, nonce};
use crate::wechat::wire::pay::{JsapiPrepayRequest, Payer, PrepayAmount};

struct Env {
    sim: SimContext,
    signer: MerchantSigner,
}

fn env() -> Env {
    let (sim, signer) = crate::sim::test_sim::test_sim(false, false);
    Env { sim, signer }
}

struct Answer {
    status: StatusCode,
    signed: bool,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json")
    }
}

impl Env {
    async fn get(&self, target: &str) -> Answer {
        let timestamp = self.sim.clock.now().timestamp();
        let authorization = self.signer.authorization("GET", target, "", timestamp, &nonce(32)).expect("authorization");
        let request = Request::get(target)
            .header("host", "sim.test:9000")
            .header("accept", "application/json")
            .header("authorization", authorization)
            .body(Body::empty())
            .expect("request");
        let response = router(self.sim.clone()).oneshot(request).await.expect("infallible");
        let signed = response.headers().contains_key("wechatpay-signature");
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.expect("body").to_vec();
        Answer { status, signed, content_type, body }
    }

    async fn pay(&self, no: &str, total: i64, days_ago: u64) {
        let paid_at = self.sim.clock.now() - chrono::Duration::days(i64::try_from(days_ago).expect("days"));
        let order = SimOrder {
            request: JsapiPrepayRequest {
                appid: self.sim.keys.appid.clone(),
                mchid: self.sim.keys.mchid.clone(),
                description: "贴纸, 一张".into(),
                out_trade_no: no.into(),
                time_expire: None,
                attach: None,
                notify_url: "https://shop.example/notify".into(),
                amount: PrepayAmount { total, currency: Some("CNY".into()) },
                payer: Payer { openid: "o-test".into() },
            },
            prepay_id: format!("wx{no}"),
            created_at: paid_at,
            time_expire: None,
            trade_state: "SUCCESS".into(),
            transaction_id: Some(format!("42000{no}")),
            success_time: Some(paid_at),
        };
        self.sim.state.lock().await.orders.insert(no.into(), order);
    }

    /// A day whose bill is always ready: the day before yesterday (Shanghai).
    fn ready_day(&self) -> String {
        let today = wechat_date(self.sim.clock.now());
        today.checked_sub_days(Days::new(2)).expect("date").to_string()
    }
}

#[tokio::test]
async fn gzip_bill_downloads_unsigned_and_matches_its_hash() {
    let env = env();
    env.pay("B1", 1999, 2).await;
    env.pay("B2", 1, 2).await;
    env.pay("OTHER-DAY", 1, 3).await;
    let day = env.ready_day();
    let answer = env.get(&format!("/v3/bill/tradebill?bill_date={day}&bill_type=ALL&tar_type=GZIP")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    assert!(answer.signed);
    let info = answer.json();
    assert_eq!(info["hash_type"], "SHA1");
    let url = info["download_url"].as_str().expect("url");
    let target = url.strip_prefix("http://sim.test:9000").expect("base from Host");
    assert!(target.starts_with("/v3/billdownload/file?token=") && target.ends_with("&tartype=gzip"), "{url}");

    let file = env.get(target).await;
    assert_eq!(file.status, StatusCode::OK);
    assert!(!file.signed, "bill downloads carry no signature");
    assert_eq!(file.content_type, "application/octet-stream");
    let mut plain = Vec::new();
    GzDecoder::new(file.body.as_slice()).read_to_end(&mut plain).expect("gunzip");
    assert_eq!(hex::encode(Sha1::digest(&plain)), info["hash_value"].as_str().expect("hash"));
    let (rows, summary) = read_bill(plain.as_slice()).expect("bill");
    let nos: Vec<&str> = rows.iter().map(|r| r.out_trade_no.as_str()).collect();
    assert_eq!(nos.len(), 2);
    assert!(nos.contains(&"B1") && nos.contains(&"B2"));
    assert_eq!((summary.count, summary.settlement_total_fen, summary.fee_e5), (2, 2000, 12_000));

    // The same token works again within five minutes, then not.
    assert_eq!(env.get(target).await.status, StatusCode::OK);
    env.sim.clock.advance(Duration::from_secs(301));
    let expired = env.get(target).await;
    assert_eq!(expired.status, StatusCode::BAD_REQUEST);
    assert_eq!(expired.json()["code"], "INVALID_REQUEST");
}

#[tokio::test]
async fn plain_download_and_chaos_truncation() {
    let env = env();
    env.pay("C1", 500, 2).await;
    env.sim.chaos.write().await.bill = BillChaos { corrupt: Some(BillCorruption::Truncate), ..BillChaos::default() };
    let info = env.get(&format!("/v3/bill/tradebill?bill_date={}", env.ready_day())).await.json();
    let url = info["download_url"].as_str().expect("url");
    assert!(!url.contains("tartype"), "{url}");
    let target = url.strip_prefix("http://sim.test:9000").expect("base");
    let file = env.get(target).await;
    assert_eq!(file.status, StatusCode::OK);
    assert_ne!(hex::encode(Sha1::digest(&file.body)), info["hash_value"].as_str().expect("hash"));
    assert!(read_bill(file.body.as_slice()).is_err());
}

#[tokio::test]
async fn wechat_errors_for_bad_days_and_tokens() {
    let env = env();
    let today = wechat_date(env.sim.clock.now());
    let code = |a: &Answer| (a.status, a.json()["code"].as_str().unwrap_or_default().to_owned());
    let bad = |c: &str| (StatusCode::BAD_REQUEST, c.to_owned());
    let tradebill = |day: String| format!("/v3/bill/tradebill?bill_date={day}");
    assert_eq!(code(&env.get(&tradebill(today.to_string())).await), bad("PARAM_ERROR"));
    assert_eq!(code(&env.get(&tradebill("2026-1-5".into())).await), bad("PARAM_ERROR"));
    let old = today.checked_sub_days(Days::new(120)).expect("date");
    assert_eq!(code(&env.get(&tradebill(old.to_string())).await), bad("PARAM_ERROR"));
    assert_eq!(code(&env.get(&tradebill(env.ready_day())).await), bad("NO_STATEMENT_EXIST"));
    let unknown = env.get("/v3/billdownload/file?token=nope").await;
    assert_eq!(code(&unknown), bad("INVALID_REQUEST"));
    // Unsigned calls are refused like every /v3 call.
    let request = Request::get("/v3/billdownload/file?token=nope")
        .header("accept", "application/json")
        .body(Body::empty())
        .expect("request");
    let response = router(env.sim.clone()).oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn chaos_can_keep_an_empty_day_creating_fail_first_downloads_and_shorten_tokens() {
    let env = env();
    let code = |a: &Answer| (a.status, a.json()["code"].as_str().unwrap_or_default().to_owned());
    let empty_day = env.ready_day();
    env.sim.chaos.write().await.bill = BillChaos { empty_day_creating: true, ..BillChaos::default() };
    let creating = env.get(&format!("/v3/bill/tradebill?bill_date={empty_day}")).await;
    assert_eq!(code(&creating), (StatusCode::BAD_REQUEST, "STATEMENT_CREATING".to_owned()));

    env.pay("D1", 500, 2).await;
    env.sim.chaos.write().await.bill =
        BillChaos { fail_first_download: true, token_ttl_secs: Some(30), ..BillChaos::default() };
    let tradebill = format!("/v3/bill/tradebill?bill_date={}", env.ready_day());
    let path = |info: &Value| {
        info["download_url"].as_str().expect("url").strip_prefix("http://sim.test:9000").expect("base").to_owned()
    };
    let first = path(&env.get(&tradebill).await.json());
    assert_eq!(env.get(&first).await.status, StatusCode::BAD_GATEWAY, "the day's first download fails");
    let second = path(&env.get(&tradebill).await.json());
    assert_ne!(first, second, "a fresh token");
    assert_eq!(env.get(&second).await.status, StatusCode::OK);
    assert_eq!(env.get(&first).await.status, StatusCode::OK, "only the first download failed");
    env.sim.clock.advance(Duration::from_secs(31));
    assert_eq!(code(&env.get(&second).await), (StatusCode::BAD_REQUEST, "INVALID_REQUEST".to_owned()));
    let calls = env.sim.state.lock().await.calls.clone();
    let downloads: Vec<(u16, Option<String>)> =
        calls.iter().filter(|c| c.endpoint == "billdownload").map(|c| (c.status, c.token.clone())).collect();
    let token_of = |p: &str| p.split("token=").nth(1).map(|t| t.split('&').next().unwrap_or(t).to_owned());
    assert_eq!(downloads[0], (502, token_of(&first)));
    assert_eq!(downloads[1], (200, token_of(&second)));
}
