//! The key table behind one keyed quota: `governor`'s GCRA state (one theoretical arrival time
//! per key) in a map that never holds more than `max_keys` keys.
//!
//! When the map is full, a key it does not hold is charged to one shared *overflow* key, and
//! not stored. Refusing every new key (failing closed) would let anyone who can fill the table
//! (random login codes, rotating IPv6 /64s) lock every genuine client out; letting them through
//! overflowed (failing open) would let the same flood spend the global login rate
//! (`quotas.login_calls_per_sec`) and lock everyone out there instead. Sharing one key's quota
//! bounds what the flood gets to that of one client while it lasts; keys already held keep
//! their own limits. Such overflow checks are counted.
//!
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

/// Theoretical arrival times (ns since the limiter started) by key, at most `max_keys` of them.
#[derive(Debug)]
pub(super) struct BoundedTable<K> {
    tats: Mutex<Tats<K>>,
    max_keys: usize,
    /// Checks of new keys charged to the overflow key because the table was full, since start
    /// (shared with the quota: the rate limiter owns this table and does not lend it out).
    overflowed: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Tats<K> {
    by_key: HashMap<K, u64>,
    /// The shared key of everything that arrives while `by_key` is full (0: never measured).
    overflow: u64,
}

impl<K> BoundedTable<K> {
    pub(super) fn new(max_keys: usize, overflowed: Arc<AtomicU64>) -> Self {
        Self { tats: Mutex::new(Tats { by_key: HashMap::new(), overflow: 0 }), max_keys, overflowed }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tats<K>> {
        // The map holds plain numbers: a panic while it was locked cannot leave it inconsistent.
        self.tats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedTable<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut tats = self.lock();
        let known = tats.by_key.get(key).copied();
        // 0 is governor's "never measured", as in its own stores.
        let measured = |tat: u64| Some(tat).filter(|&t| t != 0).map(Nanos::from);
        if known.is_some() || tats.by_key.len() < self.max_keys {
            let (outcome, tat) = f(known.and_then(measured))?;
            tats.by_key.insert(key.clone(), tat.as_u64());
            return Ok(outcome);
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        let (outcome, tat) = f(measured(tats.overflow))?;
        tats.overflow = tat.as_u64();
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedTable<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.lock().by_key.retain(|_, tat| *tat > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.lock().by_key.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    fn is_empty(&self) -> bool {
        self.lock().by_key.is_empty()
    }
}
