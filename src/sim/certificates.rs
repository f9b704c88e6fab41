//! The simulator's platform certificates, the way WeChat runs them: a merchant is in
//! public-key mode (`PUB_KEY_ID_…`), certificate mode, or both during a migration; in
//! certificate mode WeChat lists its certificates at `GET /v3/certificates` (each sealed with
//! the APIv3 key, AAD `certificate`) and rotates by issuing a new one that takes effect later,
//! both listed meanwhile.
//!
//! Which key signs: the one the request's `Wechatpay-Serial` names, if the simulator holds it
//! and it is valid (protocol §1.4, as WeChat honours it during migrations); otherwise, in
//! certificate mode, the newest certificate in effect, and in the other modes the public key.
//! Notifications have no request, so they get that default, which is how a rotation reaches a
//! merchant first: a notification signed with a certificate it has never seen.
//!
//! Certificates are real X.509 DER, self-signed like the official SDKs' test fixtures, built
//! here with a few lines of DER (no certificate-builder crate for the simulator alone).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Datelike, Duration, Utc};
use rsa::PrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::time::to_wechat_rfc3339;
use crate::wechat::sign::RsaSigner;
use crate::wechat::wire::certificates::{CertificateEntry, CertificatesResponse, SealedCertificate};

use super::SimContext;
use super::auth::wechat_error;

/// Which keys the simulated merchant account signs with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// WeChat Pay public key only (new merchants).
    #[default]
    PublicKey,
    /// Platform certificates only (older merchants).
    Certificates,
    /// Both, during a migration: answers follow the request's `Wechatpay-Serial`.
    Both,
}

