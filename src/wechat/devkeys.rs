//! Development keys: a complete, self-consistent merchant + WeChat key set generated on first
//! use into a directory, so `demo`, `sim` and local runs need no real credentials. The
//! simulator plays WeChat with the platform half; the service uses the merchant half.
//! Never used by `serve` unless explicitly asked for.
//!
//! The keys are generated with the `rsa` crate (`aws-lc-rs` signs and verifies; we generate with
//! the crate that also reads PEM) and, like any key, loaded into `aws-lc-rs` signers.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use rsa::PrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use crate::config::{ConfigError, Secret};

use super::aead::ApiV3Key;
use super::keys::{Credentials, parse_private_key};
use super::sign::{MerchantSigner, RsaSigner};
use super::verify::PlatformKeys;

/// The files of a dev-key directory, all plain text.
#[derive(Debug, Clone)]
pub struct DevKeys {
    pub dir: PathBuf,
    pub appid: String,
    pub mchid: String,
    pub merchant_serial: String,
    pub merchant_key: RsaSigner,
    pub platform_serial: String,
    pub platform_key: RsaSigner,
    pub apiv3_key: Secret<String>,
    pub app_secret: Secret<String>,
    pub data_key: Secret<String>,
}

const FILES: [&str; 9] = [
    "appid",
    "mchid",
    "merchant_serial",
    "merchant_key.pem",
    "platform_serial",
    "platform_key.pem",
    "apiv3_key",
    "app_secret",
    "data_key",
];

impl DevKeys {
    /// Loads the set in `dir`, generating and writing it first if the directory has none.
    pub fn load_or_create(dir: &Path) -> Result<Self, ConfigError> {
        if !dir.join("merchant_key.pem").exists() {
            Self::generate(dir)?;
        }
        Self::load(dir)
    }

    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let read = |name: &str| -> Result<String, ConfigError> {
            fs::read_to_string(dir.join(name))
                .map(|s| s.trim().to_owned())
                .map_err(|e| ConfigError::invalid("wechat.dev_keys_dir", format!("{}: {e}", dir.join(name).display())))
        };
        Ok(Self {
            dir: dir.to_owned(),
            appid: read("appid")?,
            mchid: read("mchid")?,
            merchant_serial: read("merchant_serial")?,
            merchant_key: parse_private_key("wechat.dev_keys_dir/merchant_key.pem", &read("merchant_key.pem")?)?,
            platform_serial: read("platform_serial")?,
            platform_key: parse_private_key("wechat.dev_keys_dir/platform_key.pem", &read("platform_key.pem")?)?,
            apiv3_key: Secret::new(read("apiv3_key")?),
            app_secret: Secret::new(read("app_secret")?),
            data_key: Secret::new(read("data_key")?),
        })
    }

    /// Generates two RSA-2048 key pairs and the symmetric secrets, written with mode 0600.
    pub fn generate(dir: &Path) -> Result<(), ConfigError> {
        let fail = |e: String| ConfigError::invalid("wechat.dev_keys_dir", e);
        fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let mut rng = rand::rng();
        let merchant = PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(|e| fail(e.to_string()))?;
        let platform = PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(|e| fail(e.to_string()))?;
        let pem = |key: &PrivateKey| -> Result<String, ConfigError> {
            key.to_pkcs8_pem(LineEnding::LF).map(|p| p.to_string()).map_err(|e| fail(e.to_string()))
        };
        let platform_public =
            platform.to_public_key().to_public_key_pem(LineEnding::LF).map_err(|e| fail(e.to_string()))?;
        let mut data_key = [0u8; 32];
        rng.fill(&mut data_key);
        let values = [
            ("appid", format!("wx{}", random_hex(&mut rng, 16))),
            ("mchid", format!("{}", rng.random_range(1_000_000_000u64..2_000_000_000))),
            ("merchant_serial", random_hex(&mut rng, 40).to_uppercase()),
            ("merchant_key.pem", pem(&merchant)?),
            ("platform_serial", format!("PUB_KEY_ID_{:034}", rng.random_range(0..u64::MAX))),
            ("platform_key.pem", pem(&platform)?),
            ("platform_public.pem", platform_public),
            ("apiv3_key", random_alnum(&mut rng, 32)),
            ("app_secret", random_hex(&mut rng, 32)),
            ("data_key", B64.encode(data_key)),
        ];
        for (name, value) in values {
            write_private(&dir.join(name), &value).map_err(|e| fail(format!("{name}: {e}")))?;
        }
        debug_assert!(FILES.iter().all(|f| dir.join(f).exists()));
        Ok(())
    }

    /// The merchant's side of the set.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        let mut platform_keys = PlatformKeys::default();
        platform_keys.insert(self.platform_serial.clone(), self.platform_key.public_key());
        Ok(Credentials {
            appid: self.appid.clone(),
            mchid: self.mchid.clone(),
            merchant: MerchantSigner {
                mchid: self.mchid.clone(),
                serial: self.merchant_serial.clone(),
                signer: self.merchant_key.clone(),
            },
            platform_keys: platform_keys.into(),
            apiv3_key: ApiV3Key::new(self.apiv3_key.expose().as_bytes())
                .map_err(|e| ConfigError::invalid("wechat.dev_keys_dir/apiv3_key", e.to_string()))?,
            app_secret: self.app_secret.clone(),
        })
    }
}

fn random_hex(rng: &mut impl Rng, len: usize) -> String {
    (0..len).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect()
}

fn random_alnum(rng: &mut impl Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
