//! Fault injection: what a bad day at WeChat looks like, on demand. Calls to `/v3` can fail in
//! each way WeChat fails (5xx, SYSTEM_ERROR, FREQUENCY_LIMITED, a hang past the client's
//! timeout, a bad response signature, or a final PARAM_ERROR), and notifications can be dropped,
//! duplicated, delayed or reordered. Every draw comes from the simulator's seeded generator, so
//! a failing run replays. Set from `[sim.chaos]` at start and `PUT /sim/chaos` at run time;
//! every `/v3` call is recorded (`GET /sim/calls`) so tests can assert on what we sent.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use crate::config::chaos::{BillChaos, BillCorruption, Chaos, FaultMode};

use super::SimContext;
use super::auth::wechat_error;

/// One `/v3` call as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub at_ms: i64,
    pub endpoint: &'static str,
    pub out_trade_no: Option<String>,
    pub status: u16,
    /// The injected fault, if any.
    pub fault: Option<FaultMode>,
    /// Bill calls: the download token the tradebill answer issued, or the download used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The request's `Wechatpay-Serial`: the key the merchant asked WeChat to sign with.
    pub wechatpay_serial: Option<String>,
}

/// The endpoint name of a `/v3` path and the order it is about.
fn classify(method: &str, path: &str) -> (&'static str, Option<String>) {
    const BY_NO: &str = "/v3/pay/transactions/out-trade-no/";
    if path == "/v3/pay/transactions/jsapi" {
        return ("jsapi", None);
    }
    if path == "/v3/refund/domestic/refunds" {
        return ("refund", None);
    }
    if path.starts_with("/v3/refund/domestic/refunds/") {
        return ("refund_query", None);
    }
    if path == "/v3/bill/tradebill" {
        return ("tradebill", None);
    }
    if path == "/v3/billdownload/file" {
        return ("billdownload", None);
    }
    if path == "/v3/certificates" {
        return ("certificates", None);
    }
    if let Some(rest) = path.strip_prefix(BY_NO) {
        return match rest.strip_suffix("/close") {
            Some(no) => ("close", Some(no.to_owned())),
            None if method == "GET" => ("query", Some(rest.to_owned())),
            None => ("other", Some(rest.to_owned())),
        };
    }
    ("other", None)
}

/// Middleware on `/v3` (inside signature verification, outside response signing): decides
/// whether this call fails, and records it.
pub async fn inject(State(sim): State<SimContext>, req: Request, next: Next) -> Response {
    let (endpoint, out_trade_no) = classify(req.method().as_str(), req.uri().path());
    let wechatpay_serial = req.headers().get("wechatpay-serial").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let fault = pick_fault(&sim, endpoint).await;
    let response = match fault {
        None => next.run(req).await,
        Some(mode) => faulty_response(&sim, mode).await,
    };
    let mut response = response;
    if fault == Some(FaultMode::BadSignature) {
        response.extensions_mut().insert(CorruptSignature);
    }
    let token = response.extensions().get::<super::bills::BillToken>().map(|t| t.0.clone());
    let record = CallRecord {
        at_ms: sim.clock.now_ms(),
        endpoint,
        out_trade_no,
        status: response.status().as_u16(),
        fault,
        token,
        wechatpay_serial,
    };
    sim.state.lock().await.calls.push(record);
    response
}

/// Marks a response whose signature the signing layer must spoil.
#[derive(Debug, Clone, Copy)]
pub struct CorruptSignature;

async fn pick_fault(sim: &SimContext, endpoint: &str) -> Option<FaultMode> {
    let chaos = sim.chaos.read().await;
    if chaos.fault_rate <= 0.0 || chaos.fault_modes.is_empty() {
        return None;
    }
    if !chaos.fault_endpoints.is_empty() && !chaos.fault_endpoints.iter().any(|e| e == endpoint) {
        return None;
    }
    if sim.random::<f64>() >= chaos.fault_rate {
        return None;
    }
    let index = sim.random::<u32>() as usize % chaos.fault_modes.len();
    chaos.fault_modes.get(index).copied()
}

async fn faulty_response(sim: &SimContext, mode: FaultMode) -> Response {
    match mode {
        FaultMode::ServerError => (StatusCode::BAD_GATEWAY, "502 Bad Gateway").into_response(),
        FaultMode::SystemError => wechat_error(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_ERROR", "系统错误"),
        FaultMode::FrequencyLimited => wechat_error(StatusCode::TOO_MANY_REQUESTS, "FREQUENCY_LIMITED", "频率超限"),
        FaultMode::Hang => {
            let hang = Duration::from_millis(sim.chaos.read().await.hang_ms.max(1));
            tokio::select! {
                () = sim.stop.cancelled() => {}
                () = tokio::time::sleep(hang) => {}
            }
            wechat_error(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_ERROR", "系统超时")
        }
        FaultMode::BadSignature => (StatusCode::OK, Json(serde_json::json!({"code": "OK"}))).into_response(),
        FaultMode::ParamError => wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "参数错误(故障注入)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_named_from_paths() {
        assert_eq!(classify("POST", "/v3/pay/transactions/jsapi"), ("jsapi", None));
        assert_eq!(classify("GET", "/v3/pay/transactions/out-trade-no/A1"), ("query", Some("A1".into())));
        assert_eq!(classify("POST", "/v3/pay/transactions/out-trade-no/A1/close"), ("close", Some("A1".into())));
    }

    #[test]
    fn rates_are_checked() {
        assert!(Chaos { fault_rate: 1.5, ..Chaos::default() }.validate().is_err());
        assert!(Chaos { fault_rate: 0.3, ..Chaos::default() }.validate().is_err());
        let ok = Chaos { fault_rate: 0.3, fault_modes: vec![FaultMode::Hang], ..Chaos::default() };
        assert!(ok.validate().is_ok());
        let parsed: Chaos =
            serde_json::from_str(r#"{"fault_rate":0.3,"fault_modes":["system_error","frequency_limited"]}"#)
                .expect("parse");
        assert_eq!(parsed.fault_modes, vec![FaultMode::SystemError, FaultMode::FrequencyLimited]);
    }
}
