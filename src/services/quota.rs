//! Per-client quotas of the public API: logins per client address and per login code, order
//! creation and WeChat-backed order requests per user, a cap on login calls in flight and a
//! global rate of login calls (jscode2session), a cap on a user's unpaid orders. A refusal is a [`Refusal`] carrying when to retry (the API answers 429
//! with `Retry-After`); each one is counted in `wxpay_quota_refusals_total{quota}`.
//!
//! Rates are GCRA limiters (`governor`) keyed by address, code hash or user, in this process's
//! memory. Memory stays bounded under random keys (spoofed addresses, made-up codes):
//! - a key whose quota has refilled carries no information and is forgotten (`retain_recent`,
//!   run at most once a second from the checks themselves: no task to start or stop);
//! - a table holding `max_keys` keys even after that sweep charges new keys to one shared
//!   overflow key until the sweep frees room (see [`table`]): a flood of new keys gets one
//!   client's quota, cannot lock known clients out, and cannot spend the global login rate;
//! - a code is remembered as a 64-bit keyed hash, not its text; an IPv6 address by its /64
//!   (one subscriber's whole prefix), so rotating addresses inside it buys nothing; an
//!   IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
//!
//! Checks run in the order that keeps attacker-chosen keys out of the tables: the address
//! before the code, so only requests the address quota let through can add code keys.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::QuotaSettings;
use crate::telemetry::metrics::Metrics;

mod table;

use table::BoundedTable;

/// Sweeps of forgotten keys run at most this often per quota.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A full table's overflow checks are logged at most this often per quota.
const FULL_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// What a refusal without a limiter's own answer tells the client to wait.
const RETRY_SOON: Duration = Duration::from_secs(1);
/// Retry-After of the open-orders cap: the user has to pay or cancel one first.
const OPEN_ORDERS_RETRY: Duration = Duration::from_secs(60);

/// Which quota refused: the `quota` label of `wxpay_quota_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaName {
    LoginIp,
    LoginCode,
    LoginConcurrency,
    LoginGlobal,
    OrdersCreate,
    OrdersRefresh,
    OpenOrders,
}

impl QuotaName {
    pub const ALL: [QuotaName; 7] = [
        QuotaName::LoginIp,
        QuotaName::LoginCode,
        QuotaName::LoginConcurrency,
        QuotaName::LoginGlobal,
        QuotaName::OrdersCreate,
        QuotaName::OrdersRefresh,
        QuotaName::OpenOrders,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaName::LoginIp => "login_ip",
            QuotaName::LoginCode => "login_code",
            QuotaName::LoginConcurrency => "login_concurrency",
            QuotaName::LoginGlobal => "login_global",
            QuotaName::OrdersCreate => "orders_create",
            QuotaName::OrdersRefresh => "orders_refresh",
            QuotaName::OpenOrders => "open_orders",
        }
    }

    /// What the client reads in the 429's message.
    fn explain(self) -> &'static str {
        match self {
            QuotaName::LoginIp => "too many logins from this address",
            QuotaName::LoginCode => "too many attempts with this login code",
            QuotaName::LoginConcurrency => "too many logins in progress; try again shortly",
            QuotaName::LoginGlobal => "too many logins right now; try again shortly",
            QuotaName::OrdersCreate => "too many orders created",
            QuotaName::OrdersRefresh => "too many order requests",
            QuotaName::OpenOrders => "too many unpaid orders: pay or cancel one first",
        }
    }
}

/// A request a quota refused, and when a retry may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", .quota.explain())]
pub struct Refusal {
    pub quota: QuotaName,
    pub retry_after: Duration,
}

type KeyedLimiter<K> = RateLimiter<K, BoundedTable<K>, DefaultClock>;

/// One keyed rate (`None`: turned off).
struct Keyed<K: Hash + Eq + Clone> {
    name: QuotaName,
    limiter: Option<KeyedLimiter<K>>,
    max_keys: usize,
    /// Checks of new keys a full table charged to its overflow key (see [`table`]).
    overflowed: Arc<AtomicU64>,
    housekeeping: Mutex<Housekeeping>,
}

