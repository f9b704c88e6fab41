//! The simulator's side of the key set: it verifies the merchant's request signatures with
//! the merchant public key and signs as WeChat with the platform private key.

use crate::config::Secret;
use crate::wechat::aead::ApiV3Key;
use crate::wechat::devkeys::DevKeys;
use crate::wechat::sign::RsaSigner;
use crate::wechat::verify::RsaVerifier;

#[derive(Debug, Clone)]
pub struct SimKeys {
    pub appid: String,
    pub mchid: String,
    pub app_secret: Secret<String>,
    pub merchant_serial: String,
    pub merchant_public: RsaVerifier,
    pub platform_serial: String,
    pub platform: RsaSigner,
    pub apiv3: ApiV3Key,
}

impl SimKeys {
    pub fn from_dev_keys(keys: &DevKeys) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            appid: keys.appid.clone(),
            mchid: keys.mchid.clone(),
            app_secret: keys.app_secret.clone(),
            merchant_serial: keys.merchant_serial.clone(),
            merchant_public: keys.merchant_key.public_key(),
            platform_serial: keys.platform_serial.clone(),
            platform: keys.platform_key.clone(),
            apiv3: ApiV3Key::new(keys.apiv3_key.expose().as_bytes())
                .map_err(|e| crate::config::ConfigError::invalid("wechat.dev_keys_dir/apiv3_key", e.to_string()))?,
        })
    }
}
