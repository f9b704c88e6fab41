//! SHA256withRSA signing as WeChat Pay v3 defines it: the request `Authorization` header, the
//! mini-program `paySign`, and (for the simulator) response and notification signatures.
//!
//! Every signing string is a list of lines, each ending in `\n`, the last one included.

use std::collections::HashMap;
use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::verify::RsaVerifier;

/// The scheme token of the Authorization header and the `Wechatpay-Signature-Type` value.
pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// The lines WeChat signs, joined with a `\n` after each.
pub fn signing_string(lines: &[&str]) -> String {
    let mut out = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The merchant request signing string: method, canonical URL (path + `?query` as sent),
/// timestamp, nonce and the exact body bytes (empty for GET).
pub fn request_message(method: &str, canonical_url: &str, timestamp: i64, nonce: &str, body: &str) -> String {
    signing_string(&[method, canonical_url, &timestamp.to_string(), nonce, body])
}

/// The string behind `wx.requestPayment`'s `paySign`.
pub fn pay_sign_message(appid: &str, timestamp: i64, nonce: &str, package: &str) -> String {
    signing_string(&[appid, &timestamp.to_string(), nonce, package])
}

/// The string WeChat signs on responses and notifications: timestamp, nonce, raw body.
pub fn response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(nonce.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(b'\n');
    out
}

/// An RSA private key that signs with PKCS#1 v1.5 / SHA-256 and prints nothing when debugged.
///
/// Signing goes through `aws-lc-rs` (AWS-LC: constant-time, and on AVX-512 CPUs such as this
/// machine's EPYC its RSA uses the IFMA instructions), with the key parsed and checked once when
/// it is loaded. Measured per core here (`benches/order_create.rs` prints it beside its
/// figures): `rsa` 0.10 signs ~450/s, `ring` 0.17 ~2,000/s, AWS-LC ~4,100/s, OpenSSL 3,632/s
/// (`openssl speed rsa2048`). Order creation costs three signatures (merchant request,
/// WeChat's answer, paySign), so `ring` alone capped it near 700 orders/s per core.
#[derive(Clone)]
pub struct RsaSigner {
    key: std::sync::Arc<RsaKeyPair>,
    /// The public half, parsed once for verifying what this key signs.
    public: RsaVerifier,
    /// The API takes a random source for every signature because some paddings (PSS) need one;
    /// PKCS#1 v1.5 draws nothing from it.
    rng: SystemRandom,
}

impl fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaSigner([REDACTED])")
    }
}

/// Signing failed: only possible with a broken key, which start-up validation rejects.
#[derive(Debug, thiserror::Error)]
#[error("RSA signing failed: {0}")]
pub struct SignError(String);

/// A private key AWS-LC will not sign with (bad encoding, inconsistent, or outside 2048-8192
/// bits). The text is the library's own description and never includes key material.
#[derive(Debug, thiserror::Error)]
#[error("RSA private key rejected: {0}")]
pub struct KeyRejected(String);

impl RsaSigner {
    /// A signer from a DER PKCS#8 (`PrivateKeyInfo`) RSA key, validated here once.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyRejected> {
        let key = RsaKeyPair::from_pkcs8(der).map_err(|e| KeyRejected(e.to_string()))?;
        let components: RsaPublicKeyComponents<Vec<u8>> = key.public_key().into();
        let public =
            RsaVerifier::from_components(&components.n, &components.e).map_err(|e| KeyRejected(e.to_string()))?;
        Ok(Self { key: std::sync::Arc::new(key), public, rng: SystemRandom::new() })
    }

    /// Base64 signature of `message`. Deterministic: PKCS#1 v1.5 padding has no random part,
    /// so the same message gives the same value (the official vectors depend on it).
    pub fn sign(&self, message: &[u8]) -> Result<String, SignError> {
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
            .map_err(|_| SignError("the RSA library refused to sign".into()))?;
        Ok(B64.encode(signature))
    }

    /// [`Self::sign`] on the blocking pool, for callers that sign in bursts (the simulator's
    /// notification deliveries). One signature is a quarter of a millisecond of CPU here, so
    /// request paths sign inline: handing each signature to the pool cost more in thread
    /// switches than it saved (~10% fewer orders/s in `benches/order_create.rs`, measured with
    /// `ring` at twice the cost per signature).
    pub async fn sign_blocking(&self, message: Vec<u8>) -> Result<String, SignError> {
        let signer = self.clone();
        tokio::task::spawn_blocking(move || signer.sign(&message))
            .await
            .map_err(|e| SignError(format!("signing task failed: {e}")))?
    }

    /// The public half, ready to verify what this key signs.
    pub fn public_key(&self) -> RsaVerifier {
        self.public.clone()
    }
}

/// The merchant identity that signs every call to WeChat Pay.
#[derive(Debug, Clone)]
pub struct MerchantSigner {
    pub mchid: String,
    pub serial: String,
    pub signer: RsaSigner,
}