/// When the table was last swept, and its overflow checks last reported.
struct Housekeeping {
    last_sweep: Instant,
    last_report: Instant,
    reported_overflowed: u64,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(name: QuotaName, per_min: u32, burst: u32, max_keys: usize) -> Self {
        let overflowed = Arc::new(AtomicU64::new(0));
        let limiter = NonZeroU32::new(per_min).and_then(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            // `per_min` cells a minute: one every 60 s / per_min.
            Quota::with_period(Duration::from_secs(60) / rate.get()).map(|q| {
                let table = BoundedTable::new(max_keys, Arc::clone(&overflowed));
                RateLimiter::new(q.allow_burst(burst), table, DefaultClock::default())
            })
        });
        let now = Instant::now();
        let housekeeping = Housekeeping { last_sweep: now, last_report: now, reported_overflowed: 0 };
        Self { name, limiter, max_keys, overflowed, housekeeping: Mutex::new(housekeeping) }
    }

    fn check(&self, key: &K) -> Result<(), Refusal> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        self.housekeeping(limiter);
        limiter
            .check_key(key)
            .map_err(|not_until| Refusal { quota: self.name, retry_after: not_until.wait_time_from(Instant::now()) })
    }

    /// Forgets refilled keys, at most once per [`SWEEP_INTERVAL`] (another thread sweeping
    /// right now is as good), and says when a full table charged new keys to its overflow key.
    fn housekeeping(&self, limiter: &KeyedLimiter<K>) {
        let Ok(mut house) = self.housekeeping.try_lock() else { return };
        if house.last_sweep.elapsed() < SWEEP_INTERVAL {
            return;
        }
        house.last_sweep = Instant::now();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let overflowed = self.overflowed();
        if overflowed > house.reported_overflowed && house.last_report.elapsed() >= FULL_REPORT_INTERVAL {
            tracing::warn!(
                quota = self.name.as_str(),
                quota.max_keys = self.max_keys,
                quota.overflowed = overflowed - house.reported_overflowed,
                "quota table full: new keys share one overflow quota (a flood of new addresses or codes?)"
            );
            house.reported_overflowed = overflowed;
            house.last_report = Instant::now();
        }
    }

    fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, RateLimiter::len)
    }

    /// Checks of new keys charged to the overflow key, since start.
    fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// Every quota of the process; cheap to clone.
#[derive(Clone)]
pub struct Quotas(Arc<Inner>);

struct Inner {
    login_ip: Keyed<IpAddr>,
    login_code: Keyed<u64>,
    code_hasher: std::hash::RandomState,
    login_slots: Arc<Semaphore>,
    /// Login calls (jscode2session) a second, from every client together (`None`: off).
    login_calls: Option<DefaultDirectRateLimiter>,
    orders_create: Keyed<i64>,
    orders_refresh: Keyed<i64>,
    open_orders_per_user: u32,
    metrics: Metrics,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("login_ip_keys", &self.0.login_ip.len())
            .field("login_code_keys", &self.0.login_code.len())
            .field("login_slots_free", &self.0.login_slots.available_permits())
            .field("login_ip_overflowed", &self.0.login_ip.overflowed())
            .field("login_code_overflowed", &self.0.login_code.overflowed())
            .finish_non_exhaustive()
    }
}

/// A login call's place among those in flight; released when dropped.
#[derive(Debug)]
pub struct LoginSlot {
    _permit: OwnedSemaphorePermit,
}

