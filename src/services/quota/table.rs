//! The key table behind one keyed quota: `governor`'s GCRA state (one theoretical arrival time
//! per key) in a map that never holds more than `max_keys` keys.
//!
//! When the map is full, a key it does not hold is answered as a fresh key would be (allowed,
//! its burst untouched) and not stored: the quota fails *open* for new keys. Failing closed
//! would let anyone who can fill the table (random login codes, rotating IPv6 /64s) refuse
//! every genuine client; failing open costs only the per-key limit for keys that arrive while
//! the flood lasts, and the global login rate (`quotas.login_calls_per_sec`) still bounds what
//! reaches WeChat. Keys already held keep being limited. Such unchecked passes are counted.

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
    tats: Mutex<HashMap<K, u64>>,
    max_keys: usize,
    /// Checks of new keys let through unrecorded because the table was full, since start
    /// (shared with the quota: the rate limiter owns this table and does not lend it out).
    unchecked: Arc<AtomicU64>,
}

impl<K> BoundedTable<K> {
    pub(super) fn new(max_keys: usize, unchecked: Arc<AtomicU64>) -> Self {
        Self { tats: Mutex::new(HashMap::new()), max_keys, unchecked }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, u64>> {
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
        let known = tats.get(key).copied();
        // 0 is governor's "never measured", as in its own stores.
        let (outcome, tat) = f(known.filter(|&t| t != 0).map(Nanos::from))?;
        if known.is_some() || tats.len() < self.max_keys {
            tats.insert(key.clone(), tat.as_u64());
        } else {
            self.unchecked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedTable<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.lock().retain(|_, tat| *tat > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.lock().shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
