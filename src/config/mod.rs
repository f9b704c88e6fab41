//! Configuration: compiled-in defaults, then an optional file, then `WXPAY_RECON__*` variables.
//!
//! Loading fails with one line naming the setting at fault (`database.url: ...`), never a
//! panic. This module is the only place that reads the environment for settings.

pub mod chaos;
mod lenient;
pub mod secret;
mod settings;

use std::collections::HashSet;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

pub use secret::Secret;
pub use settings::*;

/// The defaults, documented setting by setting.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment overrides; `__` separates levels.
pub const ENV_PREFIX: &str = "WXPAY_RECON__";

/// A configuration problem, phrased for the operator: the setting, then what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn invalid(setting: &str, message: impl Into<String>) -> Self {
        Self { setting: setting.to_owned(), message: message.into() }
    }
}

/// What the settings are loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `serve`: everything must be present.
    Serve,
    /// `demo` / `sim`: dev keys forced on.
    Dev,
    /// Operator commands on the database (migrate, jobs, order).
    Ops,
}

/// Which deployment profile the URLs select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// SQLite data + SQLite queue, one process, nothing to install.
    Embedded,
    /// PostgreSQL data + Redis queue, many replicas.
    Cluster,
}

impl Settings {
    /// Loads defaults, then `file` if given, then the environment; validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_for(file, Purpose::Serve)
    }

    /// Like [`Self::load`] with `wechat.use_dev_keys` forced on: `demo` and local runs
    /// against the simulator need no real credentials.
    pub fn load_dev(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_for(file, Purpose::Dev)
    }

    /// Loads settings for `purpose`: operator commands that only touch the database do not
    /// need the merchant's WeChat identity.
    pub fn load_for(file: Option<&Path>, purpose: Purpose) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::invalid("--config", format!("file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        if purpose == Purpose::Dev {
            figment = figment.merge(figment::providers::Serialized::default("wechat.use_dev_keys", true));
        }
        let settings: Settings = figment.extract().map_err(first_error)?;
        settings.validate_common()?;
        if purpose != Purpose::Ops {
            settings.validate_identity()?;
        }
        Ok(settings)
    }

    /// Every check: common settings and the merchant identity.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_common()?;
        self.validate_identity()
    }

    /// Cross-field checks that serde cannot express.
    fn validate_common(&self) -> Result<(), ConfigError> {
        self.profile()?;
        let queue_scheme = scheme(&self.queue.url);
        if !matches!(queue_scheme, "sqlite" | "redis" | "rediss") {
            return Err(ConfigError::invalid("queue.url", "must start with sqlite:// or redis://"));
        }
        positive("notify.max_batch", self.notify.max_batch)?;
        positive("notify.writers", self.notify.writers)?;
        if self.notify.writers.saturating_mul(2) > self.database.max_connections as usize {
            return Err(ConfigError::invalid(
                "notify.writers",
                "at most half of database.max_connections (each writer holds a connection while it commits)",
            ));
        }
        positive("queue.concurrency", self.queue.concurrency)?;
        positive("poll.batch", self.poll.batch)?;
        positive("poll.claim_secs", usize::try_from(self.poll.claim_secs).unwrap_or(0))?;
        if self.reconcile.run_at_time().is_none() {
            return Err(ConfigError::invalid("reconcile.run_at", "must be HH:MM (Asia/Shanghai)"));
        }
        positive("poll.sweep_interval_ms", usize::try_from(self.poll.sweep_interval_ms).unwrap_or(0))?;
        if self.poll.schedule_secs.is_empty() || self.poll.schedule_secs.contains(&0) {
            return Err(ConfigError::invalid("poll.schedule_secs", "needs at least one delay, each > 0"));
        }
        positive("worker.max_attempts", usize::try_from(self.worker.max_attempts).unwrap_or(0))?;
        positive("database.max_connections", usize::try_from(self.database.max_connections).unwrap_or(0))?;
        if self.worker.backoff_base_ms == 0 || self.worker.backoff_cap_ms < self.worker.backoff_base_ms {
            return Err(ConfigError::invalid(
                "worker.backoff_cap_ms",
                "backoff_base_ms must be > 0 and backoff_cap_ms >= backoff_base_ms",
            ));
        }
        if !(60..=90 * 86_400).contains(&self.orders.time_expire_secs) {
            return Err(ConfigError::invalid(
                "orders.time_expire_secs",
                "must be between 60 s and 90 days (WeChat clamps outside that range)",
            ));
        }
        if !(self.sim.time_scale.is_finite() && self.sim.time_scale > 0.0) {
            return Err(ConfigError::invalid("sim.time_scale", "must be a positive number"));
        }
        self.validate_catalog()
    }

    /// The merchant's WeChat identity, unless the dev keys stand in for it.
    fn validate_identity(&self) -> Result<(), ConfigError> {
        if !self.wechat.use_dev_keys {
            for (name, value) in [
                ("wechat.appid", &self.wechat.appid),
                ("wechat.mchid", &self.wechat.mchid),
                ("wechat.merchant_serial", &self.wechat.merchant_serial),
                ("wechat.notify_url", &self.wechat.notify_url),
            ] {
                if value.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        name,
                        "missing (or set wechat.use_dev_keys = true for local runs against the simulator)",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_catalog(&self) -> Result<(), ConfigError> {
        if self.catalog.is_empty() {
            return Err(ConfigError::invalid("catalog", "at least one product is required"));
        }
        let mut seen = HashSet::new();
        for item in &self.catalog {
            if item.id.is_empty() || item.id.len() > 64 {
                return Err(ConfigError::invalid("catalog.id", "must be 1 to 64 characters"));
            }
            if !seen.insert(item.id.as_str()) {
                return Err(ConfigError::invalid("catalog.id", format!("duplicate product id {:?}", item.id)));
            }
            if item.price_fen <= 0 {
                return Err(ConfigError::invalid(
                    "catalog.price_fen",
                    format!("product {:?}: price must be a positive number of fen", item.id),
                ));
            }
        }
        Ok(())
    }

    /// The profile selected by `database.url`; the queue URL must agree with it.
    pub fn profile(&self) -> Result<Profile, ConfigError> {
        match scheme(&self.database.url) {
            "sqlite" => Ok(Profile::Embedded),
            "postgres" | "postgresql" => Ok(Profile::Cluster),
            _ => Err(ConfigError::invalid("database.url", "must start with sqlite:// or postgres://")),
        }
    }
}

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or("", |(scheme, _)| scheme)
}

fn positive(setting: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(setting, "must be greater than 0"));
    }
    Ok(())
}

