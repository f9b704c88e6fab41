//! A wrapper for key material and passwords from the moment they are read.
//!
//! `Debug` prints nothing of the value, there is no `Display`, and `Serialize` is not
//! implemented, so a secret cannot reach a log line or an API response by accident. The one
//! way to the value is [`Secret::expose`], called at the single place that needs it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::ConfigError;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value read from configuration, a file or a peer.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself. Call it where the secret is used, never to log or store it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl<'de> Deserialize<'de> for Secret<String> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::lenient::string(deserializer).map(Secret)
    }
}

/// Resolves a secret given either inline (`name`) or as a file (`name_file`).
///
/// Both set is an error rather than a silent preference, so an operator who rotated the file
/// but forgot an old environment variable finds out at start-up.
pub fn resolve(
    setting: &str,
    inline: Option<&Secret<String>>,
    file: Option<&PathBuf>,
) -> Result<Option<Secret<String>>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            Err(ConfigError::invalid(setting, format!("set either {setting} or {setting}_file, not both")))
        }
        (Some(value), None) => Ok(Some(value.clone())),
        (None, Some(path)) => read_file(setting, path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Like [`resolve`], but the secret must be present.
pub fn require(
    setting: &str,
    inline: Option<&Secret<String>>,
    file: Option<&PathBuf>,
) -> Result<Secret<String>, ConfigError> {
    resolve(setting, inline, file)?.ok_or_else(|| {
        ConfigError::invalid(
            setting,
            format!(
                "missing: set {setting} or {setting}_file (env WXPAY_RECON__{}[_FILE])",
                setting.replace('.', "__").to_uppercase()
            ),
        )
    })
}

fn read_file(setting: &str, path: &Path) -> Result<Secret<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::invalid(&format!("{setting}_file"), format!("cannot read {}: {err}", path.display()))
    })?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r']).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_nothing_of_the_value() {
        let secret = Secret::new("hunter2-very-secret".to_owned());
        let printed = format!("{secret:?} {:#?}", Some(&secret));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("REDACTED"));
    }

    #[test]
    fn both_inline_and_file_is_refused() {
        let inline = Secret::new("a".to_owned());
        let err = resolve("wechat.apiv3_key", Some(&inline), Some(&PathBuf::from("/x"))).expect_err("must refuse");
        assert!(err.to_string().contains("wechat.apiv3_key"), "{err}");
    }

    #[test]
    fn missing_file_names_the_setting() {
        let err =
            require("wechat.merchant_key", None, Some(&PathBuf::from("/nonexistent/key.pem"))).expect_err("must fail");
        let text = err.to_string();
        assert!(text.starts_with("wechat.merchant_key_file"), "{text}");
        assert!(!text.contains('\n'));
    }
}
