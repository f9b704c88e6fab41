//! Verifying WeChat's signatures on responses and notifications.
//!
//! The key is picked explicitly by `Wechatpay-Serial`, so platform-certificate serials and
//! `PUB_KEY_ID_...` public keys work side by side while a merchant migrates between them. The
//! message is the raw body bytes as received: never re-serialised JSON.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};

use super::certificate::PlatformCertificate;
use super::sign::{SCHEME, response_message};

/// Prefix of WeChat's deliberate wrong-signature probes.
pub const SIGNTEST_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// The `Wechatpay-*` headers of a signed response or notification.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub serial: Option<&'a str>,
    pub signature_type: Option<&'a str>,
}

/// Why a signature was not accepted. `reason()` is a bounded label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("unsupported signature type {0:?}")]
    UnsupportedType(String),
    #[error("no verification key for serial {0:?}")]
    UnknownSerial(String),
    /// A known certificate outside its validity: WeChat rotated and we kept the old one.
    #[error("the certificate {0:?} is expired or not yet valid")]
    KeyNotValid(String),
    #[error("signature probe (WECHATPAY/SIGNTEST/): treated as a verification failure")]
    SignatureProbe,
    #[error("signature is not valid base64")]
    SignatureEncoding,
    #[error("signature does not match the body")]
    BadSignature,
    #[error("timestamp is not a number")]
    BadTimestamp,
    #[error("timestamp is {skew_secs} s away from our clock (tolerance {tolerance_secs} s)")]
    StaleTimestamp { skew_secs: i64, tolerance_secs: i64 },
}

impl VerifyError {
    /// Every value [`Self::reason`] can take (the metric's series exist from the start).
    pub const REASONS: &[&str] = &[
        "missing_header",
        "unsupported_signature_type",
        "unknown_serial",
        "key_not_valid",
        "signature_probe",
        "bad_signature",
        "stale_timestamp",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::UnsupportedType(_) => "unsupported_signature_type",
            VerifyError::UnknownSerial(_) => "unknown_serial",
            VerifyError::KeyNotValid(_) => "key_not_valid",
            VerifyError::SignatureProbe => "signature_probe",
            VerifyError::SignatureEncoding | VerifyError::BadSignature => "bad_signature",
            VerifyError::BadTimestamp | VerifyError::StaleTimestamp { .. } => "stale_timestamp",
        }
    }
}

/// An RSA public key that checks PKCS#1 v1.5 / SHA-256 signatures through `aws-lc-rs`.
///
/// The key is parsed once, when it is loaded ([`ParsedPublicKey`]), not on every signature;
/// the modulus and exponent are kept to compare keys and describe them.
#[derive(Clone)]
pub struct RsaVerifier {
    n: Arc<[u8]>,
    e: Arc<[u8]>,
    parsed: Arc<ParsedPublicKey>,
}

impl PartialEq for RsaVerifier {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n && self.e == other.e
    }
}

impl Eq for RsaVerifier {}

/// A public key outside what we verify with: 2048 to 8192 bits, odd exponent of at least 3
/// (the library's limits, checked when the key is loaded rather than on the first signature).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RSA public key rejected: {0}")]
pub struct PublicKeyRejected(&'static str);

impl fmt::Debug for RsaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaVerifier({} bits)", bit_length(&self.n))
    }
}

impl RsaVerifier {
    /// A key from its big-endian modulus and public exponent (leading zeros allowed).
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, PublicKeyRejected> {
        let (n, e) = (trim_leading_zeros(n), trim_leading_zeros(e));
        if !(2048..=8192).contains(&bit_length(n)) {
            return Err(PublicKeyRejected("the modulus must have 2048 to 8192 bits"));
        }
        if e.last().is_none_or(|low| low & 1 == 0) || bit_length(e) < 2 || bit_length(e) > 33 {
            return Err(PublicKeyRejected("the exponent must be odd, at least 3 and at most 33 bits"));
        }
        let parsed = RsaPublicKeyComponents { n, e }
            .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            .map_err(|_| PublicKeyRejected("not a usable RSA public key"))?;
        Ok(Self { n: n.into(), e: e.into(), parsed: Arc::new(parsed) })
    }

    /// Whether `signature` (raw bytes) is this key's SHA256withRSA signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.parsed.verify_sig(message, signature).is_ok()
    }
}

fn trim_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Bits of a big-endian number without leading zero bytes.
fn bit_length(bytes: &[u8]) -> usize {
    let leading = bytes.first().map_or(0, |top| usize::try_from(top.leading_zeros()).unwrap_or(8));
    (bytes.len() * 8).saturating_sub(leading)
}