/// One platform certificate and its private key.
#[derive(Debug)]
pub struct SimCertificate {
    pub serial: String,
    pub signer: RsaSigner,
    pub pem: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl SimCertificate {
    fn valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The simulated account's key mode and certificates.
#[derive(Debug)]
pub struct CertificateState {
    pub mode: KeyMode,
    pub certificates: Vec<Arc<SimCertificate>>,
    /// Sign an answer with the key the request names, when held (WeChat does so during a
    /// public-key migration, protocol §2.3). Off: always the default key, so after a rotation
    /// even the certificate list arrives signed with a certificate the merchant lacks.
    pub honour_requested_serial: bool,
}

impl Default for CertificateState {
    fn default() -> Self {
        Self { mode: KeyMode::default(), certificates: Vec::new(), honour_requested_serial: true }
    }
}

impl SimContext {
    /// The serial and key that sign an answer to a request naming `requested` (`None` for a
    /// notification).
    pub fn signing_key(&self, requested: Option<&str>) -> (String, RsaSigner) {
        let now = self.clock.now();
        let state = self.certificates.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let public = || (self.keys.platform_serial.clone(), self.keys.platform.clone());
        if state.mode == KeyMode::PublicKey {
            return public();
        }
        let named = requested.filter(|_| state.honour_requested_serial).and_then(|serial| {
            if state.mode == KeyMode::Both && serial == self.keys.platform_serial {
                return Some(public());
            }
            state
                .certificates
                .iter()
                .find(|c| c.serial.eq_ignore_ascii_case(serial) && c.valid_at(now))
                .map(|c| (c.serial.clone(), c.signer.clone()))
        });
        if let Some(key) = named {
            return key;
        }
        if state.mode == KeyMode::Both {
            return public();
        }
        let newest = state
            .certificates
            .iter()
            .filter(|c| c.valid_at(now))
            .max_by_key(|c| c.not_before)
            .or_else(|| state.certificates.last());
        newest.map_or_else(public, |c| (c.serial.clone(), c.signer.clone()))
    }
}

/// Issues a self-signed RSA-2048 certificate valid from `not_before` to `not_after`, with a
/// random 20-byte serial like WeChat's (40 hex digits).
pub fn issue(not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> Result<SimCertificate, String> {
    let key = PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(|e| e.to_string())?;
    let pkcs8 = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    let signer = RsaSigner::from_pkcs8_der(pkcs8.as_bytes()).map_err(|e| e.to_string())?;
    let spki = key.to_public_key().to_public_key_der().map_err(|e| e.to_string())?;
    let mut serial = rand::random::<[u8; 20]>();
    serial[0] = (serial[0] & 0x7F) | 0x10; // positive, and 20 significant bytes
    let name = der::seq(&[
        der::rdn(&[0x55, 0x04, 0x06], der::PRINTABLE, "CN"),
        der::rdn(&[0x55, 0x04, 0x0A], der::UTF8, "Tenpay.com"),
        der::rdn(&[0x55, 0x04, 0x0B], der::UTF8, "Tenpay.com CA Center"),
        der::rdn(&[0x55, 0x04, 0x07], der::UTF8, "ShenZhen"),
        der::rdn(&[0x55, 0x04, 0x03], der::UTF8, "Tenpay.com sign"),
    ]);
    let algorithm = der::seq(&[der::tlv(0x06, der::SHA256_WITH_RSA), vec![0x05, 0x00]]);
    let tbs = der::seq(&[
        der::tlv(0xA0, &der::tlv(0x02, &[2])), // version 3
        der::integer(&serial),
        algorithm.clone(),
        name.clone(),
        der::seq(&[der::time(not_before), der::time(not_after)]),
        name,
        spki.as_bytes().to_vec(),
    ]);
    let signature = B64.decode(signer.sign(&tbs).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let certificate = der::seq(&[tbs, algorithm, der::tlv(0x03, &[&[0u8][..], &signature].concat())]);
    let pem = pem_of(&certificate);
    Ok(SimCertificate { serial: hex::encode_upper(serial), signer, pem, not_before, not_after })
}

fn pem_of(der: &[u8]) -> String {
    let text = B64.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Just enough DER to write a certificate.
mod der {
    use chrono::{DateTime, Datelike, Utc};

    pub const SHA256_WITH_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B];
    pub const UTF8: u8 = 0x0C;
    pub const PRINTABLE: u8 = 0x13;

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap_or(0));
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap_or(0));
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    /// A positive INTEGER from big-endian bytes.
    pub fn integer(bytes: &[u8]) -> Vec<u8> {
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            tlv(0x02, &[&[0u8][..], bytes].concat())
        } else {
            tlv(0x02, bytes)
        }
    }

    /// One RelativeDistinguishedName: SET { SEQUENCE { type, value } }.
    pub fn rdn(oid: &[u8], string_tag: u8, value: &str) -> Vec<u8> {
        tlv(0x31, &seq(&[tlv(0x06, oid), tlv(string_tag, value.as_bytes())]))
    }

    /// UTCTime before 2050, GeneralizedTime from then on (RFC 5280 §4.1.2.5).
    pub fn time(at: DateTime<Utc>) -> Vec<u8> {
        if at.year() < 2050 {
            tlv(0x17, at.format("%y%m%d%H%M%SZ").to_string().as_bytes())
        } else {
            tlv(0x18, at.format("%Y%m%d%H%M%SZ").to_string().as_bytes())
        }
    }
}

/// `GET /v3/certificates`: the certificates not yet expired, each sealed with the APIv3 key.
pub async fn list(State(sim): State<SimContext>) -> Response {
    let now = sim.clock.now();
    let listed: Vec<Arc<SimCertificate>> = {
        let state = sim.certificates.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.mode == KeyMode::PublicKey {
            // UNCONFIRMED: WeChat's community staff say public-key-only merchants may be unable
            // to use this API; the exact answer is not documented. A refusal is the safe model.
            return wechat_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "无可用的平台证书");
        }
        state.certificates.iter().filter(|c| c.not_after > now).cloned().collect()
    };
    let mut data = Vec::with_capacity(listed.len());
    for cert in listed {
        let nonce: String = hex::encode(sim.random::<[u8; 6]>());
        let Ok(ciphertext) = sim.keys.apiv3.encrypt(&nonce, "certificate", cert.pem.as_bytes()) else {
            return wechat_error(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_ERROR", "系统错误");
        };
        data.push(CertificateEntry {
            serial_no: cert.serial.clone(),
            effective_time: to_wechat_rfc3339(cert.not_before),
            expire_time: to_wechat_rfc3339(cert.not_after),
            encrypt_certificate: SealedCertificate {
                algorithm: "AEAD_AES_256_GCM".into(),
                nonce,
                associated_data: "certificate".into(),
                ciphertext,
            },
        });
    }
    Json(CertificatesResponse { data }).into_response()
}

/// `PUT /sim/key-mode {"mode": …, "honour_requested_serial": true}`: switching to
/// certificates issues the first one (valid from now for five years) if there is none.
#[derive(Debug, Deserialize)]
pub struct ModeRequest {
    mode: KeyMode,
    #[serde(default = "honour_by_default")]
    honour_requested_serial: bool,
}

fn honour_by_default() -> bool {
    true
}

pub async fn set_mode(State(sim): State<SimContext>, Json(request): Json<ModeRequest>) -> Response {
    let needs_first = request.mode != KeyMode::PublicKey && sim.certificate_count() == 0;
    if needs_first {
        let now = sim.clock.now();
        match tokio::task::spawn_blocking(move || issue(now - Duration::minutes(1), years_after(now, 5))).await {
            Ok(Ok(cert)) => sim.push_certificate(cert),
            Ok(Err(err)) => return (StatusCode::INTERNAL_SERVER_ERROR, err).into_response(),
            Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
        }
    }
    {
        let mut state = sim.certificates.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.mode = request.mode;
        state.honour_requested_serial = request.honour_requested_serial;
    }
    describe(&sim)
}

/// `POST /sim/certificates/rotate {"effective_in_secs": N}`: WeChat issues a new certificate,
/// listed at once, signing (by default) from `now + N` on; the old one stays valid until it
/// expires.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RotateRequest {
    effective_in_secs: i64,
}

