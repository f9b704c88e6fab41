//! The notification envelope (plaintext) and its encrypted resource.

use serde::{Deserialize, Serialize};

/// `TRANSACTION.SUCCESS`, `REFUND.*`: the outer JSON WeChat POSTs to notify_url.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub create_time: String,
    pub resource_type: String,
    pub event_type: String,
    #[serde(default)]
    pub summary: String,
    pub resource: EncryptedResource,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptedResource {
    pub original_type: String,
    pub algorithm: String,
    pub ciphertext: String,
    #[serde(default)]
    pub associated_data: String,
    pub nonce: String,
}

/// Merchant answer on failure: `{"code":"FAIL","message":"..."}` with a 4xx/5xx status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyAnswer {
    pub code: String,
    pub message: String,
}
