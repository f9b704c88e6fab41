//! WeChat Pay platform certificates: reading one (serial, validity and key come from the
//! certificate itself, never from the JSON around it) and opening the encrypted list that
//! `GET /v3/certificates` answers.
//!
//! Authenticity: each certificate arrives AES-256-GCM sealed with the APIv3 key (AAD
//! `certificate`), a secret only WeChat and the merchant hold, so a certificate that opens came
//! from WeChat even on the very first download, when no key is known yet to check the answer's
//! signature (the official SDKs bootstrap the same way, trusting the first download).

use std::fmt;

use chrono::{DateTime, Utc};
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

use super::aead::ApiV3Key;
use super::keys::rsa_verifier_of_spki;
use super::verify::RsaVerifier;
use super::wire::certificates::CertificateEntry;

/// A platform certificate as we keep it: the PEM (to persist it) and what was read from it.
#[derive(Clone, PartialEq, Eq)]
pub struct PlatformCertificate {
    /// Upper-case hex of the certificate's serial number, without leading zeros: the form WeChat
    /// sends in `Wechatpay-Serial` (as wechatpay-go's `GetCertificateSerialNumber` prints it).
    pub serial: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub pem: String,
    pub key: RsaVerifier,
}

impl fmt::Debug for PlatformCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformCertificate")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why a certificate was not accepted; the message names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("not a PEM X.509 certificate: {0}")]
    Parse(String),
    #[error("certificate key: {0}")]
    Key(String),
    #[error("certificate {serial}: cannot decrypt with the APIv3 key ({detail})")]
    Decrypt { serial: String, detail: String },
    #[error("certificate listed as {listed} holds serial {actual}")]
    SerialMismatch { listed: String, actual: String },
    #[error("certificate {0} uses {1}, not AEAD_AES_256_GCM")]
    Algorithm(String, String),
}

impl PlatformCertificate {
    pub fn from_pem(pem: &str) -> Result<Self, CertificateError> {
        let pem = pem.trim();
        let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| CertificateError::Parse(e.to_string()))?;
        Self::from_certificate(&cert, pem.to_owned())
    }

    fn from_certificate(cert: &Certificate, pem: String) -> Result<Self, CertificateError> {
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info().to_der().map_err(|e| CertificateError::Key(e.to_string()))?;
        let key = rsa_verifier_of_spki(&spki).map_err(CertificateError::Key)?;
        let validity = tbs.validity();
        Ok(Self {
            serial: serial_hex(tbs.serial_number().as_bytes()),
            not_before: instant(validity.not_before.to_unix_duration()),
            not_after: instant(validity.not_after.to_unix_duration()),
            pem,
            key,
        })
    }

    /// Whether WeChat may sign with it at `now`.
    pub fn valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Upper-case hex without leading zero bytes (DER adds one to keep a number positive).
pub fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len().saturating_sub(1));
    hex::encode_upper(&bytes[start..])
}

fn instant(since_epoch: std::time::Duration) -> DateTime<Utc> {
    i64::try_from(since_epoch.as_secs())
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Opens one entry of the `/v3/certificates` answer and checks that the certificate inside is
/// the one the entry names.
pub fn open_entry(key: &ApiV3Key, entry: &CertificateEntry) -> Result<PlatformCertificate, CertificateError> {
    let sealed = &entry.encrypt_certificate;
    if sealed.algorithm != "AEAD_AES_256_GCM" {
        return Err(CertificateError::Algorithm(entry.serial_no.clone(), sealed.algorithm.clone()));
    }
    let plain = key
        .decrypt(&sealed.nonce, &sealed.associated_data, &sealed.ciphertext)
        .map_err(|e| CertificateError::Decrypt { serial: entry.serial_no.clone(), detail: e.to_string() })?;
    let pem = String::from_utf8(plain).map_err(|_| CertificateError::Parse("plaintext is not UTF-8".into()))?;
    let cert = PlatformCertificate::from_pem(&pem)?;
    if !cert.serial.eq_ignore_ascii_case(entry.serial_no.trim()) {
        return Err(CertificateError::SerialMismatch { listed: entry.serial_no.clone(), actual: cert.serial });
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_print_as_wechat_sends_them() {
        assert_eq!(serial_hex(&[0x00, 0xF5, 0x76, 0x57]), "F57657");
        assert_eq!(serial_hex(&[0x5D, 0xEA]), "5DEA");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    fn v6_entry(serial_no: &str) -> CertificateEntry {
        CertificateEntry {
            serial_no: serial_no.into(),
            effective_time: "2023-09-19T23:15:58+08:00".into(),
            expire_time: "2028-09-17T23:15:58+08:00".into(),
            encrypt_certificate: crate::wechat::wire::certificates::SealedCertificate {
                algorithm: "AEAD_AES_256_GCM".into(),
                nonce: "14b16c03dc1b".into(),
                associated_data: "certificate".into(),
                ciphertext: crate::wechat::testkeys::V6_CERTIFICATE_CIPHERTEXT.into(),
            },
        }
    }

    #[test]
    fn the_official_certificate_download_vector_opens_with_serial_and_validity_from_the_certificate() {
        use sha2::Digest;
        let key = ApiV3Key::new(crate::wechat::testkeys::V5_KEY.as_bytes()).expect("key");
        let cert = open_entry(&key, &v6_entry("5dea10ef55877e3cf6c33255c2e7defff7e427ec")).expect("opens");
        assert_eq!(cert.serial, "5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC");
        assert_eq!(cert.not_before.to_rfc3339(), "2023-09-19T15:15:58+00:00");
        assert_eq!(cert.not_after.to_rfc3339(), "2028-09-17T15:15:58+00:00");
        assert_eq!(cert.pem.len(), 1475, "the PEM kept as decrypted");
        let digest = hex::encode(sha2::Sha256::digest(&cert.pem));
        assert_eq!(digest, "8693813ac0735cb54b6e67f25086a5924c103712255b8857049b8e502d564eb4");

        let listed_wrong = open_entry(&key, &v6_entry("440024045C4A427599D09BB4E3DE0279F2E813FD"));
        assert!(matches!(listed_wrong, Err(CertificateError::SerialMismatch { .. })), "{listed_wrong:?}");
        let other_key = ApiV3Key::new(b"00000000000000000000000000000000").expect("key");
        assert!(matches!(open_entry(&other_key, &v6_entry("5DEA")), Err(CertificateError::Decrypt { .. })));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = PlatformCertificate::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
            .expect_err("garbage");
        assert!(matches!(err, CertificateError::Parse(_)), "{err}");
    }
}
