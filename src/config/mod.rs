//! Configuration: compiled-in defaults, then an optional file, then `WXPAY_RECON__*` variables.
//!
//! Loading fails with one line per setting at fault (`database.url: ...`), every problem found
//! in one run (a fresh install is configured in one pass, not one restart per mistake), never a
//! panic. This module is the only place that reads the environment for settings.

pub mod chaos;
mod lenient;
pub mod secret;
mod settings;
pub mod transport;

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

/// A configuration problem, phrased for the operator: the setting, then what is wrong with it;
/// `others` holds the further problems found in the same pass.
#[derive(Debug)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
    pub others: Vec<ConfigError>,
}

impl std::error::Error for ConfigError {}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.others.is_empty() {
            return write!(f, "{}: {}", self.setting, self.message);
        }
        write!(f, "{} configuration problems:", self.others.len() + 1)?;
        for problem in std::iter::once(self).chain(&self.others) {
            write!(f, "\n  {}: {}", problem.setting, problem.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn invalid(setting: &str, message: impl Into<String>) -> Self {
        Self { setting: setting.to_owned(), message: message.into(), others: Vec::new() }
    }

    /// Every problem this error carries, itself first.
    pub fn into_problems(mut self) -> Vec<ConfigError> {
        let others = std::mem::take(&mut self.others);
        std::iter::once(self).chain(others.into_iter().flat_map(ConfigError::into_problems)).collect()
    }
}

/// Collects problems instead of stopping at the first, so one run reports them all.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value when `result` is fine; otherwise records its problems and gives `None`.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.0.extend(err.into_problems());
                None
            }
        }
    }

    pub fn push(&mut self, err: ConfigError) {
        self.0.extend(err.into_problems());
    }

    /// `Ok(())` when nothing was found, else one error carrying every problem.
    pub fn finish(self) -> Result<(), ConfigError> {
        let mut problems = self.0.into_iter();
        match problems.next() {
            None => Ok(()),
            Some(mut first) => {
                first.others = problems.collect();
                Err(first)
            }
        }
    }

    /// `value` when nothing was found (it is then always `Some`), else every problem.
    pub fn finish_with<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        self.finish()?;
        value.ok_or_else(|| ConfigError::invalid("config", "invalid configuration"))
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
        Self::from_figment(figment, purpose)
    }

    /// Extracts and validates the layers gathered in `figment` (the `config` fuzz target feeds
    /// it TOML and environment-like values without touching files or the process environment).
    pub fn from_figment(mut figment: Figment, purpose: Purpose) -> Result<Self, ConfigError> {
        if purpose == Purpose::Dev {
            figment = figment.merge(figment::providers::Serialized::default("wechat.use_dev_keys", true));
        }
        let settings: Settings = figment.extract().map_err(all_errors)?;
        let mut problems = Problems::default();
        settings.validate_common(&mut problems);
        if purpose != Purpose::Ops {
            settings.validate_identity(&mut problems);
            problems.check(transport::check(&settings.wechat));
        }
        problems.finish()?;
        Ok(settings)
    }

    /// Every check: common settings and the merchant identity.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.validate_common(&mut problems);
        self.validate_identity(&mut problems);
        problems.check(transport::check(&self.wechat));
        problems.finish()
    }

    /// Cross-field checks that serde cannot express.
    fn validate_common(&self, problems: &mut Problems) {
        problems.check(self.profile());
        let queue_scheme = scheme(&self.queue.url);
        if !matches!(queue_scheme, "sqlite" | "redis" | "rediss") {
            problems.push(ConfigError::invalid("queue.url", "must start with sqlite:// or redis://"));
        }
        let header = self.server.client_ip_header.trim();
        if !header.is_empty() && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            problems.push(ConfigError::invalid("server.client_ip_header", format!("{header:?} is not a header name")));
        }
        self.validate_server(problems);
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            problems.push(ConfigError::invalid("log.filter", format!("not a tracing filter: {err}")));
        }
        problems.check(positive("notify.max_batch", self.notify.max_batch));
        problems.check(positive("notify.writers", self.notify.writers));
        problems.check(not_zero("notify.rejection_samples_per_sec", self.notify.rejection_samples_per_sec));
        problems.check(not_zero("notify.rejection_max_rows", self.notify.rejection_max_rows));
        problems.check(not_zero("gauges.refresh_interval_ms", self.gauges.refresh_interval_ms));
        problems.check(not_zero("gauges.query_timeout_ms", self.gauges.query_timeout_ms));
        if self.notify.writers.saturating_mul(2) > self.database.max_connections as usize {
            problems.push(ConfigError::invalid(
                "notify.writers",
                "at most half of database.max_connections (each writer holds a connection while it commits)",
            ));
        }
        if !(1..=ApplySettings::MAX_BATCH).contains(&self.apply.batch_size) {
            problems.push(ConfigError::invalid(
                "apply.batch_size",
                format!("must be between 1 and {}", ApplySettings::MAX_BATCH),
            ));
        }
        problems.check(positive("apply.claimers", self.apply.claimers));
        if self.apply.claimers.saturating_add(self.notify.writers) >= self.database.max_connections as usize {
            problems.push(ConfigError::invalid(
                "apply.claimers",
                "apply.claimers + notify.writers must stay below database.max_connections (each holds a connection while it commits)",
            ));
        }
        if self.apply.hold_before_commit_ms > 10_000 {
            problems.push(ConfigError::invalid(
                "apply.hold_before_commit_ms",
                "at most 10000 (a fault-injection knob for crash tests; 0 in production)",
            ));
        }
        problems.check(positive("apply.poll_interval_ms", usize::try_from(self.apply.poll_interval_ms).unwrap_or(0)));
        problems.check(positive("queue.concurrency", self.queue.concurrency));
        problems.check(positive("poll.batch", self.poll.batch));
        problems.check(positive("poll.claim_secs", usize::try_from(self.poll.claim_secs).unwrap_or(0)));
        if self.reconcile.max_bill_plain_bytes < self.reconcile.max_bill_bytes {
            problems.push(ConfigError::invalid(
                "reconcile.max_bill_plain_bytes",
                "must be at least reconcile.max_bill_bytes (an uncompressed bill must fit)",
            ));
        }
        if self.reconcile.run_at_time().is_none() {
            problems.push(ConfigError::invalid("reconcile.run_at", "must be HH:MM (Asia/Shanghai)"));
        }
        problems.check(positive("poll.sweep_interval_ms", usize::try_from(self.poll.sweep_interval_ms).unwrap_or(0)));
        if self.poll.schedule_secs.is_empty() || self.poll.schedule_secs.contains(&0) {
            problems.push(ConfigError::invalid("poll.schedule_secs", "needs at least one delay, each > 0"));
        }
        problems.check(positive("worker.max_attempts", usize::try_from(self.worker.max_attempts).unwrap_or(0)));
        problems
            .check(positive("database.max_connections", usize::try_from(self.database.max_connections).unwrap_or(0)));
        if self.worker.backoff_base_ms == 0 || self.worker.backoff_cap_ms < self.worker.backoff_base_ms {
            problems.push(ConfigError::invalid(
                "worker.backoff_cap_ms",
                "backoff_base_ms must be > 0 and backoff_cap_ms >= backoff_base_ms",
            ));
        }
        if !(60..=90 * 86_400).contains(&self.orders.time_expire_secs) {
            problems.push(ConfigError::invalid(
                "orders.time_expire_secs",
                "must be between 60 s and 90 days (WeChat clamps outside that range)",
            ));
        }
        // wechatpay-go refreshes every 24 h and warns never to exceed 2 days (the switch window
        // could be missed); half a day leaves room for a failed refresh or two.
        if !(60..=43_200).contains(&self.platform_certificates.refresh_interval_secs) {
            problems.push(ConfigError::invalid(
                "platform_certificates.refresh_interval_secs",
                "must be between 60 s and 12 h",
            ));
        }
        if !(1..=3600).contains(&self.platform_certificates.reload_interval_secs) {
            problems.push(ConfigError::invalid(
                "platform_certificates.reload_interval_secs",
                "must be between 1 s and 1 h",
            ));
        }
        if !(self.sim.time_scale.is_finite() && self.sim.time_scale > 0.0) {
            problems.push(ConfigError::invalid("sim.time_scale", "must be a positive number"));
        }
        self.validate_catalog(problems);
        self.validate_quotas(problems);
    }

    /// `[quotas]`, `[wechat_budget]` and the order deadline: a zero where a limit is needed,
    /// or a deadline the request timeout cuts first, would silently turn a limit off.
    fn validate_quotas(&self, problems: &mut Problems) {
        let q = &self.quotas;
        for (name, rate, burst) in [
            ("quotas.login_per_ip_burst", q.login_per_ip_per_min, q.login_per_ip_burst),
            ("quotas.login_per_code_burst", q.login_per_code_per_min, q.login_per_code_burst),
            ("quotas.orders_create_burst", q.orders_create_per_min, q.orders_create_burst),
            ("quotas.orders_refresh_burst", q.orders_refresh_per_min, q.orders_refresh_burst),
        ] {
            if rate > 0 && burst == 0 {
                problems.push(ConfigError::invalid(name, "must be greater than 0 when its rate is set"));
            }
        }
        problems.check(positive("quotas.login_concurrency", q.login_concurrency));
        problems.check(positive("quotas.max_keys", q.max_keys));
        let b = &self.wechat_budget;
        if !(1..=100).contains(&b.user_share_percent) {
            problems.push(ConfigError::invalid("wechat_budget.user_share_percent", "must be between 1 and 100"));
        }
        if b.settling_max_wait_ms < b.user_max_wait_ms {
            problems.push(ConfigError::invalid(
                "wechat_budget.settling_max_wait_ms",
                "must be at least user_max_wait_ms (settling work never gives up before user traffic)",
            ));
        }
        if self.orders.deadline_margin_ms.saturating_add(500) > self.server.request_timeout_ms {
            problems.push(ConfigError::invalid(
                "orders.deadline_margin_ms",
                "must leave at least 500 ms of server.request_timeout_ms for order creation",
            ));
        }
    }

    /// The listeners' limits: a zero would refuse every connection or request.
    fn validate_server(&self, problems: &mut Problems) {
        let server = &self.server;
        if server.ops_host.trim().is_empty() {
            problems.push(ConfigError::invalid("server.ops_host", "must not be empty (127.0.0.1 keeps it local)"));
        }
        if server.ops_port != 0 && server.ops_port == server.port && server.ops_host == server.host {
            problems.push(ConfigError::invalid("server.ops_port", "must differ from server.port"));
        }
        if !(100..=60_000).contains(&server.header_read_timeout_ms) {
            problems.push(ConfigError::invalid(
                "server.header_read_timeout_ms",
                "must be between 100 ms and 60 s (it is what cuts slow and idle connections)",
            ));
        }
        if !(100..=60_000).contains(&server.body_read_timeout_ms)
            || server.body_read_timeout_ms >= server.request_timeout_ms
        {
            problems.push(ConfigError::invalid(
                "server.body_read_timeout_ms",
                "must be between 100 ms and 60 s and below server.request_timeout_ms (it is what cuts slow bodies)",
            ));
        }
        if !(1024..=1024 * 1024).contains(&server.max_header_bytes) {
            problems.push(ConfigError::invalid("server.max_header_bytes", "must be between 1 KiB and 1 MiB"));
        }
        problems.check(positive("server.max_connections", server.max_connections));
        problems.check(positive("server.max_in_flight", server.max_in_flight));
        problems.check(positive("server.notify_max_in_flight", server.notify_max_in_flight));
        if !(1..=3600).contains(&server.retry_after_secs) {
            problems.push(ConfigError::invalid("server.retry_after_secs", "must be between 1 and 3600"));
        }
    }

    /// The merchant's WeChat identity, unless the dev keys stand in for it.
    fn validate_identity(&self, problems: &mut Problems) {
        if !self.wechat.use_dev_keys {
            for (name, value) in [
                ("wechat.appid", &self.wechat.appid),
                ("wechat.mchid", &self.wechat.mchid),
                ("wechat.merchant_serial", &self.wechat.merchant_serial),
                ("wechat.notify_url", &self.wechat.notify_url),
            ] {
                if value.trim().is_empty() {
                    problems.push(ConfigError::invalid(
                        name,
                        "missing (or set wechat.use_dev_keys = true for local runs against the simulator)",
                    ));
                }
            }
        }
    }

    fn validate_catalog(&self, problems: &mut Problems) {
        if self.catalog.is_empty() {
            problems.push(ConfigError::invalid("catalog", "at least one product is required"));
        }
        let mut seen = HashSet::new();
        for item in &self.catalog {
            if item.id.is_empty() || item.id.len() > 64 {
                problems.push(ConfigError::invalid("catalog.id", "must be 1 to 64 characters"));
            }
            if !seen.insert(item.id.as_str()) {
                problems.push(ConfigError::invalid("catalog.id", format!("duplicate product id {:?}", item.id)));
            }
            if item.price_fen <= 0 {
                problems.push(ConfigError::invalid(
                    "catalog.price_fen",
                    format!("product {:?}: price must be a positive number of fen", item.id),
                ));
            }
        }
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

/// Where a database or Redis URL points (`host:port/path`), without its credentials, for
/// error messages that must name the host but never a password.
pub fn endpoint_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    // Credentials end at the last `@`: cut them before anything else, so a password holding
    // `/`, `?` or `#` cannot leak through the cuts below.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    rest.split(['?', '#']).next().unwrap_or(rest).trim_end_matches('/').to_owned()
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

/// [`positive`] for settings that are not sizes (rates, intervals).
fn not_zero<T: Default + PartialEq>(setting: &str, value: T) -> Result<(), ConfigError> {
    if value == T::default() {
        return Err(ConfigError::invalid(setting, "must be greater than 0"));
    }
    Ok(())
}

/// Turns figment's error (which may carry several) into ours, one line per setting.
fn all_errors(err: figment::Error) -> ConfigError {
    let mut problems = Problems::default();
    for err in err {
        let setting = if err.path.is_empty() { "config".to_owned() } else { err.path.join(".") };
        problems.push(ConfigError::invalid(&setting, err.kind.to_string()));
    }
    match problems.finish() {
        Err(err) => err,
        Ok(()) => ConfigError::invalid("config", "invalid configuration"),
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment's Jail closures return figment::Error")]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_the_host_and_never_the_password() {
        assert_eq!(
            endpoint_of("postgres://app:s3cret@db.internal:5433/wxpay?sslmode=require"),
            "db.internal:5433/wxpay"
        );
        assert_eq!(endpoint_of("redis://:pw@10.0.0.5:6379/2"), "10.0.0.5:6379/2");
        assert_eq!(endpoint_of("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(endpoint_of("sqlite://data/x.sqlite"), "data/x.sqlite");
        assert_eq!(endpoint_of("redis://:ab#c/d?e@10.0.0.5:6379"), "10.0.0.5:6379");
    }

    #[test]
    fn every_validation_problem_is_reported_in_one_run() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WXPAY_RECON__NOTIFY__MAX_BATCH", "0");
            jail.set_env("WXPAY_RECON__POLL__SCHEDULE_SECS", "[]");
            jail.set_env("WXPAY_RECON__RECONCILE__RUN_AT", "25:99");
            let err = Settings::load(None).expect_err("many problems");
            let settings: Vec<String> = err.into_problems().into_iter().map(|p| p.setting).collect();
            for expected in [
                "notify.max_batch",
                "poll.schedule_secs",
                "reconcile.run_at",
                "wechat.appid",
                "wechat.mchid",
                "wechat.merchant_serial",
                "wechat.notify_url",
            ] {
                assert!(settings.iter().any(|s| s == expected), "{expected} missing from {settings:?}");
            }
            Ok(())
        });
    }

    #[test]
    fn quota_and_budget_settings_that_would_turn_a_limit_off_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WXPAY_RECON__QUOTAS__ORDERS_CREATE_BURST", "0");
            jail.set_env("WXPAY_RECON__QUOTAS__LOGIN_CONCURRENCY", "0");
            jail.set_env("WXPAY_RECON__QUOTAS__MAX_KEYS", "0");
            jail.set_env("WXPAY_RECON__WECHAT_BUDGET__USER_SHARE_PERCENT", "0");
            jail.set_env("WXPAY_RECON__WECHAT_BUDGET__SETTLING_MAX_WAIT_MS", "10");
            jail.set_env("WXPAY_RECON__ORDERS__DEADLINE_MARGIN_MS", "9800");
            let err = Settings::load_dev(None).expect_err("bad quotas");
            let settings: Vec<String> = err.into_problems().into_iter().map(|p| p.setting).collect();
            for expected in [
                "quotas.orders_create_burst",
                "quotas.login_concurrency",
                "quotas.max_keys",
                "wechat_budget.user_share_percent",
                "wechat_budget.settling_max_wait_ms",
                "orders.deadline_margin_ms",
            ] {
                assert!(settings.iter().any(|s| s == expected), "{expected} missing from {settings:?}");
            }
            Ok(())
        });
    }

    #[test]
    fn platform_keys_can_be_set_from_one_environment_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WXPAY_RECON__WECHAT__USE_DEV_KEYS", "true");
            jail.set_env(
                "WXPAY_RECON__WECHAT__PLATFORM_KEYS",
                r#"[{serial="PUB_KEY_ID_0114232019292024101100397200000001", public_key_file="/run/secrets/wechatpay_pub.pem"}, {serial=5157F09EFDC096DE15EBE81A47057A7232F1B8E1, public_key_file="/run/secrets/cert.pem"}]"#,
            );
            let settings = Settings::load(None).expect("valid");
            let keys = &settings.wechat.platform_keys;
            assert_eq!(keys.len(), 2);
            assert_eq!(keys[0].serial, "PUB_KEY_ID_0114232019292024101100397200000001");
            assert_eq!(
                keys[0].public_key_file.as_deref(),
                Some(std::path::Path::new("/run/secrets/wechatpay_pub.pem"))
            );
            assert_eq!(keys[1].serial, "5157F09EFDC096DE15EBE81A47057A7232F1B8E1");
            Ok(())
        });
    }

    #[test]
    fn the_sample_production_config_loads_as_it_is() {
        figment::Jail::expect_with(|_jail| {
            let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
            let settings = Settings::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(settings.profile().map_err(|e| e.to_string())?, Profile::Cluster);
            assert!(!settings.wechat.use_dev_keys);
            assert!(settings.wechat.notify_url.starts_with("https://"), "{}", settings.wechat.notify_url);
            assert!(!settings.wechat.platform_keys.is_empty());
            Ok(())
        });
    }

    #[test]
    fn listener_limits_that_would_refuse_everything_are_reported() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WXPAY_RECON__WECHAT__USE_DEV_KEYS", "true");
            jail.set_env("WXPAY_RECON__SERVER__MAX_CONNECTIONS", "0");
            jail.set_env("WXPAY_RECON__SERVER__MAX_IN_FLIGHT", "0");
            jail.set_env("WXPAY_RECON__SERVER__HEADER_READ_TIMEOUT_MS", "0");
            jail.set_env("WXPAY_RECON__SERVER__MAX_HEADER_BYTES", "100");
            jail.set_env("WXPAY_RECON__SERVER__BODY_READ_TIMEOUT_MS", "0");
            jail.set_env("WXPAY_RECON__SERVER__OPS_PORT", "8080");
            let err = Settings::load(None).expect_err("bad limits");
            let settings: Vec<String> = err.into_problems().into_iter().map(|p| p.setting).collect();
            for expected in [
                "server.max_connections",
                "server.max_in_flight",
                "server.header_read_timeout_ms",
                "server.max_header_bytes",
                "server.body_read_timeout_ms",
                "server.ops_port",
            ] {
                assert!(settings.iter().any(|s| s == expected), "{expected} missing from {settings:?}");
            }
            Ok(())
        });
    }

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
