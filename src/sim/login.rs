//! `GET /sns/jscode2session`: single-use codes valid for 5 minutes, WeChat's error codes
//! (including the injectable `-1` busy, `45011` quota and `40226` high-risk user), and a
//! `unionid` when the simulated app is bound to an Open Platform account.

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Duration;
use serde::Deserialize;
use sha2::Digest;

use crate::wechat::wire::login::Code2SessionResponse;

use super::SimContext;

const CODE_TTL_MINUTES: i64 = 5;

#[derive(Debug, Deserialize)]
pub struct Code2SessionQuery {
    appid: Option<String>,
    secret: Option<String>,
    js_code: Option<String>,
    grant_type: Option<String>,
}

fn error(sim: &SimContext, errcode: i64, message: &str) -> Json<Code2SessionResponse> {
    let rid: u64 = sim.random();
    Json(Code2SessionResponse {
        errcode: Some(errcode),
        errmsg: Some(format!("{message}, rid: {:x}-{:x}", rid >> 32, rid & 0xffff_ffff)),
        ..Default::default()
    })
}

pub async fn code2session(
    State(sim): State<SimContext>,
    Query(q): Query<Code2SessionQuery>,
) -> Json<Code2SessionResponse> {
    if q.appid.as_deref() != Some(sim.keys.appid.as_str()) {
        return error(&sim, 40013, "invalid appid");
    }
    if q.secret.as_deref() != Some(sim.keys.app_secret.expose().as_str()) {
        return error(&sim, 40125, "invalid appsecret");
    }
    if q.grant_type.as_deref() != Some("authorization_code") {
        return error(&sim, 40002, "invalid grant_type");
    }
    let Some(code) = q.js_code.filter(|c| !c.is_empty()) else {
        return error(&sim, 41008, "missing code");
    };
    if let Some(errcode) = injected_fault(&sim).await {
        let message = match errcode {
            45011 => "api minute-quota reach limit  mustslower  retry next minute",
            40226 => "invalid user, high risk user",
            _ => "system error",
        };
        return error(&sim, errcode, message);
    }
    let now = sim.clock.now();
    let mut state = sim.state.lock().await;
    let Some(entry) = state.codes.get_mut(&code) else {
        return error(&sim, 40029, "invalid code");
    };
    if entry.used {
        return error(&sim, 40163, "code been used");
    }
    if now - entry.issued_at > Duration::minutes(CODE_TTL_MINUTES) {
        return error(&sim, 40029, "invalid code");
    }
    entry.used = true;
    let openid = entry.openid.clone();
    // From now on the merchant knows this openid as one of its app's users (see `sim::pay`).
    state.openids.insert(openid.clone());
    drop(state);
    let session_key: [u8; 16] = sim.random();
    Json(Code2SessionResponse {
        unionid: sim.bound_to_open_platform.then(|| unionid_of(&openid)),
        openid: Some(openid),
        session_key: Some(B64.encode(session_key)),
        ..Default::default()
    })
}

/// A login error from the chaos settings, if this call draws one.
async fn injected_fault(sim: &SimContext) -> Option<i64> {
    let chaos = sim.chaos.read().await;
    if chaos.login_fault_rate <= 0.0 || chaos.login_fault_codes.is_empty() {
        return None;
    }
    if sim.random::<f64>() >= chaos.login_fault_rate {
        return None;
    }
    let index = sim.random::<u32>() as usize % chaos.login_fault_codes.len();
    chaos.login_fault_codes.get(index).copied()
}

/// The user's unionid: the same person has one unionid across the apps of an Open Platform
/// account, so it is derived from the openid only (one simulated app), 28 characters like
/// WeChat's.
fn unionid_of(openid: &str) -> String {
    let digest = sha2::Sha256::digest(format!("unionid:{openid}").as_bytes());
    format!("o{}", &hex::encode(digest)[..27])
}
