//! The typed settings tree. Field documentation lives once, in `config/default.toml`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::Secret;

/// Everything the service reads from configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub queue: QueueSettings,
    pub worker: WorkerSettings,
    pub notify: NotifySettings,
    pub gauges: GaugeSettings,
    pub apply: ApplySettings,
    pub orders: OrderSettings,
    pub poll: PollSettings,
    pub reconcile: ReconcileSettings,
    pub auth: AuthSettings,
    pub wechat: WechatSettings,
    pub wechat_budget: WechatBudgetSettings,
    pub quotas: QuotaSettings,
    pub platform_certificates: PlatformCertificateSettings,
    pub log: LogSettings,
    pub sim: SimSettings,
    pub catalog: Vec<CatalogItem>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub body_limit_bytes: usize,
    pub body_read_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub client_ip_header: String,
    pub admin_token: Option<Secret<String>>,
    pub admin_token_file: Option<PathBuf>,
    pub ops_host: String,
    pub ops_port: u16,
    pub ops_token: Option<Secret<String>>,
    pub ops_token_file: Option<PathBuf>,
    pub header_read_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub notify_max_in_flight: usize,
    pub retry_after_secs: u32,
}

impl ServerSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub url: String,
    pub prefix: String,
    pub poll_interval_ms: u64,
    pub heartbeat_secs: u64,
    pub missed_heartbeats: usize,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub enabled: bool,
    pub sweep_interval_ms: u64,
    pub sweep_min_age_ms: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub lease_ttl_ms: u64,
}

/// How the worker applies the inbox (see `services::apply::batch`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplySettings {
    pub batch_size: usize,
    pub claimers: usize,
    pub poll_interval_ms: u64,
    pub hold_before_commit_ms: u64,
}

impl ApplySettings {
    /// Largest batch accepted: its statements stay far below both backends' parameter limits.
    pub const MAX_BATCH: usize = 1000;

    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.poll_interval_ms)
    }

    pub fn hold_before_commit(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.hold_before_commit_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    pub timestamp_tolerance_secs: i64,
    pub max_batch: usize,
    pub writers: usize,
    pub rejection_samples_per_sec: u32,
    pub rejection_max_rows: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaugeSettings {
    pub refresh_interval_ms: u64,
    pub query_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSettings {
    pub time_expire_secs: u64,
    pub description_prefix: String,
    pub poll_grace_secs: u64,
    pub deadline_margin_ms: u64,
}

/// How the WeChat Pay call budget (`wechat.rate_limit_per_sec`) is split by priority
/// (see `wechat::ratelimit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatBudgetSettings {
    pub user_share_percent: u8,
    pub user_max_wait_ms: u64,
    pub settling_max_wait_ms: u64,
}

/// Per-client quotas of the public API (see `services::quota`). A rate of 0 turns that quota off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    pub login_per_ip_per_min: u32,
    pub login_per_ip_burst: u32,
    pub login_per_code_per_min: u32,
    pub login_per_code_burst: u32,
    pub login_concurrency: usize,
    /// Login calls (jscode2session) a second from all clients together, per process: the
    /// backstop when the per-key tables are full and let new keys through (0: off).
    pub login_calls_per_sec: u32,
    pub orders_create_per_min: u32,
    pub orders_create_burst: u32,
    pub orders_refresh_per_min: u32,
    pub orders_refresh_burst: u32,
    pub open_orders_per_user: u32,
    pub max_keys: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSettings {
    pub sweep_interval_ms: u64,
    pub batch: usize,
    pub schedule_secs: Vec<u64>,
    pub claim_secs: u64,
    pub client_sync_cache_ms: u64,
    /// How often a refund WeChat reported ABNORMAL is asked about again (s): an operator
    /// resolves it in the merchant console and WeChat may then report SUCCESS only to a query.
    pub abnormal_refund_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    pub enabled: bool,
    pub run_at: String,
    pub catch_up_days: u32,
    pub retry_interval_secs: u64,
    pub tick_interval_ms: u64,
    pub work_dir: PathBuf,
    pub max_bill_bytes: u64,
    pub max_bill_plain_bytes: u64,
    pub reports_dir: PathBuf,
}

impl ReconcileSettings {
    /// `run_at` as a wall-clock time (validated at start-up).
    pub fn run_at_time(&self) -> Option<chrono::NaiveTime> {
        chrono::NaiveTime::parse_from_str(&self.run_at, "%H:%M").ok()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub token_ttl_secs: u64,
    pub data_key: Option<Secret<String>>,
    pub data_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatSettings {
    #[serde(deserialize_with = "super::lenient::string")]
    pub appid: String,
    #[serde(deserialize_with = "super::lenient::string")]
    pub mchid: String,
    #[serde(deserialize_with = "super::lenient::string")]
    pub merchant_serial: String,
    pub merchant_key: Option<Secret<String>>,
    pub merchant_key_file: Option<PathBuf>,
    pub apiv3_key: Option<Secret<String>>,
    pub apiv3_key_file: Option<PathBuf>,
    pub app_secret: Option<Secret<String>>,
    pub app_secret_file: Option<PathBuf>,
    pub pay_base_url: String,
    pub login_base_url: String,
    pub notify_url: String,
    pub allow_insecure_http: bool,
    pub request_timeout_ms: u64,
    pub rate_limit_per_sec: u32,
    pub use_dev_keys: bool,
    pub dev_keys_dir: PathBuf,
    #[serde(default)]
    pub platform_keys: Vec<PlatformKeySetting>,
}

/// Following WeChat's platform certificates as they rotate (only when certificates are in use).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformCertificateSettings {
    pub refresh_interval_secs: u64,
    pub reload_interval_secs: u64,
}

impl PlatformCertificateSettings {
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_secs(self.refresh_interval_secs)
    }

    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.reload_interval_secs)
    }
}

/// One WeChat verification key: a platform certificate serial or a `PUB_KEY_ID_...` public key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformKeySetting {
    #[serde(deserialize_with = "super::lenient::string")]
    pub serial: String,
    pub public_key: Option<String>,
    pub public_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
    Compact,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSettings {
    pub host: String,
    pub port: u16,
    pub time_scale: f64,
    pub seed: u64,
    pub allow_http_notify: bool,
    pub bound_to_open_platform: bool,
    #[serde(default)]
    pub chaos: super::chaos::Chaos,
}

/// A product we sell: the price charged is always this one, whatever a client sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogItem {
    pub id: String,
    pub name: String,
    pub price_fen: i64,
}

impl QueueSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

impl PollSettings {
    /// The delay before check number `checks_done + 1` (the first delay is the grace period,
    /// applied at order creation).
    pub fn delay_after(&self, checks_done: i64) -> Duration {
        let index = usize::try_from(checks_done.max(1) - 1).unwrap_or(usize::MAX);
        let secs = self.schedule_secs.get(index).or(self.schedule_secs.last()).copied().unwrap_or(60);
        Duration::from_secs(secs)
    }
}

impl WorkerSettings {
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }
}
