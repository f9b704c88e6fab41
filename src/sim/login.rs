//! `GET /sns/jscode2session`: single-use codes valid for 5 minutes, WeChat's error codes.

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Duration;
use serde::Deserialize;

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
    drop(state);
    let session_key: [u8; 16] = sim.random();
    Json(Code2SessionResponse {
        openid: Some(openid),
        session_key: Some(B64.encode(session_key)),
        ..Default::default()
    })
}
