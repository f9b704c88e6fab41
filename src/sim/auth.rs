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
use crate::wechat::verify::RsaVerifier;

use super::SimContext;

const MAX_BODY: usize = 1 << 20;
/// WeChat refuses requests whose timestamp is far from its clock.
const REQUEST_TOLERANCE_SECS: u64 = 300;

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
    let now = sim.clock.now().timestamp();
    let keys = &sim.keys;
    let expected = Merchant { mchid: &keys.mchid, serial: &keys.merchant_serial, key: &keys.merchant_public };
    let message = match check_authorization(&expected, now, parts.method.as_str(), &target, &body_text, header) {
        Ok(()) => None,
        Err(AuthRefusal::Format) => {
            return wechat_error(
                StatusCode::UNAUTHORIZED,
                "SIGN_ERROR",
                "Http头Authorization值格式错误,请参考《微信支付商户REST API签名规则》",
            );
        }
        Err(AuthRefusal::Signature { message }) => Some(message),
    };
    if let Some(message) = message {
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

/// The merchant identity the simulator expects requests to be signed by.
#[derive(Debug, Clone, Copy)]
pub struct Merchant<'a> {
    pub mchid: &'a str,
    pub serial: &'a str,
    pub key: &'a RsaVerifier,
}

/// Why a request's Authorization is refused, in the two shapes WeChat answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRefusal {
    /// The header does not parse: WeChat's "format error" 401.
    Format,
    /// It parses but does not match: the 401 that echoes the message WeChat expected signed.
    Signature { message: String },
}

/// Checks a merchant `Authorization` header over the exact request, as WeChat does: parses,
/// then mchid, serial, timestamp window and signature. Pure (no state, no I/O) so the fuzz
/// target `sim_auth` drives the same code as the middleware with attacker-shaped headers.
pub fn check_authorization(
    merchant: &Merchant<'_>,
    now_unix: i64,
    method: &str,
    target: &str,
    body: &str,
    header: &str,
) -> Result<(), AuthRefusal> {
    let params = parse_authorization(header).map_err(|_| AuthRefusal::Format)?;
    // An unparsable or extreme timestamp is simply outside the window: `abs_diff` cannot
    // overflow where `(now - ts).abs()` did for values near `i64::MIN`/`i64::MAX`.
    let timestamp: i64 = params.timestamp.parse().unwrap_or(0);
    let message = request_message(method, target, timestamp, &params.nonce_str, body);
    let signature_ok = params.mchid == merchant.mchid
        && params.serial_no.eq_ignore_ascii_case(merchant.serial)
        && now_unix.abs_diff(timestamp) <= REQUEST_TOLERANCE_SECS
        && B64.decode(&params.signature).ok().is_some_and(|sig| merchant.key.verify(message.as_bytes(), &sig));
    if signature_ok { Ok(()) } else { Err(AuthRefusal::Signature { message }) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::sign::MerchantSigner;
    use crate::wechat::testkeys;

    const NOW: i64 = 1_700_000_000;

    fn signer() -> MerchantSigner {
        MerchantSigner { mchid: "1900000001".into(), serial: "ABC123".into(), signer: testkeys::k1_signer() }
    }

    fn check(now: i64, header: &str) -> Result<(), AuthRefusal> {
        let key = testkeys::k1_signer().public_key();
        let merchant = Merchant { mchid: "1900000001", serial: "abc123", key: &key };
        check_authorization(&merchant, now, "POST", "/v3/pay/transactions/jsapi", "{}", header)
    }

    #[test]
    fn a_signed_request_passes_and_a_tampered_one_is_a_sign_error() {
        let header = signer().authorization("POST", "/v3/pay/transactions/jsapi", "{}", NOW, "N1").expect("sign");
        assert_eq!(check(NOW, &header), Ok(()));
        assert_eq!(check(NOW + 300, &header), Ok(()), "the window's edge");
        assert!(matches!(check(NOW + 301, &header), Err(AuthRefusal::Signature { .. })));
        let other_body = signer().authorization("POST", "/v3/pay/transactions/jsapi", "{ }", NOW, "N1").expect("sign");
        assert!(matches!(check(NOW, &other_body), Err(AuthRefusal::Signature { .. })));
        for malformed in ["", "Bearer x", "WECHATPAY2-SHA256-RSA2048 mchid=1", "WECHATPAY2-SHA256-RSA2048 ,,,"] {
            assert_eq!(check(NOW, malformed), Err(AuthRefusal::Format), "{malformed:?}");
        }
    }

    /// `(now - timestamp).abs()` panicked (debug) or wrapped for these; now they are only stale.
    #[test]
    fn extreme_timestamps_and_clocks_are_a_sign_error_not_an_overflow() {
        for (timestamp, now) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (i64::MIN, NOW), (i64::MAX, 0)] {
            let header =
                signer().authorization("POST", "/v3/pay/transactions/jsapi", "{}", timestamp, "N").expect("sign");
            assert!(matches!(check(now, &header), Err(AuthRefusal::Signature { .. })), "{timestamp} at {now}");
        }
        // At the ends of the range, a matching clock still verifies.
        for extreme in [i64::MIN, i64::MAX] {
            let header =
                signer().authorization("POST", "/v3/pay/transactions/jsapi", "{}", extreme, "N").expect("sign");
            assert_eq!(check(extreme, &header), Ok(()));
        }
        let huge = r#"WECHATPAY2-SHA256-RSA2048 mchid="1900000001",nonce_str="N",timestamp="99999999999999999999999",serial_no="ABC123",signature="AAAA""#;
        assert!(matches!(check(NOW, huge), Err(AuthRefusal::Signature { .. })));
    }
}