/// Turns figment's error (which may carry several) into our one-line form.
fn first_error(err: figment::Error) -> ConfigError {
    let err = err.into_iter().next();
    match err {
        Some(err) => {
            let setting = if err.path.is_empty() { "config".to_owned() } else { err.path.join(".") };
            ConfigError::invalid(&setting, err.kind.to_string())
        }
        None => ConfigError::invalid("config", "invalid configuration"),
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment's Jail closures return figment::Error")]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_merchant_identity() {
        figment::Jail::expect_with(|_jail| {
            let err = Settings::load(None).expect_err("appid is missing");
            assert_eq!(err.setting, "wechat.appid");
            Ok(())
        });
    }

    #[test]
    fn defaults_with_dev_keys_are_valid_and_embedded() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WXPAY_RECON__WECHAT__USE_DEV_KEYS", "true");
            jail.set_env("WXPAY_RECON__WECHAT__MCHID", "1230000109");
            let settings = Settings::load(None).expect("valid");
            assert_eq!(settings.profile().expect("profile"), Profile::Embedded);
            assert_eq!(settings.wechat.mchid, "1230000109");
            Ok(())
        });
    }

    #[test]
    fn bad_value_names_the_setting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WXPAY_RECON__WECHAT__USE_DEV_KEYS", "true");
            jail.set_env("WXPAY_RECON__SERVER__PORT", "not-a-port");
            let err = Settings::load(None).expect_err("bad port");
            assert_eq!(err.setting, "server.port", "{err}");
            jail.set_env("WXPAY_RECON__SERVER__PORT", "8080");
            jail.set_env("WXPAY_RECON__DATABASE__URL", "mysql://x");
            let err = Settings::load(None).expect_err("bad url");
            assert_eq!(err.setting, "database.url", "{err}");
            Ok(())
        });
    }
}
