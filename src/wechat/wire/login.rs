//! `GET /sns/jscode2session`: the mini-program login exchange.

use serde::{Deserialize, Serialize};

/// Success carries openid + session_key (+ unionid); failure carries errcode/errmsg.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Code2SessionResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errmsg: Option<String>,
}
