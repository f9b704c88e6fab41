//! Loading key material: PEM parsing with errors that name the setting, and the credential set
//! the client (and the simulator, from dev keys) work with.
//!
//! The `rsa` crate reads the PEM forms (PKCS#8, PKCS#1, SPKI, X.509); the keys are then handed
//! to `aws-lc-rs`, which does every signature and verification. The conversion happens here,
//! once.

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};

use crate::config::{ConfigError, PlatformKeySetting, Problems, Secret, Settings, secret};

use super::aead::ApiV3Key;
use super::certificate::PlatformCertificate;
use super::devkeys::DevKeys;
use super::keyring::KeyRing;
use super::sign::{MerchantSigner, RsaSigner};
use super::verify::{PlatformKeys, RsaVerifier};

/// Parses an RSA private key in PKCS#8 (`BEGIN PRIVATE KEY`, WeChat's apiclient_key.pem) or
/// PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM, into a signer.
pub fn parse_private_key(setting: &str, pem: &str) -> Result<RsaSigner, ConfigError> {
    let pem = pem.trim();
    let key = PrivateKey::from_pkcs8_pem(pem).or_else(|_| PrivateKey::from_pkcs1_pem(pem)).map_err(|_| {
        ConfigError::invalid(setting, "not an RSA private key in PEM form (expected -----BEGIN PRIVATE KEY-----)")
    })?;
    // Re-encoded as PKCS#8 whatever it came as: one form for the RSA library to take.
    let der = key.to_pkcs8_der().map_err(|e| ConfigError::invalid(setting, format!("re-encoding the key: {e}")))?;
    RsaSigner::from_pkcs8_der(der.as_bytes()).map_err(|e| ConfigError::invalid(setting, e.to_string()))
}

/// Parses a public key: SPKI (`BEGIN PUBLIC KEY`, the WeChat Pay public key), PKCS#1, or the
/// key inside an X.509 platform certificate (`BEGIN CERTIFICATE`), into a verifier.
pub fn parse_public_key(setting: &str, pem: &str) -> Result<RsaVerifier, ConfigError> {
    let key = parse_rsa_public_key(setting, pem)?;
    RsaVerifier::from_components(&key.n_bytes(), &key.e_bytes())
        .map_err(|e| ConfigError::invalid(setting, e.to_string()))
}

fn parse_rsa_public_key(setting: &str, pem: &str) -> Result<PublicKey, ConfigError> {
    let pem = pem.trim();
    if pem.starts_with("-----BEGIN CERTIFICATE-----") {
        return public_key_of_certificate(setting, pem);
    }
    PublicKey::from_public_key_pem(pem)
        .or_else(|_| PublicKey::from_pkcs1_pem(pem))
        .map_err(|_| {
            ConfigError::invalid(
                setting,
                "not an RSA public key or certificate in PEM form (expected -----BEGIN PUBLIC KEY----- or -----BEGIN CERTIFICATE-----)",
            )
        })
}

fn public_key_of_certificate(setting: &str, pem: &str) -> Result<PublicKey, ConfigError> {
    use x509_cert::Certificate;
    use x509_cert::der::{DecodePem, Encode};
    let cert = Certificate::from_pem(pem.as_bytes())
        .map_err(|e| ConfigError::invalid(setting, format!("not a PEM X.509 certificate: {e}")))?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| ConfigError::invalid(setting, format!("certificate key: {e}")))?;
    PublicKey::from_public_key_der(&spki)
        .map_err(|_| ConfigError::invalid(setting, "certificate does not hold an RSA key"))
}

/// The verifier of a DER SubjectPublicKeyInfo (the key inside a certificate).
pub(crate) fn rsa_verifier_of_spki(der: &[u8]) -> Result<RsaVerifier, String> {
    let key = PublicKey::from_public_key_der(der).map_err(|_| "not an RSA key".to_owned())?;
    RsaVerifier::from_components(&key.n_bytes(), &key.e_bytes()).map_err(|e| e.to_string())
}

/// Everything needed to talk to WeChat as this merchant.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub appid: String,
    pub mchid: String,
    pub merchant: MerchantSigner,
    /// The keys WeChat's signatures are checked with: configured ones, plus the platform
    /// certificates downloaded from WeChat (and persisted) when certificates are in use.
    pub platform_keys: KeyRing,
    pub apiv3_key: ApiV3Key,
    pub app_secret: Secret<String>,
}

/// A configured key: a certificate keeps its validity (and must carry the serial it is
/// configured under); a public key has none.
enum ConfiguredKey {
    PublicKey(RsaVerifier),
    Certificate(PlatformCertificate),
}

/// The `i`th configured platform key, read and parsed.
fn platform_key(i: usize, entry: &PlatformKeySetting) -> Result<ConfiguredKey, ConfigError> {
    let setting = format!("wechat.platform_keys[{i}].public_key");
    let pem = match (&entry.public_key, &entry.public_key_file) {
        (Some(pem), None) => pem.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(&format!("{setting}_file"), format!("cannot read {}: {e}", path.display()))
        })?,
        _ => return Err(ConfigError::invalid(&setting, "set exactly one of public_key or public_key_file")),
    };
    if !pem.trim().starts_with("-----BEGIN CERTIFICATE-----") {
        return parse_public_key(&setting, &pem).map(ConfiguredKey::PublicKey);
    }
    let cert = PlatformCertificate::from_pem(&pem).map_err(|e| ConfigError::invalid(&setting, e.to_string()))?;
    if !cert.serial.eq_ignore_ascii_case(entry.serial.trim()) {
        return Err(ConfigError::invalid(
            &format!("wechat.platform_keys[{i}].serial"),
            format!("is {}, but the certificate's serial is {}", entry.serial, cert.serial),
        ));
    }
    Ok(ConfiguredKey::Certificate(cert))
}

