//! The connection cap of a listener, and who makes room when it is reached.
//!
//! A plain semaphore would let 2,000 slowloris connections hold every slot until the header
//! timeout cuts them, refusing WeChat's notification meanwhile; and so would 4,000 connections
//! that each send one quick request and then sit idle between requests. So a connection counts
//! as *busy* only while a request is in flight on it (from its complete head to the end of its
//! answer); otherwise it is *evictable*. When the cap is reached a new connection takes the slot
//! of, in this order:
//!
//! 1. the oldest connection that never delivered a complete request head (trickling bytes, or
//!    connected and silent): it has cost us nothing yet and is the likeliest attacker;
//! 2. the connection idle (keep-alive, between requests) for the longest time. The proxy's
//!    upstream pool reuses its most recently used connections first (nginx's keepalive cache is
//!    LIFO), so the longest-idle one is the least likely to carry the proxy's next request; if it
//!    does, that request races the close, which is the usual keep-alive race the proxy handles.
//!
//! Only when every open connection has a request in flight is the new one refused. A client
//! that sends its request at once (WeChat, the proxy) is busy within microseconds of being
//! accepted. The header timeout still bounds how long any connection stays idle.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The open connections of one listener.
#[derive(Debug)]
pub struct Slots {
    cap: usize,
    inner: Mutex<Inner>,
    /// Ticks once per finished request: orders idle connections by when they became idle.
    idle_clock: AtomicU64,
    /// Fires whenever the last connection closes (for a drain at shutdown).
    empty: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Every open connection by acceptance order, so the first header-less one is the oldest.
    open: BTreeMap<u64, Arc<Shared>>,
}

/// A connection's state (`Shared::state`). Changed with compare-and-swap, so a request that
/// starts on a connection being evicted either makes it busy first (and the eviction picks
/// another) or finds it evicted.
const FRESH: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;
const EVICTED: u8 = 3;

#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    /// `Slots::idle_clock` when it last became idle.
    idle_since: AtomicU64,
    evict: CancellationToken,
}

impl Shared {
    /// Claims this connection for eviction if it is still in state `from`.
    fn try_evict(&self, from: u8) -> bool {
        let claimed = self.state.compare_exchange(from, EVICTED, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if claimed {
            self.evict.cancel();
        }
        claimed
    }
}

/// What [`Slots::acquire`] did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// There was room.
    Free,
    /// An evictable connection (see the module doc for which) was cut to make room.
    Evicted,
}

/// One open connection's slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    shared: Arc<Shared>,
    slots: Arc<Slots>,
}

/// A request in flight on a connection: the connection is busy until this is dropped (the
/// server drops it once the answer's body is written, or when the request is abandoned).
#[derive(Debug)]
pub struct InFlight {
    shared: Arc<Shared>,
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
            idle_clock: AtomicU64::new(0),
            empty: Notify::new(),
        })
    }

    /// A slot for a new connection, evicting an evictable one at the cap; `None` when every
    /// open connection has a request in flight (the new one must be closed).
    pub fn acquire(self: &Arc<Self>) -> Option<(Slot, Admission)> {
        let mut inner = self.lock();
        let mut admission = Admission::Free;
        if inner.open.len() >= self.cap {
            let victim = Self::evict_one(&inner)?;
            inner.open.remove(&victim);
            admission = Admission::Evicted;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let shared = Arc::new(Shared::default());
        inner.open.insert(id, Arc::clone(&shared));
        Some((Slot { id, shared, slots: Arc::clone(self) }, admission))
    }

    /// Evicts the oldest header-less connection, else the longest-idle one; returns its id.
    fn evict_one(inner: &Inner) -> Option<u64> {
        let header_less = inner.open.iter().filter(|(_, c)| c.state.load(Ordering::Acquire) == FRESH);
        for (id, conn) in header_less {
            if conn.try_evict(FRESH) {
                return Some(*id);
            }
        }
        let mut idle: Vec<(u64, u64)> = inner
            .open
            .iter()
            .filter(|(_, c)| c.state.load(Ordering::Acquire) == IDLE)
            .map(|(id, c)| (c.idle_since.load(Ordering::Acquire), *id))
            .collect();
        idle.sort_unstable();
        idle.into_iter().map(|(_, id)| id).find(|id| inner.open.get(id).is_some_and(|c| c.try_evict(IDLE)))
    }

    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Returns once no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.empty.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the map consistent (each step is one call).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Slot {
    /// The connection delivered a complete request head: it is busy until the returned guard
    /// is dropped. On a connection already evicted it stays evicted (it is being closed).
    pub fn request_started(&self) -> InFlight {
        let _ = self.shared.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s != EVICTED).then_some(BUSY));
        InFlight { shared: Arc::clone(&self.shared), slots: Arc::clone(&self.slots) }
    }

    /// Fires when a newer connection took this slot.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shared.evict.cancelled()
    }

    pub fn is_evicted(&self) -> bool {
        self.shared.evict.is_cancelled()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let tick = self.slots.idle_clock.fetch_add(1, Ordering::AcqRel);
        self.shared.idle_since.store(tick, Ordering::Release);
        // Unless it was evicted meanwhile (the race in `Shared::state`'s doc).
        let _ = self.shared.state.compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        // An evicted slot was already removed (and its id is never reused).
        inner.open.remove(&self.id);
        if inner.open.is_empty() {
            self.slots.empty.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_connection_without_a_request_makes_room() {
        let slots = Slots::new(2);
        let (first, _) = slots.acquire().expect("room");
        let (second, _) = slots.acquire().expect("room");
        let _first_busy = first.request_started();
        let (third, admission) = slots.acquire().expect("second is evictable");
        assert_eq!(admission, Admission::Evicted);
        assert!(second.is_evicted() && !first.is_evicted());
        assert_eq!(slots.open(), 2);
        let _third_busy = third.request_started();
        assert!(slots.acquire().is_none(), "every connection is busy: the new one is refused");
        drop(second);
        assert_eq!(slots.open(), 2, "an evicted slot was already released");
        drop(first);
        assert!(slots.acquire().is_some());
    }

    #[test]
    fn idle_keep_alive_connections_make_room_after_header_less_ones_longest_idle_first() {
        let slots = Slots::new(3);
        let (a, _) = slots.acquire().expect("room");
        let (b, _) = slots.acquire().expect("room");
        let (c, _) = slots.acquire().expect("room");
        // b answers a request, then a: both idle, b for longer. c never sends a head.
        drop(b.request_started());
        drop(a.request_started());
        let (d, admission) = slots.acquire().expect("c is header-less");
        assert_eq!(admission, Admission::Evicted);
        assert!(c.is_evicted() && !a.is_evicted() && !b.is_evicted(), "header-less first");
        let _d_busy = d.request_started();
        let (e, _) = slots.acquire().expect("b is idle");
        assert!(b.is_evicted() && !a.is_evicted(), "then the longest idle");
        let _e_busy = e.request_started();
        // A connection with a request in flight is not evicted; once answered, it is again.
        let busy = a.request_started();
        assert!(slots.acquire().is_none(), "every connection has a request in flight");
        assert!(!a.is_evicted());
        drop(busy);
        assert!(slots.acquire().is_some(), "a is idle again");
        assert!(a.is_evicted());
    }
}
