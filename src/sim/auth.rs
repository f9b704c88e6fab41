//! The simulator's HTTP envelope, as WeChat Pay behaves: every `/v3` request must carry a
//! valid `WECHATPAY2-SHA256-RSA2048` Authorization over the exact request-target and body
//! (else 401 SIGN_ERROR with the real detail shape), and every response is signed with the
//! platform key over its exact bytes.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

use crate::wechat::sign::{self, SCHEME, parse_authorization, request_message};

use super::SimContext;

const MAX_BODY: usize = 1 << 20;
/// WeChat refuses requests whose timestamp is far from its clock.
const REQUEST_TOLERANCE_SECS: i64 = 300;

/// Verifies the merchant signature of a `/v3` request.
pub async fn verify_request(State(sim): State<SimContext>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return wechat_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "请求体过大或无法读取");
    };
    let target = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let body_text = String::from_utf8_lossy(&bytes);
    let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header.is_empty() || parts.headers.get(header::ACCEPT).is_none() {
        return wechat_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "Http头缺少Accept或Authorization");
    }
    let params = match parse_authorization(header) {
        Ok(p) => p,
        Err(_) => {
            return wechat_error(
                StatusCode::UNAUTHORIZED,
                "SIGN_ERROR",
                "Http头Authorization值格式错误,请参考《微信支付商户REST API签名规则》",
            );
        }
    };
    let now = sim.clock.now().timestamp();
    let timestamp: i64 = params.timestamp.parse().unwrap_or(0);
    let message = request_message(parts.method.as_str(), &target, timestamp, &params.nonce_str, &body_text);
    let signature_ok = params.mchid == sim.keys.mchid
        && params.serial_no.eq_ignore_ascii_case(&sim.keys.merchant_serial)
        && (now - timestamp).abs() <= REQUEST_TOLERANCE_SECS
        && B64
            .decode(&params.signature)
            .ok()
            .is_some_and(|sig| sim.keys.merchant_public.verify(message.as_bytes(), &sig));
    if !signature_ok {
        sim.record_sign_error();
        let truncated: String = message.chars().take(64).collect();
        let body = json!({
            "code": "SIGN_ERROR",
            "message": "签名错误，请检查后再试",
            "detail": {
                "field": "signature",
                "location": "authorization",
                "detail": {"issue": "sign not match"},
                "sign_information": {
                    "method": parts.method.as_str(),
                    "url": target,
                    "sign_message_length": message.len(),
                    "truncated_sign_message": truncated,
                }
            }
        });
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Signs every response (errors included, as harmless extra) with the platform key.
/// The key is the one the request's `Wechatpay-Serial` names when the simulator holds it (see
/// `certificates`); chaos may turn the signature into a `WECHATPAY/SIGNTEST/` probe.
pub async fn sign_response(State(sim): State<SimContext>, req: Request, next: Next) -> Response {
    let requested = req.headers().get("wechatpay-serial").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let probe = sim.signature_probe().await;
    let response = next.run(req).await;
    let (mut parts, body) = response.into_parts();
    let corrupt = parts.extensions.get::<super::chaos::CorruptSignature>().is_some();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let timestamp = sim.clock.now().timestamp().to_string();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let message = crate::wechat::sign::response_message(&timestamp, &nonce, &bytes);
    let (serial, signer) = sim.signing_key(requested.as_deref());
    // Inline, as WeChat's answer is part of every request's path (see `RsaSigner::sign_blocking`).
    let mut signature = signer.sign(&message).unwrap_or_default();
    if corrupt {
        // Same length and alphabet, different bytes: only verification can tell.
        signature = signature.chars().rev().collect();
    }
    if let Some(probe) = probe {
        signature = probe;
    }
    let headers = &mut parts.headers;
    for (name, value) in [
        ("wechatpay-timestamp", timestamp),
        ("wechatpay-nonce", nonce),
        ("wechatpay-serial", serial),
        ("wechatpay-signature", signature),
        ("wechatpay-signature-type", SCHEME.to_owned()),
        ("request-id", format!("{:032X}-0", rand::random::<u128>())),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// `{"code":..., "message":...}` with the status WeChat documents for that code.
pub fn wechat_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"code": code, "message": message}))).into_response()
}

impl SimContext {
    /// A `WECHATPAY/SIGNTEST/…` value for `signature_probe_rate` of the calls, else `None`.
    pub async fn signature_probe(&self) -> Option<String> {
        let rate = self.chaos.read().await.signature_probe_rate;
        (rate > 0.0 && self.random::<f64>() < rate)
            .then(|| format!("{}{}", crate::wechat::verify::SIGNTEST_PREFIX, B64.encode(self.random::<[u8; 32]>())))
    }
}

/// The signature WeChat would put on a body sent at `timestamp` with `nonce`.
pub fn platform_signature(signer: &sign::RsaSigner, timestamp: &str, nonce: &str, body: &[u8]) -> String {
    signer.sign(&sign::response_message(timestamp, nonce, body)).unwrap_or_default()
}