impl Credentials {
    /// Builds the credentials from settings, or from the dev-key directory when
    /// `wechat.use_dev_keys` is set (creating it on first use).
    /// Every key problem is reported at once (a missing merchant key, a bad APIv3 key and an
    /// unreadable platform key file are three lines of one error, not three restarts).
    pub fn load(settings: &Settings) -> Result<Self, ConfigError> {
        let wechat = &settings.wechat;
        let mut problems = Problems::default();
        let creds = if wechat.use_dev_keys {
            problems.check(DevKeys::load_or_create(&wechat.dev_keys_dir).and_then(|keys| keys.credentials()))
        } else {
            let key = problems.check(
                secret::require("wechat.merchant_key", wechat.merchant_key.as_ref(), wechat.merchant_key_file.as_ref())
                    .and_then(|pem| parse_private_key("wechat.merchant_key", pem.expose())),
            );
            let apiv3_key = problems.check(
                secret::require("wechat.apiv3_key", wechat.apiv3_key.as_ref(), wechat.apiv3_key_file.as_ref())
                    .and_then(|apiv3| {
                        ApiV3Key::new(apiv3.expose().as_bytes())
                            .map_err(|e| ConfigError::invalid("wechat.apiv3_key", e.to_string()))
                    }),
            );
            let app_secret = problems.check(secret::require(
                "wechat.app_secret",
                wechat.app_secret.as_ref(),
                wechat.app_secret_file.as_ref(),
            ));
            match (key, apiv3_key, app_secret) {
                (Some(key), Some(apiv3_key), Some(app_secret)) => Some(Credentials {
                    appid: wechat.appid.clone(),
                    mchid: wechat.mchid.clone(),
                    merchant: MerchantSigner {
                        mchid: wechat.mchid.clone(),
                        serial: wechat.merchant_serial.clone(),
                        signer: key,
                    },
                    platform_keys: KeyRing::default(),
                    apiv3_key,
                    app_secret,
                }),
                _ => None,
            }
        };
        let mut configured = match &creds {
            Some(creds) => (*creds.platform_keys.snapshot()).clone(),
            None => PlatformKeys::default(),
        };
        for (i, entry) in wechat.platform_keys.iter().enumerate() {
            match problems.check(platform_key(i, entry)) {
                Some(ConfiguredKey::PublicKey(key)) => configured.insert(entry.serial.clone(), key),
                Some(ConfiguredKey::Certificate(cert)) => configured.insert_certificate(&cert),
                None => {}
            }
        }
        let mut creds = problems.finish_with(creds)?;
        // No key at all is checked once the database is open: certificates downloaded by
        // `wxpay-recon wechat fetch-certificates` are kept there.
        creds.platform_keys = KeyRing::new(configured);
        Ok(creds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::testkeys;

    #[test]
    fn pem_errors_name_the_setting_and_fit_on_one_line() {
        let err = parse_private_key("wechat.merchant_key", "garbage").expect_err("bad");
        assert!(err.to_string().starts_with("wechat.merchant_key: "));
        assert!(!err.to_string().contains('\n'));
        let err = parse_public_key("wechat.platform_keys[0].public_key", testkeys::K1_PRIVATE_PEM).expect_err("bad");
        assert!(err.to_string().starts_with("wechat.platform_keys[0].public_key: "));
    }

    #[test]
    fn a_configured_certificate_keeps_its_validity_and_must_carry_its_own_serial() {
        let now = chrono::Utc::now();
        let issued = crate::sim::certificates::issue(now, now + chrono::Duration::days(30)).expect("issue");
        let entry = |serial: &str| PlatformKeySetting {
            serial: serial.into(),
            public_key: Some(issued.pem.clone()),
            public_key_file: None,
        };
        let Err(err) = platform_key(0, &entry("ABCDEF")) else { panic!("a wrong serial is accepted") };
        assert!(err.to_string().starts_with("wechat.platform_keys[0].serial: "), "{err}");
        assert!(err.to_string().contains(&issued.serial), "{err}");
        match platform_key(0, &entry(&issued.serial.to_lowercase())) {
            Ok(ConfiguredKey::Certificate(cert)) => {
                assert_eq!(cert.not_after.timestamp(), issued.not_after.timestamp())
            }
            _ => panic!("a certificate is kept as a certificate"),
        }
    }

    #[test]
    fn k1_parses_in_both_halves() {
        let private = parse_private_key("k", testkeys::K1_PRIVATE_PEM).expect("private");
        let public = parse_public_key("k", testkeys::K1_PUBLIC_PEM).expect("public");
        assert_eq!(private.public_key(), public);
        // The PEM-read public key (through the `rsa` crate's parser) verifies the official vector.
        use base64::Engine;
        let v1 = base64::engine::general_purpose::STANDARD.decode(testkeys::V1_SIGNATURE).expect("base64");
        assert!(public.verify(b"source", &v1));
        assert!(!public.verify(b"sourcE", &v1));
    }
}
