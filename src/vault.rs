//! Our own secrets at rest: the WeChat `session_key` sealed with the data key (AES-256-GCM,
//! random nonce), and bearer tokens that are handed out once and stored only as a hash.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, Secret, Settings, secret};
use crate::wechat::devkeys::DevKeys;

const SEALED_PREFIX: &str = "v1:";

/// Seals and opens data with the configured data key.
#[derive(Clone)]
pub struct Vault {
    cipher: Aes256Gcm,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vault([REDACTED])")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("sealed value cannot be opened with this data key")]
pub struct VaultError;

impl Vault {
    /// The data key from `auth.data_key(_file)`, or the dev-key directory with dev keys.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let encoded = if settings.wechat.use_dev_keys
            && settings.auth.data_key.is_none()
            && settings.auth.data_key_file.is_none()
        {
            DevKeys::load_or_create(&settings.wechat.dev_keys_dir)?.data_key
        } else {
            secret::require("auth.data_key", settings.auth.data_key.as_ref(), settings.auth.data_key_file.as_ref())?
        };
        Self::from_base64(&encoded).map_err(|m| ConfigError::invalid("auth.data_key", m))
    }

    pub fn from_base64(encoded: &Secret<String>) -> Result<Self, String> {
        let key = B64.decode(encoded.expose().trim()).map_err(|_| "must be 32 bytes in base64".to_owned())?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| "must be 32 bytes in base64".to_owned())?;
        Ok(Self { cipher })
    }

    /// `v1:` + base64(nonce || ciphertext || tag).
    pub fn seal(&self, plaintext: &str) -> Result<String, VaultError> {
        let mut nonce_bytes = [0u8; 12];
        rand::rng().fill(&mut nonce_bytes);
        let nonce = Nonce::from(nonce_bytes);
        let sealed = self.cipher.encrypt(&nonce, plaintext.as_bytes()).map_err(|_| VaultError)?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", B64.encode(out)))
    }

    pub fn open(&self, sealed: &str) -> Result<Secret<String>, VaultError> {
        let raw = sealed.strip_prefix(SEALED_PREFIX).and_then(|b| B64.decode(b).ok()).ok_or(VaultError)?;
        if raw.len() < 12 {
            return Err(VaultError);
        }
        let (nonce, body) = raw.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| VaultError)?;
        let plain = self.cipher.decrypt(&nonce, body).map_err(|_| VaultError)?;
        String::from_utf8(plain).map(Secret::new).map_err(|_| VaultError)
    }
}

/// A new bearer token (shown to the client once) and the hash we store.
pub fn new_token() -> (Secret<String>, String) {
    let mut raw = [0u8; 32];
    rand::rng().fill(&mut raw);
    let token = B64URL.encode(raw);
    let hash = token_hash(&token);
    (Secret::new(token), hash)
}

/// SHA-256 hex of a token: what `sessions.token_hash` holds.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::from_base64(&Secret::new(B64.encode([7u8; 32]))).expect("key")
    }

    #[test]
    fn seal_round_trips_and_hides_the_plaintext() {
        let v = vault();
        let sealed = v.seal("tQY+38pdTVnAIWCBNiM1+A==").expect("seal");
        assert!(!sealed.contains("tQY+38"));
        assert_ne!(sealed, v.seal("tQY+38pdTVnAIWCBNiM1+A==").expect("seal"), "nonce is random");
        assert_eq!(v.open(&sealed).expect("open").expose(), "tQY+38pdTVnAIWCBNiM1+A==");
    }

    #[test]
    fn another_key_or_tampering_cannot_open() {
        let sealed = vault().seal("secret").expect("seal");
        let other = Vault::from_base64(&Secret::new(B64.encode([8u8; 32]))).expect("key");
        assert!(other.open(&sealed).is_err());
        assert!(vault().open("v1:AAAA").is_err());
        assert!(Vault::from_base64(&Secret::new("c2hvcnQ=".into())).is_err());
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, hash) = new_token();
        let (b, _) = new_token();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(hash, token_hash(a.expose()));
        assert_eq!(hash.len(), 64);
    }
}
