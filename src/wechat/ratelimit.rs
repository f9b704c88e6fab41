//! The WeChat Pay call budget, split by priority. WeChat limits calls per merchant, not per
//! process, so on the cluster profile the budget is also shared by all replicas through
//! per-second counters in Redis. Inside a process GCRA limiters (`governor`) smooth calls.
//!
//! Two kinds of calls draw from one budget of `per_sec` calls:
//! - [`Priority::Settling`]: work that settles money (notification follow-ups, polls, closes of
//!   expired orders, refunds, bills, certificates). It may use the whole budget.
//! - [`Priority::User`]: calls a client's request causes (prepay, the owner's status sync and
//!   cancel). They also pass a second limiter of `user_share_percent` of the budget, so however
//!   hard users (or one abusive script) push, at least the rest stays free for settling work.
//!
//! A reserved share rather than a priority queue: it needs no queue shared between replicas
//! (Redis keeps two counters instead of one), it is stateless across restarts, and a waiting
//! settling call never sits behind a backlog of user calls, because user calls cannot build one:
//! a user call waits at most `user_max_wait` and is then refused as [`Busy`] (the API answers
//! 503 with Retry-After), while a settling call waits up to `settling_max_wait` (the job then
//! retries on its own schedule). Neither waits without bound.
//!
//! Redis being down must not stop payments: the shared check is skipped (logged) and the
//! process keeps its own limits.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};
use redis::aio::ConnectionManager;

use crate::config::WechatBudgetSettings;
use crate::telemetry::metrics::Metrics;

/// Retry-After of a call refused because too many were queued ahead of it.
const QUEUE_RETRY: Duration = Duration::from_secs(1);
/// Redis round trips slower than this skip the shared check rather than delay the call.
const SHARED_TIMEOUT: Duration = Duration::from_millis(250);