pub async fn rotate(State(sim): State<SimContext>, body: Option<Json<RotateRequest>>) -> Response {
    let request = body.map(|Json(r)| r).unwrap_or_default();
    let not_before = sim.clock.now() + Duration::seconds(request.effective_in_secs.clamp(0, 10 * 365 * 86_400));
    match tokio::task::spawn_blocking(move || issue(not_before, years_after(not_before, 5))).await {
        Ok(Ok(cert)) => {
            let serial = cert.serial.clone();
            sim.push_certificate(cert);
            (StatusCode::CREATED, Json(json!({ "serial": serial, "not_before": to_wechat_rfc3339(not_before) })))
                .into_response()
        }
        Ok(Err(err)) => (StatusCode::INTERNAL_SERVER_ERROR, err).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// `GET /sim/certificates`: the mode, the certificates, and which key signs by default now.
pub async fn show(State(sim): State<SimContext>) -> Response {
    describe(&sim)
}

fn describe(sim: &SimContext) -> Response {
    let (default_serial, _) = sim.signing_key(None);
    let state = sim.certificates.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let certificates: Vec<_> = state
        .certificates
        .iter()
        .map(|c| json!({"serial": c.serial, "not_before": to_wechat_rfc3339(c.not_before), "not_after": to_wechat_rfc3339(c.not_after), "pem": c.pem}))
        .collect();
    Json(json!({
        "mode": state.mode,
        "honour_requested_serial": state.honour_requested_serial,
        "certificates": certificates,
        "default_serial": default_serial,
    }))
    .into_response()
}

fn years_after(at: DateTime<Utc>, years: i32) -> DateTime<Utc> {
    at.with_year(at.year() + years).unwrap_or(at + Duration::days(i64::from(years) * 365))
}

impl SimContext {
    fn certificate_count(&self) -> usize {
        self.certificates.read().unwrap_or_else(std::sync::PoisonError::into_inner).certificates.len()
    }

    fn push_certificate(&self, cert: SimCertificate) {
        self.certificates.write().unwrap_or_else(std::sync::PoisonError::into_inner).certificates.push(Arc::new(cert));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::certificate::PlatformCertificate;

    #[test]
    fn issued_certificates_read_back_with_their_serial_validity_and_key() {
        let not_before = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let not_after = years_after(not_before, 30); // past 2049: GeneralizedTime
        let issued = issue(not_before, not_after).expect("issue");
        let read = PlatformCertificate::from_pem(&issued.pem).expect("our reader accepts it");
        assert_eq!(read.serial, issued.serial);
        assert_eq!(read.serial.len(), 40);
        assert_eq!((read.not_before, read.not_after), (not_before, not_after));
        assert_eq!(read.key, issued.signer.public_key());
    }
}
