//! The retry policy every job shares: exponential backoff with full jitter, a cap, a larger
//! ceiling when WeChat says "slow down", and a dead-letter decision after the last attempt.
//! Pure: the random draw is passed in, so the schedule is unit-testable without I/O.

use std::time::Duration;

use crate::config::WorkerSettings;

/// Multiplier on the backoff ceiling after FREQUENCY_LIMITED / 429.
const RATE_LIMIT_FACTOR: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// This job failed in a way that may pass later (a 5xx, a timeout).
    Transient,
    /// WeChat asked us to slow down.
    RateLimited,
    /// Our own database or queue is unreachable: not the job's fault, so it is delayed but
    /// never dead-lettered (the outage is alerted on by itself).
    Infrastructure,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RetryAfter(Duration),
    Dead,
}

impl RetryPolicy {
    pub fn from_settings(settings: &WorkerSettings) -> Self {
        Self {
            max_attempts: settings.max_attempts,
            base: Duration::from_millis(settings.backoff_base_ms),
            cap: Duration::from_millis(settings.backoff_cap_ms),
        }
    }

    /// The ceiling of the delay after `attempt` (1-based) failed: base * 2^(attempt-1), capped.
    pub fn ceiling(&self, attempt: u32, rate_limited: bool) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let mut ceiling = self.base.saturating_mul(1u32 << exp);
        if rate_limited {
            ceiling = ceiling.saturating_mul(RATE_LIMIT_FACTOR);
        }
        ceiling.min(self.cap)
    }

    /// `unit` is a uniform draw in [0, 1): full jitter picks the delay uniformly below the
    /// ceiling, which spreads retries of many jobs that failed together. Rate-limited retries
    /// wait at least `base`.
    pub fn decide(&self, attempt: u32, failure: Failure, unit: f64) -> Decision {
        let rate_limited = failure == Failure::RateLimited;
        if attempt >= self.max_attempts && failure != Failure::Infrastructure {
            return Decision::Dead;
        }
        let ceiling = self.ceiling(attempt.min(self.max_attempts), rate_limited);
        let mut delay = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        if rate_limited {
            delay = delay.max(self.base.min(self.cap));
        }
        Decision::RetryAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 5, base: Duration::from_secs(1), cap: Duration::from_secs(10) }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=6).map(|a| p.ceiling(a, false).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(p.ceiling(2, true), Duration::from_secs(8));
        assert_eq!(p.ceiling(40, false), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_stays_below_the_ceiling() {
        let p = policy();
        assert_eq!(p.decide(3, Failure::Transient, 0.0), Decision::RetryAfter(Duration::ZERO));
        assert_eq!(p.decide(3, Failure::Transient, 0.5), Decision::RetryAfter(Duration::from_secs(2)));
        assert_eq!(p.decide(1, Failure::RateLimited, 0.0), Decision::RetryAfter(Duration::from_secs(1)));
    }

    #[test]
    fn last_attempt_is_dead() {
        let p = policy();
        assert!(matches!(p.decide(4, Failure::Transient, 0.3), Decision::RetryAfter(_)));
        assert_eq!(p.decide(5, Failure::Transient, 0.3), Decision::Dead);
        assert_eq!(p.decide(5, Failure::RateLimited, 0.3), Decision::Dead);
    }

    #[test]
    fn infrastructure_outages_delay_but_never_kill() {
        let p = policy();
        assert_eq!(p.decide(50, Failure::Infrastructure, 0.5), Decision::RetryAfter(Duration::from_secs(5)));
    }
}
