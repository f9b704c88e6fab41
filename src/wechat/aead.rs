//! AEAD_AES_256_GCM as WeChat uses it for notification resources (and `/v3/certificates`):
//! key = the 32 ASCII bytes of the APIv3 key, IV = the 12-byte nonce string, AAD =
//! `associated_data`, ciphertext = Base64(ciphertext || 16-byte tag).

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// The APIv3 key, checked to be exactly 32 bytes when loaded.
#[derive(Clone)]
pub struct ApiV3Key(Aes256Gcm);

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key([REDACTED])")
    }
}

/// Why a resource could not be opened. Deliberately coarse: GCM says only "not authentic".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeadError {
    #[error("APIv3 key must be exactly 32 bytes")]
    KeyLength,
    #[error("nonce must be exactly 12 bytes")]
    NonceLength,
    #[error("ciphertext is not valid base64")]
    Base64,
    #[error("ciphertext failed authentication (wrong key, nonce, associated data or tampered)")]
    Authentication,
}

impl ApiV3Key {
    pub fn new(key: &[u8]) -> Result<Self, AeadError> {
        if key.len() != 32 {
            return Err(AeadError::KeyLength);
        }
        Aes256Gcm::new_from_slice(key).map(Self).map_err(|_| AeadError::KeyLength)
    }

    /// Decrypts a Base64 `ciphertext || tag` to its plaintext bytes.
    pub fn decrypt(&self, nonce: &str, associated_data: &str, ciphertext_b64: &str) -> Result<Vec<u8>, AeadError> {
        let nonce = Nonce::try_from(nonce.as_bytes()).map_err(|_| AeadError::NonceLength)?;
        let ciphertext = B64.decode(ciphertext_b64).map_err(|_| AeadError::Base64)?;
        self.0
            .decrypt(&nonce, Payload { msg: &ciphertext, aad: associated_data.as_bytes() })
            .map_err(|_| AeadError::Authentication)
    }

    /// Encrypts to Base64 `ciphertext || tag` (the simulator's side of the exchange).
    pub fn encrypt(&self, nonce: &str, associated_data: &str, plaintext: &[u8]) -> Result<String, AeadError> {
        let nonce = Nonce::try_from(nonce.as_bytes()).map_err(|_| AeadError::NonceLength)?;
        self.0
            .encrypt(&nonce, Payload { msg: plaintext, aad: associated_data.as_bytes() })
            .map(|ct| B64.encode(ct))
            .map_err(|_| AeadError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::testkeys;

    #[test]
    fn official_vector_v5() {
        let key = ApiV3Key::new(testkeys::V5_KEY.as_bytes()).expect("key");
        let plain = key.decrypt("uluk4a9R25RW", "associatedData", testkeys::V5_CIPHERTEXT).expect("open");
        assert_eq!(plain, b"message");
        assert_eq!(key.encrypt("uluk4a9R25RW", "associatedData", b"message").expect("seal"), testkeys::V5_CIPHERTEXT);
    }

    #[test]
    fn derived_vectors_d6_and_d7() {
        let key = ApiV3Key::new(testkeys::D6_APIV3_KEY.as_bytes()).expect("key");
        let plain = key.decrypt("Fmwp04ry88f3", "transaction", testkeys::D6_CIPHERTEXT).expect("open");
        assert_eq!(plain, testkeys::D6_PLAINTEXT.as_bytes());
        let plain = key.decrypt("eObYf1re2IZ0", "refund", testkeys::D7_CIPHERTEXT).expect("open");
        assert_eq!(plain, testkeys::D7_PLAINTEXT.as_bytes());
    }

    #[test]
    fn wrong_aad_tamper_and_lengths_are_refused() {
        let key = ApiV3Key::new(testkeys::D6_APIV3_KEY.as_bytes()).expect("key");
        assert_eq!(key.decrypt("Fmwp04ry88f3", "refund", testkeys::D6_CIPHERTEXT), Err(AeadError::Authentication));
        let mut tampered = testkeys::D6_CIPHERTEXT.to_owned();
        tampered.replace_range(0..1, if tampered.starts_with('A') { "B" } else { "A" });
        assert_eq!(key.decrypt("Fmwp04ry88f3", "transaction", &tampered), Err(AeadError::Authentication));
        assert_eq!(key.decrypt("short", "transaction", testkeys::D6_CIPHERTEXT), Err(AeadError::NonceLength));
        assert_eq!(key.decrypt("Fmwp04ry88f3", "transaction", "%%%"), Err(AeadError::Base64));
        assert_eq!(ApiV3Key::new(b"testMchAPIv3Key0").map(|_| ()), Err(AeadError::KeyLength));
    }
}