impl Quotas {
    pub fn new(settings: &QuotaSettings, metrics: Metrics) -> Self {
        for quota in QuotaName::ALL {
            let _ = metrics.quota_refusals.with_label_values(&[quota.as_str()]);
        }
        let s = settings;
        Self(Arc::new(Inner {
            login_ip: Keyed::new(QuotaName::LoginIp, s.login_per_ip_per_min, s.login_per_ip_burst, s.max_keys),
            login_code: Keyed::new(QuotaName::LoginCode, s.login_per_code_per_min, s.login_per_code_burst, s.max_keys),
            code_hasher: std::hash::RandomState::new(),
            login_slots: Arc::new(Semaphore::new(s.login_concurrency)),
            login_calls: NonZeroU32::new(s.login_calls_per_sec)
                .map(|rate| governor::RateLimiter::direct(Quota::per_second(rate))),
            orders_create: Keyed::new(
                QuotaName::OrdersCreate,
                s.orders_create_per_min,
                s.orders_create_burst,
                s.max_keys,
            ),
            orders_refresh: Keyed::new(
                QuotaName::OrdersRefresh,
                s.orders_refresh_per_min,
                s.orders_refresh_burst,
                s.max_keys,
            ),
            open_orders_per_user: s.open_orders_per_user,
            metrics,
        }))
    }

    /// A login from `client` (unknown: all such logins share one key) with `code`: the address
    /// quota, the code quota, a slot among the login calls in flight (refused at once when all
    /// are taken, never queued), then the global rate of login calls: whatever the per-key
    /// tables let through (a full table lets new keys pass), no more than that many calls a
    /// second carry our AppSecret to WeChat.
    pub fn login(&self, client: Option<IpAddr>, code: &str) -> Result<LoginSlot, Refusal> {
        let inner = &self.0;
        let address = client.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), subscriber_prefix);
        self.counted(inner.login_ip.check(&address))?;
        self.counted(inner.login_code.check(&inner.code_hasher.hash_one(code)))?;
        let slot = Arc::clone(&inner.login_slots)
            .try_acquire_owned()
            .map_err(|_| Refusal { quota: QuotaName::LoginConcurrency, retry_after: RETRY_SOON });
        let slot = self.counted(slot)?;
        if let Some(calls) = &inner.login_calls {
            self.counted(calls.check().map_err(|not_until| Refusal {
                quota: QuotaName::LoginGlobal,
                retry_after: not_until.wait_time_from(Instant::now()).max(Duration::from_millis(1)),
            }))?;
        }
        Ok(LoginSlot { _permit: slot })
    }

    /// One more order for `user_id` (`POST /api/orders`).
    pub fn create_order(&self, user_id: i64) -> Result<(), Refusal> {
        self.counted(self.0.orders_create.check(&user_id))
    }

    /// One more request that makes us ask WeChat for `user_id` (status sync, pay again, cancel).
    pub fn order_request(&self, user_id: i64) -> Result<(), Refusal> {
        self.counted(self.0.orders_refresh.check(&user_id))
    }

    /// Whether the cap on unpaid orders is on (else nothing needs counting).
    pub fn caps_open_orders(&self) -> bool {
        self.0.open_orders_per_user > 0
    }

    /// Refuses a new order when the user already holds `open` unpaid ones at the cap.
    pub fn open_orders(&self, open: i64) -> Result<(), Refusal> {
        let cap = i64::from(self.0.open_orders_per_user);
        if cap == 0 || open < cap {
            return Ok(());
        }
        self.counted(Err(Refusal { quota: QuotaName::OpenOrders, retry_after: OPEN_ORDERS_RETRY }))
    }

    fn counted<T>(&self, result: Result<T, Refusal>) -> Result<T, Refusal> {
        if let Err(refusal) = &result {
            self.0.metrics.quota_refusals.with_label_values(&[refusal.quota.as_str()]).inc();
        }
        result
    }
}

/// The key of a client address: IPv4 as is, IPv6 by its /64 (what one subscriber gets). An
/// IPv4-mapped address (a dual-stack listener on `::`, or a proxy passing mapped addresses) is
/// its IPv4 address first: its /64 would be `::` for every IPv4 client.
fn subscriber_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        ip @ IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
    }
}

#[cfg(test)]
mod tests;