/// Who a call to WeChat is for, which decides how much of the budget it may use and how long it
/// may wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Caused by a client request: at most the user share of the budget, a short wait.
    User,
    /// Settles money (or keeps us able to verify WeChat): the whole budget, a longer wait.
    Settling,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::User, Priority::Settling];

    /// The `priority` label of the budget metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::User => "user",
            Priority::Settling => "settling",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the budget is split (`[wechat_budget]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSplit {
    /// Share of `per_sec` user-driven calls may use (1..=100).
    pub user_share_percent: u8,
    /// Longest a user-driven call waits for the budget before it is refused.
    pub user_max_wait: Duration,
    /// Longest a settling call waits before it is refused (its job retries later).
    pub settling_max_wait: Duration,
}

impl Default for BudgetSplit {
    fn default() -> Self {
        Self {
            user_share_percent: 60,
            user_max_wait: Duration::from_secs(2),
            settling_max_wait: Duration::from_secs(30),
        }
    }
}

impl BudgetSplit {
    pub fn from_settings(settings: &WechatBudgetSettings) -> Self {
        Self {
            user_share_percent: settings.user_share_percent,
            user_max_wait: Duration::from_millis(settings.user_max_wait_ms),
            settling_max_wait: Duration::from_millis(settings.settling_max_wait_ms),
        }
    }

    fn max_wait(&self, priority: Priority) -> Duration {
        match priority {
            Priority::User => self.user_max_wait,
            Priority::Settling => self.settling_max_wait,
        }
    }

    /// The user share of `per_sec`, at least 1 call per second.
    pub fn user_per_sec(&self, per_sec: u32) -> u32 {
        let share = u64::from(per_sec) * u64::from(self.user_share_percent.min(100)) / 100;
        u32::try_from(share).unwrap_or(per_sec).clamp(1, per_sec.max(1))
    }
}

/// The budget could not admit the call within its priority's longest wait: nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the WeChat call budget for {priority} calls is spent; retry in {retry_after:?}")]
pub struct Busy {
    pub priority: Priority,
    /// When a retry may be admitted (from the limiter's own state; at least a second for Redis).
    pub retry_after: Duration,
}

#[derive(Clone)]
pub struct RateLimiter {
    per_sec: u32,
    user_per_sec: u32,
    split: BudgetSplit,
    total: Arc<DefaultDirectRateLimiter>,
    user: Arc<DefaultDirectRateLimiter>,
    gates: Arc<Gates>,
    shared: Option<Shared>,
    metrics: Metrics,
}

/// The lines local waiters take turns in (see [`RateLimiter::local`]).
#[derive(Default)]
struct Gates {
    user: tokio::sync::Mutex<()>,
    total_user: tokio::sync::Mutex<()>,
    total_settling: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Shared {
    conn: ConnectionManager,
    key_prefix: String,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimiter({}/s, user {}/s, shared: {})", self.per_sec, self.user_per_sec, self.shared.is_some())
    }
}

fn direct(per_sec: u32) -> Arc<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    Arc::new(DefaultDirectRateLimiter::direct(Quota::per_second(rate)))
}

impl RateLimiter {
    /// `per_sec` calls per second split by [`BudgetSplit::default`]; `None` when 0 (unlimited).
    pub fn new(per_sec: u32, metrics: Metrics) -> Option<Self> {
        Self::with_split(per_sec, BudgetSplit::default(), metrics)
    }

    /// `per_sec` calls per second, of which user-driven calls take at most their share.
    pub fn with_split(per_sec: u32, split: BudgetSplit, metrics: Metrics) -> Option<Self> {
        NonZeroU32::new(per_sec)?;
        let user_per_sec = split.user_per_sec(per_sec);
        for priority in Priority::ALL {
            for outcome in ADMISSION_OUTCOMES {
                let _ = metrics.wechat_budget_admissions.with_label_values(&[priority.as_str(), outcome]);
            }
            let _ = metrics.wechat_budget_wait_seconds.with_label_values(&[priority.as_str()]);
        }
        Some(Self {
            per_sec,
            user_per_sec,
            split,
            total: direct(per_sec),
            user: direct(user_per_sec),
            gates: Arc::default(),
            shared: None,
            metrics,
        })
    }

    /// Also counts calls in Redis under `key_prefix`, so every replica draws from one budget
    /// (with the same split).
    #[must_use]
    pub fn shared_through(mut self, conn: ConnectionManager, key_prefix: &str) -> Self {
        self.shared = Some(Shared { conn, key_prefix: format!("{key_prefix}:wechat-ratelimit") });
        self
    }

    /// Waits until one more settling call is allowed (or its longest wait has passed: the call
    /// then goes ahead, as a tool or test would want). Services use [`Self::admit`].
    pub async fn acquire(&self) {
        let _ = self.admit(Priority::Settling).await;
    }

    /// Waits until one more call of `priority` is allowed, at most that priority's longest
    /// wait; refuses with [`Busy`] when the budget cannot admit it in time.
    pub async fn admit(&self, priority: Priority) -> Result<(), Busy> {
        let started = Instant::now();
        let deadline = started + self.split.max_wait(priority);
        let result = self.admit_until(priority, deadline).await;
        let waited = started.elapsed();
        let outcome = match &result {
            Err(_) => "refused",
            Ok(true) => "waited",
            Ok(false) => "immediate",
        };
        self.metrics.wechat_budget_admissions.with_label_values(&[priority.as_str(), outcome]).inc();
        if outcome != "immediate" {
            self.metrics
                .wechat_budget_wait_seconds
                .with_label_values(&[priority.as_str()])
                .inc_by(waited.as_secs_f64());
        }
        // Debug only: a flood of user calls would otherwise write a line per refusal (the metric
        // counts them, and the API logs each answer once).
        if let Err(busy) = &result {
            tracing::debug!(priority = %priority, retry_after_ms = busy.retry_after.as_millis(), "WeChat call budget spent; call refused");
        }
        result.map(|_| ())
    }

    /// Returns whether it had to wait.
    async fn admit_until(&self, priority: Priority, deadline: Instant) -> Result<bool, Busy> {
        let mut waited = false;
        if priority == Priority::User {
            waited |= self.local(&self.user, &self.gates.user, priority, deadline).await?.0;
        }
        // One line per priority at the total: a settling call never queues behind user calls
        // (those are already held to their share by the user limiter).
        let gate = match priority {
            Priority::User => &self.gates.total_user,
            Priority::Settling => &self.gates.total_settling,
        };
        let (waited_total, turn) = self.local(&self.total, gate, priority, deadline).await?;
        waited |= waited_total;
        if let Some(shared) = &self.shared {
            // Still this line's turn: the next caller waits for this one's shared slot too, so
            // waiting for the next second is also served in arrival order.
            waited |= self.acquire_shared(shared, priority, deadline).await?;
        }
        drop(turn);
        Ok(waited)
    }

    /// One cell of a local limiter, waiting for it while it can come before `deadline`.
    /// Waiters take turns in arrival order (`gate`, a fair mutex: only the head of the line polls
    /// the limiter), so under sustained demand a caller cannot lose the race for every cell to
    /// later arrivals until its deadline passes: it waits for those ahead of it, no more.
    /// Returns whether it had to wait, and the turn (the caller may hold it a little longer).
    async fn local<'g>(
        &self,
        limiter: &DefaultDirectRateLimiter,
        gate: &'g tokio::sync::Mutex<()>,
        priority: Priority,
        deadline: Instant,
    ) -> Result<(bool, tokio::sync::MutexGuard<'g, ()>), Busy> {
        let started = Instant::now();
        let mut waited = false;
        let turn = match gate.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                waited = true;
                match tokio::time::timeout_at(deadline.into(), gate.lock()).await {
                    Ok(turn) => turn,
                    // Too many ahead to be served in time; how long they take is not known here.
                    Err(_) => return Err(Busy { priority, retry_after: QUEUE_RETRY }),
                }
            }
        };
        loop {
            let now = Instant::now();
            let wait = match limiter.check() {
                Ok(()) => break,
                Err(not_until) => not_until.wait_time_from(now),
            };
            if now + wait > deadline {
                return Err(Busy { priority, retry_after: wait });
            }
            waited = true;
            tokio::time::sleep(wait).await;
        }
        if waited {
            self.record_wait("local", started);
        }
        Ok((waited, turn))
    }

    fn record_wait(&self, scope: &str, since: Instant) {
        self.metrics.rate_limit_waits.with_label_values(&[scope]).inc();
        self.metrics.rate_limit_wait_seconds.inc_by(since.elapsed().as_secs_f64());
    }

    /// Takes one slot of the current second's shared budget: a user call first takes one of
    /// that second's user counter (so a flood of refused user calls never touches the total that
    /// settling work counts on), then one of the same second's total. While either is spent it
    /// waits for the next second and starts over (a user slot is only good for its own second:
    /// kept across the wait, two seconds of user calls could go out in one), up to `deadline`.
    /// Returns whether it had to wait.
    async fn acquire_shared(&self, shared: &Shared, priority: Priority, deadline: Instant) -> Result<bool, Busy> {
        let started = Instant::now();
        let mut waited = false;
        loop {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let second = now.as_secs();
            let mut admitted = true;
            if priority == Priority::User {
                let Some(users) = self.count(shared, &format!("{}:user:{second}", shared.key_prefix)).await else {
                    return Ok(waited);
                };
                admitted = users <= u64::from(self.user_per_sec);
            }
            if admitted {
                let Some(total) = self.count(shared, &format!("{}:{second}", shared.key_prefix)).await else {
                    return Ok(waited);
                };
                admitted = total <= u64::from(self.per_sec);
            }
            if admitted {
                if waited {
                    self.record_wait("shared", started);
                }
                return Ok(waited);
            }
            // Sleep to the next second, plus a little jitter so replicas do not stampede.
            let to_next = Duration::from_secs(1).saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
            let jitter = Duration::from_millis(rand::random::<u64>() % 20);
            if Instant::now() + to_next > deadline {
                return Err(Busy { priority, retry_after: to_next.max(Duration::from_secs(1)) });
            }
            waited = true;
            tokio::time::sleep(to_next + jitter).await;
        }
    }

    /// Counts one call under `key` (a per-second counter kept 5 s); `None` when Redis cannot
    /// answer in time (the shared check is then skipped, logged).
    async fn count(&self, shared: &Shared, key: &str) -> Option<u64> {
        let mut conn = shared.conn.clone();
        let counted = tokio::time::timeout(
            SHARED_TIMEOUT,
            redis::pipe().atomic().incr(key, 1).expire(key, 5).ignore().query_async::<(u64,)>(&mut conn),
        )
        .await;
        match counted {
            Ok(Ok((count,))) => Some(count),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "shared WeChat rate limit unavailable; using the local limit only");
                None
            }
            Err(_) => {
                tracing::warn!("shared WeChat rate limit timed out; using the local limit only");
                None
            }
        }
    }
}

/// The `outcome` label of `wxpay_wechat_budget_admissions_total`.
const ADMISSION_OUTCOMES: [&str; 3] = ["immediate", "waited", "refused"];

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_sec: u32, share: u8, user_wait_ms: u64) -> RateLimiter {
        let split = BudgetSplit {
            user_share_percent: share,
            user_max_wait: Duration::from_millis(user_wait_ms),
            settling_max_wait: Duration::from_secs(5),
        };
        RateLimiter::with_split(per_sec, split, Metrics::new()).unwrap()
    }

    #[test]
    fn the_user_share_is_at_least_one_call_and_at_most_the_budget() {
        let split = |p| BudgetSplit { user_share_percent: p, ..BudgetSplit::default() };
        assert_eq!(split(60).user_per_sec(100), 60);
        assert_eq!(split(1).user_per_sec(10), 1);
        assert_eq!(split(100).user_per_sec(7), 7);
        assert_eq!(split(200).user_per_sec(7), 7);
    }

    #[tokio::test]
    async fn user_calls_beyond_their_share_are_refused_fast_and_settling_calls_still_pass() {
        let budget = limiter(20, 50, 0);
        for _ in 0..10 {
            budget.admit(Priority::User).await.unwrap();
        }
        let started = Instant::now();
        let busy = budget.admit(Priority::User).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(50), "refused without waiting");
        assert_eq!(busy.priority, Priority::User);
        assert!(busy.retry_after > Duration::ZERO && busy.retry_after <= Duration::from_millis(100), "{busy:?}");
        // The other half of the burst is still there for settling work, at once.
        let started = Instant::now();
        for _ in 0..10 {
            budget.admit(Priority::Settling).await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_millis(50), "{:?}", started.elapsed());
        let refused = budget.metrics.wechat_budget_admissions.with_label_values(&["user", "refused"]).get();
        assert_eq!(refused, 1);
    }

    #[tokio::test]
    async fn settling_calls_wait_for_the_budget_instead_of_failing() {
        let budget = limiter(10, 50, 0);
        for _ in 0..10 {
            budget.admit(Priority::Settling).await.unwrap();
        }
        let started = Instant::now();
        budget.admit(Priority::Settling).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(60) && waited < Duration::from_millis(500), "{waited:?}");
        // The total is spent, so a user call cannot pass either, even within its share.
        assert!(budget.admit(Priority::User).await.is_err());
        assert_eq!(budget.metrics.wechat_budget_admissions.with_label_values(&["settling", "waited"]).get(), 1);
    }

    /// 16 callers asking without pause for 60 cells/s: each one waits for those ahead of it
    /// (about 16/60 s), never its whole bound, so none is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_sustained_demand_waiters_are_served_in_turn_not_starved() {
        let budget = limiter(100, 60, 1_000);
        let until = Instant::now() + Duration::from_millis(1_500);
        let callers = (0..16).map(|_| {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                while Instant::now() < until {
                    refused += usize::from(budget.admit(Priority::User).await.is_err());
                }
                refused
            })
        });
        let refused: usize = futures::future::join_all(callers).await.into_iter().map(Result::unwrap).sum();
        assert_eq!(refused, 0);
    }

    #[tokio::test]
    async fn a_user_call_waits_up_to_its_bound() {
        let budget = limiter(10, 50, 400);
        for _ in 0..5 {
            budget.admit(Priority::User).await.unwrap();
        }
        // Next user cell in 200 ms (5/s): within the 400 ms bound.
        let started = Instant::now();
        budget.admit(Priority::User).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn over_a_second_user_calls_get_their_share_and_settling_the_rest() {
        let budget = limiter(40, 25, 2_000);
        let deadline = Instant::now() + Duration::from_millis(1_000);
        let user = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    if budget.admit(Priority::User).await.is_ok() && Instant::now() < deadline {
                        n += 1;
                    }
                }
                n
            })
        };
        let mut settling = 0;
        while Instant::now() < deadline {
            if budget.admit(Priority::Settling).await.is_ok() && Instant::now() < deadline {
                settling += 1;
            }
        }
        let user = user.await.unwrap();
        // Bursts: 10 user + 40 total at the start, then 10/s user and 40/s in all.
        assert!(user <= 21, "user calls kept to their share: {user}");
        assert!(settling >= 50, "settling calls get the rest: {settling} (user {user})");
    }
}