impl MerchantSigner {
    /// The full `Authorization` header value for one request.
    pub fn authorization(
        &self,
        method: &str,
        canonical_url: &str,
        body: &str,
        timestamp: i64,
        nonce: &str,
    ) -> Result<String, SignError> {
        let message = request_message(method, canonical_url, timestamp, nonce, body);
        let signature = self.signer.sign(message.as_bytes())?;
        Ok(authorization_header(&self.mchid, &self.serial, nonce, timestamp, &signature))
    }
}

fn authorization_header(mchid: &str, serial: &str, nonce: &str, timestamp: i64, signature: &str) -> String {
    format!(
        "{SCHEME} mchid=\"{mchid}\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{serial}\",signature=\"{signature}\""
    )
}

/// The five values of a merchant `Authorization` header, in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationParams {
    pub mchid: String,
    pub nonce_str: String,
    pub timestamp: String,
    pub serial_no: String,
    pub signature: String,
}

/// Why an Authorization header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    #[error("authorization scheme must be {SCHEME}")]
    Scheme,
    #[error("authorization is missing {0}")]
    Missing(&'static str),
    #[error("authorization has a malformed pair")]
    Malformed,
}

/// Parses `WECHATPAY2-SHA256-RSA2048 k="v",k="v",...` accepting any pair order.
pub fn parse_authorization(header: &str) -> Result<AuthorizationParams, AuthorizationError> {
    let rest = header.strip_prefix(SCHEME).and_then(|r| r.strip_prefix(' ')).ok_or(AuthorizationError::Scheme)?;
    let mut pairs = HashMap::new();
    for pair in rest.split(',') {
        let (key, value) = pair.trim().split_once('=').ok_or(AuthorizationError::Malformed)?;
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or(AuthorizationError::Malformed)?;
        pairs.insert(key.trim(), value.to_owned());
    }
    let mut take = |name: &'static str| pairs.remove(name).ok_or(AuthorizationError::Missing(name));
    Ok(AuthorizationParams {
        mchid: take("mchid")?,
        nonce_str: take("nonce_str")?,
        timestamp: take("timestamp")?,
        serial_no: take("serial_no")?,
        signature: take("signature")?,
    })
}

/// A random nonce of `len` upper-case alphanumerics, as the official SDKs send.
pub fn nonce(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::testkeys;

    #[test]
    fn official_vector_v1_sign() {
        let signer = testkeys::k1_signer();
        assert_eq!(signer.sign(b"source").expect("sign"), testkeys::V1_SIGNATURE);
    }

    #[test]
    fn derived_vectors_d1_to_d4() {
        let signer = testkeys::k1_signer();
        let d1 = request_message("GET", "/v3/certificates", 1554208460, "593BEC0C930BF1AFEB40B4A08C8FB242", "");
        assert_eq!(d1, "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n");
        assert_eq!(signer.sign(d1.as_bytes()).expect("sign"), testkeys::D1_SIGNATURE);
        let d2 = request_message(
            "GET",
            "/v3/pay/transactions/out-trade-no/1217752501201407033233368018?mchid=1230000109",
            1554208460,
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            "",
        );
        assert_eq!(signer.sign(d2.as_bytes()).expect("sign"), testkeys::D2_SIGNATURE);
        let d3 = request_message(
            "POST",
            "/v3/pay/transactions/jsapi",
            1554208460,
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            testkeys::D3_BODY,
        );
        assert_eq!(signer.sign(d3.as_bytes()).expect("sign"), testkeys::D3_SIGNATURE);
        let d4 = pay_sign_message(
            "wx8888888888888888",
            1414561699,
            "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
            "prepay_id=wx201410272009395522657a690389285100",
        );
        assert_eq!(signer.sign(d4.as_bytes()).expect("sign"), testkeys::D4_SIGNATURE);
    }

    #[test]
    fn v2_body_keeps_its_own_newline() {
        let s = request_message("GET", "/v3/certificates", 1624523846, "A1B2C3D4E5F6G7", "Hello World!\n");
        assert!(s.ends_with("Hello World!\n\n"));
    }

    #[test]
    fn authorization_round_trips_in_any_pair_order() {
        let merchant = MerchantSigner {
            mchid: "1230000109".into(),
            serial: "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C".into(),
            signer: testkeys::k1_signer(),
        };
        let header = merchant
            .authorization("GET", "/v3/certificates", "", 1554208460, "593BEC0C930BF1AFEB40B4A08C8FB242")
            .expect("sign");
        let parsed = parse_authorization(&header).expect("parse");
        assert_eq!(parsed.signature, testkeys::D1_SIGNATURE);
        assert_eq!(parsed.serial_no, merchant.serial);

        let python_order =
            format!("{SCHEME} mchid=\"1\",nonce_str=\"n\",signature=\"s\",timestamp=\"2\",serial_no=\"S\"");
        let parsed = parse_authorization(&python_order).expect("parse");
        assert_eq!((parsed.mchid.as_str(), parsed.timestamp.as_str()), ("1", "2"));
        assert_eq!(parse_authorization("Bearer x"), Err(AuthorizationError::Scheme));
        assert_eq!(
            parse_authorization(&format!("{SCHEME} mchid=\"1\"")),
            Err(AuthorizationError::Missing("nonce_str"))
        );
    }
}