/// One key WeChat may sign with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformKey {
    pub verifier: RsaVerifier,
    /// A platform certificate's validity (`not_before`, `not_after`); `None` for a WeChat Pay
    /// public key (`PUB_KEY_ID_…`), which carries no validity of its own.
    pub validity: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl PlatformKey {
    /// Usable at `now_unix`, allowing the same clock skew as the timestamp check (a new
    /// certificate's first signatures may reach us a moment "before" it takes effect).
    fn usable_at(&self, now_unix: i64, tolerance_secs: i64) -> bool {
        self.validity.is_none_or(|(not_before, not_after)| {
            now_unix.saturating_add(tolerance_secs) >= not_before.timestamp()
                && now_unix.saturating_sub(tolerance_secs) < not_after.timestamp()
        })
    }
}

/// The WeChat public keys we trust, by serial: an immutable snapshot (the live, refreshable
/// set is [`super::keyring::KeyRing`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PlatformKeys {
    by_serial: HashMap<String, PlatformKey>,
}

impl fmt::Debug for PlatformKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformKeys").field("serials", &self.serials()).finish()
    }
}

impl PlatformKeys {
    /// A key without validity of its own: a WeChat Pay public key, or a configured key whose
    /// certificate we were not given.
    pub fn insert(&mut self, serial: impl Into<String>, key: RsaVerifier) {
        self.by_serial.insert(normalise_serial(&serial.into()), PlatformKey { verifier: key, validity: None });
    }

    /// A platform certificate, by the serial read from the certificate itself.
    pub fn insert_certificate(&mut self, cert: &PlatformCertificate) {
        self.by_serial.insert(
            normalise_serial(&cert.serial),
            PlatformKey { verifier: cert.key.clone(), validity: Some((cert.not_before, cert.not_after)) },
        );
    }

    pub fn serials(&self) -> Vec<&str> {
        let mut serials: Vec<&str> = self.by_serial.keys().map(String::as_str).collect();
        serials.sort_unstable();
        serials
    }

    pub fn is_empty(&self) -> bool {
        self.by_serial.is_empty()
    }

    pub fn contains(&self, serial: &str) -> bool {
        self.by_serial.contains_key(&normalise_serial(serial))
    }

    /// Whether any key is a platform certificate (then WeChat's certificate list must be
    /// followed as it rotates).
    pub fn has_certificates(&self) -> bool {
        self.by_serial.values().any(|k| k.validity.is_some())
    }

    /// The key we want WeChat to sign its answers with, named in our requests'
    /// `Wechatpay-Serial`: a WeChat Pay public key first (it does not expire), else the newest
    /// certificate valid at `now` (latest `not_before`), as wechatpay-go's `GetNewestSerial`.
    pub fn preferred_serial(&self, now: DateTime<Utc>) -> Option<&str> {
        let public = self
            .by_serial
            .iter()
            .filter(|(serial, key)| key.validity.is_none() && serial.starts_with(PUBLIC_KEY_PREFIX))
            .map(|(serial, _)| serial.as_str())
            .min();
        public.or_else(|| {
            self.by_serial
                .iter()
                .filter_map(|(serial, key)| key.validity.map(|(nb, na)| (serial, nb, na)))
                .filter(|(_, nb, na)| *nb <= now && now < *na)
                .max_by_key(|(serial, nb, _)| (*nb, serial.as_str()))
                .map(|(serial, _, _)| serial.as_str())
        })
    }

    /// When the newest certificate valid at `now` expires (`None`: no certificate is valid).
    pub fn newest_certificate_expiry(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.by_serial
            .values()
            .filter_map(|key| key.validity)
            .filter(|(nb, na)| *nb <= now && now < *na)
            .max_by_key(|(nb, _)| *nb)
            .map(|(_, na)| na)
    }

    /// Checks headers, timestamp window and signature over `body` as received.
    pub fn verify(
        &self,
        headers: &SignedHeaders<'_>,
        body: &[u8],
        now_unix: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        let timestamp = headers.timestamp.ok_or(VerifyError::MissingHeader("Wechatpay-Timestamp"))?;
        let nonce = headers.nonce.ok_or(VerifyError::MissingHeader("Wechatpay-Nonce"))?;
        let signature = headers.signature.ok_or(VerifyError::MissingHeader("Wechatpay-Signature"))?;
        let serial = headers.serial.ok_or(VerifyError::MissingHeader("Wechatpay-Serial"))?;
        if let Some(kind) = headers.signature_type
            && kind != SCHEME
        {
            return Err(VerifyError::UnsupportedType(kind.to_owned()));
        }
        let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
        // `abs_diff` is exact over the whole i64 range, where `(now - ts).abs()` overflows for
        // a timestamp near i64::MIN or i64::MAX; the reported skew saturates for display.
        let skew = now_unix.abs_diff(ts);
        if skew > u64::try_from(tolerance_secs).unwrap_or(0) {
            let skew_secs = i64::try_from(skew).unwrap_or(i64::MAX);
            return Err(VerifyError::StaleTimestamp { skew_secs, tolerance_secs });
        }
        if signature.starts_with(SIGNTEST_PREFIX) {
            return Err(VerifyError::SignatureProbe);
        }
        let key = self
            .by_serial
            .get(&normalise_serial(serial))
            .ok_or_else(|| VerifyError::UnknownSerial(serial.to_owned()))?;
        if !key.usable_at(now_unix, tolerance_secs) {
            return Err(VerifyError::KeyNotValid(serial.to_owned()));
        }
        let raw = B64.decode(signature).map_err(|_| VerifyError::SignatureEncoding)?;
        if key.verifier.verify(&response_message(timestamp, nonce, body), &raw) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }
}

