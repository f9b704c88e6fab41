//! What we sell and to whom.

use super::money::Fen;

/// A product of the catalog: the only source of prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub price: Fen,
}

/// A mini-program user, known by the openid WeChat gave us at login. Never carries the
/// session_key (sealed in storage, never leaves it but for decryption).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub openid: String,
    pub unionid: Option<String>,
    pub nickname: Option<String>,
    pub avatar_url: Option<String>,
    pub created_at_ms: i64,
}
