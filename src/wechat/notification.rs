//! Opening a notification WeChat POSTed: its envelope (already verified over the raw bytes by
//! the caller) and its AES-256-GCM resource, decrypted with the APIv3 key. What comes out is
//! ready to be stored in the inbox as is; reading the resource as a payment or a refund is
//! `convert::notification`'s, when it is applied.

use super::aead::ApiV3Key;
use super::wire::notify::Envelope;

/// A notification whose resource decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub id: String,
    pub event_type: String,
    pub resource_type: String,
    pub summary: String,
    pub create_time: String,
    /// The decrypted resource (JSON text).
    pub resource_json: String,
    /// The order it is about, when the resource names one (refund and payment resources do).
    pub out_trade_no: Option<String>,
}

/// Why a verified body is still refused: a bounded `reason` (a metric label) and a detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    pub reason: &'static str,
    pub detail: String,
}

/// Every reason [`open`] refuses with (the metric's series exist from the start).
pub const REFUSAL_REASONS: &[&str] =
    &["malformed_body", "malformed_resource", "unsupported_resource", "decrypt_failed"];

fn refuse(reason: &'static str, detail: impl Into<String>) -> OpenError {
    OpenError { reason, detail: detail.into() }
}

pub fn open(key: &ApiV3Key, raw_body: &str) -> Result<Opened, OpenError> {
    let envelope: Envelope = serde_json::from_str(raw_body).map_err(|e| refuse("malformed_body", e.to_string()))?;
    let resource = &envelope.resource;
    if envelope.resource_type != "encrypt-resource" || resource.algorithm != "AEAD_AES_256_GCM" {
        return Err(refuse(
            "unsupported_resource",
            format!("resource_type {:?} algorithm {:?}", envelope.resource_type, resource.algorithm),
        ));
    }
    let plain = key
        .decrypt(&resource.nonce, &resource.associated_data, &resource.ciphertext)
        .map_err(|e| refuse("decrypt_failed", e.to_string()))?;
    let resource_json = String::from_utf8(plain).map_err(|_| refuse("malformed_resource", "not UTF-8"))?;
    let value: serde_json::Value =
        serde_json::from_str(&resource_json).map_err(|e| refuse("malformed_resource", e.to_string()))?;
    let out_trade_no = value.get("out_trade_no").and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Opened {
        id: envelope.id,
        event_type: envelope.event_type,
        resource_type: envelope.resource_type,
        summary: envelope.summary,
        create_time: envelope.create_time,
        resource_json,
        out_trade_no,
    })
}