/// Prefix of a WeChat Pay public key id; any other serial is a certificate's hex serial.
pub const PUBLIC_KEY_PREFIX: &str = "PUB_KEY_ID_";

/// Whether `serial` looks like a platform certificate serial (hex), not a public key id: only
/// those can become known by downloading WeChat's certificate list.
pub fn is_certificate_serial(serial: &str) -> bool {
    !serial.is_empty() && serial.len() <= 64 && serial.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Certificate serials are hex and compared case-insensitively (some tools print them in lower
/// case); `PUB_KEY_ID_` ids are kept as they are.
fn normalise_serial(serial: &str) -> String {
    if serial.starts_with(PUBLIC_KEY_PREFIX) { serial.to_owned() } else { serial.to_ascii_uppercase() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::testkeys;

    #[test]
    fn every_reason_is_listed_for_the_metric() {
        let errors = [
            VerifyError::MissingHeader("Wechatpay-Serial"),
            VerifyError::UnsupportedType("X".into()),
            VerifyError::UnknownSerial("s".into()),
            VerifyError::KeyNotValid("s".into()),
            VerifyError::SignatureProbe,
            VerifyError::SignatureEncoding,
            VerifyError::BadSignature,
            VerifyError::BadTimestamp,
            VerifyError::StaleTimestamp { skew_secs: 1, tolerance_secs: 0 },
        ];
        for err in errors {
            assert!(VerifyError::REASONS.contains(&err.reason()), "{} not in REASONS", err.reason());
        }
    }

    fn keys() -> PlatformKeys {
        let mut keys = PlatformKeys::default();
        keys.insert("PUB_KEY_ID_0000000000000024101100397200000006", testkeys::k1_signer().public_key());
        keys.insert("5dea10ef55877e3cf6c33255c2e7defff7e427ec", testkeys::k1_signer().public_key());
        keys
    }

    fn headers<'a>(serial: &'a str, signature: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            timestamp: Some(testkeys::D6_TIMESTAMP),
            nonce: Some(testkeys::D6_NONCE),
            signature: Some(signature),
            serial: Some(serial),
            signature_type: Some(SCHEME),
        }
    }

    const NOW: i64 = 1614738897 + 10;

    #[test]
    fn derived_vector_d6_verifies_under_either_key_kind() {
        let body = testkeys::d6_envelope();
        assert_eq!(body.len(), 923);
        let keys = keys();
        keys.verify(
            &headers("PUB_KEY_ID_0000000000000024101100397200000006", testkeys::D6_SIGNATURE),
            body.as_bytes(),
            NOW,
            300,
        )
        .expect("public-key mode");
        keys.verify(
            &headers("5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC", testkeys::D6_SIGNATURE),
            body.as_bytes(),
            NOW,
            300,
        )
        .expect("certificate mode");
    }

    #[test]
    fn every_failure_is_named() {
        let body = testkeys::d6_envelope();
        let keys = keys();
        let serial = "PUB_KEY_ID_0000000000000024101100397200000006";
        let mut reserialised = body.replace(",\"", ", \"");
        assert_eq!(
            keys.verify(&headers(serial, testkeys::D6_SIGNATURE), reserialised.as_bytes(), NOW, 300),
            Err(VerifyError::BadSignature)
        );
        reserialised.clear();
        assert_eq!(
            keys.verify(&headers("PUB_KEY_ID_9", testkeys::D6_SIGNATURE), body.as_bytes(), NOW, 300),
            Err(VerifyError::UnknownSerial("PUB_KEY_ID_9".into()))
        );
        assert_eq!(
            keys.verify(&headers(serial, "WECHATPAY/SIGNTEST/abcd"), body.as_bytes(), NOW, 300),
            Err(VerifyError::SignatureProbe)
        );
        assert!(matches!(
            keys.verify(&headers(serial, testkeys::D6_SIGNATURE), body.as_bytes(), NOW + 1000, 300),
            Err(VerifyError::StaleTimestamp { .. })
        ));
        let mut missing = headers(serial, testkeys::D6_SIGNATURE);
        missing.nonce = None;
        assert_eq!(
            keys.verify(&missing, body.as_bytes(), NOW, 300),
            Err(VerifyError::MissingHeader("Wechatpay-Nonce"))
        );
        let mut other_type = headers(serial, testkeys::D6_SIGNATURE);
        other_type.signature_type = Some("WECHATPAY2-SM2-WITH-SM3");
        assert!(matches!(keys.verify(&other_type, body.as_bytes(), NOW, 300), Err(VerifyError::UnsupportedType(_))));
    }

    #[test]
    fn extreme_timestamps_are_stale_not_an_overflow() {
        let body = testkeys::d6_envelope();
        let keys = keys();
        let serial = "PUB_KEY_ID_0000000000000024101100397200000006";
        let max = i64::MAX.to_string();
        let min = i64::MIN.to_string();
        // Each pair is at least 2^63 - 1 s apart: the reported skew saturates.
        for (timestamp, now) in [
            (max.as_str(), i64::MIN),
            (min.as_str(), i64::MAX),
            (min.as_str(), NOW),
            (max.as_str(), -NOW),
            ("-1", i64::MAX),
        ] {
            let headers = SignedHeaders { timestamp: Some(timestamp), ..headers(serial, testkeys::D6_SIGNATURE) };
            assert!(
                matches!(
                    keys.verify(&headers, body.as_bytes(), now, 300),
                    Err(VerifyError::StaleTimestamp { skew_secs: i64::MAX, .. })
                ),
                "{timestamp} at {now}"
            );
        }
        let far = SignedHeaders { timestamp: Some(max.as_str()), ..headers(serial, testkeys::D6_SIGNATURE) };
        assert_eq!(
            keys.verify(&far, body.as_bytes(), NOW, 300),
            Err(VerifyError::StaleTimestamp { skew_secs: i64::MAX - NOW, tolerance_secs: 300 })
        );
        for not_a_number in ["99999999999999999999999999", "-99999999999999999999", "", "+-1", "1e9", "0x10"] {
            let headers = SignedHeaders { timestamp: Some(not_a_number), ..headers(serial, testkeys::D6_SIGNATURE) };
            assert_eq!(
                keys.verify(&headers, body.as_bytes(), NOW, 300),
                Err(VerifyError::BadTimestamp),
                "{not_a_number}"
            );
        }
        // "-0" is zero: 51 years stale, refused as such.
        let zero = SignedHeaders { timestamp: Some("-0"), ..headers(serial, testkeys::D6_SIGNATURE) };
        assert_eq!(
            keys.verify(&zero, body.as_bytes(), NOW, 300),
            Err(VerifyError::StaleTimestamp { skew_secs: NOW, tolerance_secs: 300 })
        );
        // Extreme clocks and tolerances do not overflow either (the key-validity check included).
        let signed = headers(serial, testkeys::D6_SIGNATURE);
        assert!(keys.verify(&signed, body.as_bytes(), i64::MIN, i64::MAX).is_err(), "2^63 s away");
        assert!(keys.verify(&signed, body.as_bytes(), NOW, i64::MAX).is_ok());
        assert!(keys.verify(&signed, body.as_bytes(), NOW, i64::MIN).is_err(), "a negative tolerance accepts nothing");
    }

    #[test]
    fn public_keys_outside_the_library_limits_are_refused_at_load() {
        let n = [0xC1u8; 256];
        let key = RsaVerifier::from_components(&[&[0, 0][..], &n].concat(), &[0, 1, 0, 1]).expect("leading zeros");
        assert_eq!(key, RsaVerifier::from_components(&n, &[1, 0, 1]).expect("same key"));
        assert_eq!(format!("{key:?}"), "RsaVerifier(2048 bits)");
        assert!(RsaVerifier::from_components(&n[..128], &[1, 0, 1]).is_err(), "1024 bits");
        assert!(RsaVerifier::from_components(&n, &[1, 0, 0]).is_err(), "even exponent");
        assert!(RsaVerifier::from_components(&n, &[1]).is_err(), "exponent 1");
        assert!(RsaVerifier::from_components(&n, &[2, 0, 0, 0, 1]).is_err(), "exponent above 2^33");
    }

    #[test]
    fn empty_body_vector_d5() {
        let mut keys = PlatformKeys::default();
        keys.insert("S", testkeys::k1_signer().public_key());
        let h = SignedHeaders {
            timestamp: Some("1554209980"),
            nonce: Some("c5ac7061fccab6bf3e254dcf98995b8c"),
            signature: Some(testkeys::D5_SIGNATURE),
            serial: Some("S"),
            signature_type: None,
        };
        keys.verify(&h, b"", 1554209980, 300).expect("204 response verifies");
    }
}
