//! The connection cap of a listener, and who makes room when it is reached.
//!
//! A plain semaphore would let 2,000 slowloris connections hold every slot until the header
//! timeout cuts them, refusing WeChat's notification meanwhile; and so would 4,000 connections
//! that each send one quick request and then sit idle between requests, or thousands that send a
//! head and then trickle its body. So a connection counts as *busy* only while a request is being
//! handled on it (from its buffered body, or its head when it has no body, to the end of its
//! answer); otherwise it is *evictable*. When the cap is reached a new connection takes the slot
//! of, in this order:
//!
//! 1. the oldest connection that never delivered a complete request head (trickling bytes, or
//!    connected and silent): it has cost us nothing yet and is the likeliest attacker;
//! 2. the connection that has been *reading* a request body the longest (head complete, body not
//!    yet buffered, see [`super::body`]): WeChat's ~1 KiB notification and the proxy's requests
//!    arrive whole within milliseconds, so the oldest one still reading is a slow client, whose
//!    request was never started;
//! 3. the connection idle (keep-alive, between requests) for the longest time, **and only if it
//!    has been idle at least [`IDLE_EVICTION_FLOOR`] (1 s)**. Evicting an idle upstream connection
//!    races the proxy reusing it, and nginx does not retry a POST that failed on a reused
//!    connection (`proxy_next_upstream` lacks `non_idempotent` by default): the order or
//!    notification it carried would become a 502. The floor does not remove that race, it makes
//!    it rare: nginx's keepalive cache is LIFO, so a connection unused for a second is the least
//!    likely to be picked next. A connection idle for less than that is treated as busy.
//!
//! Only when no connection is evictable is the new one refused. A client that sends its request
//! at once (WeChat, the proxy) is busy within microseconds of being accepted. The header timeout
//! still bounds how long any connection stays idle, and `server.body_read_timeout_ms` how long
//! one stays reading. Finding the victim is one pass over the open connections (no sorting).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a keep-alive connection must have been idle before it may be evicted (see the module
/// doc, point 3).
pub const IDLE_EVICTION_FLOOR: Duration = Duration::from_secs(1);

/// The open connections of one listener.
#[derive(Debug)]
pub struct Slots {
    cap: usize,
    idle_floor: Duration,
    inner: Mutex<Inner>,
    /// The origin of `Shared::since`.
    epoch: Instant,
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
/// starts (or finishes reading its body) on a connection being evicted either changes its state
/// first (and the eviction picks another) or finds it evicted.
const FRESH: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;
const EVICTED: u8 = 3;
/// Head complete, body not yet buffered.
const READING: u8 = 4;

#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    /// Nanoseconds from `Slots::epoch` to when it last became READING or IDLE.
    since: AtomicU64,
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

    /// Moves from one of `from` to `to`; an evicted connection stays evicted.
    fn switch(&self, from: &[u8], to: u8) {
        let _ = self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| from.contains(&s).then_some(to));
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

/// A request on a connection: the connection is reading (evictable) or busy until this is
/// dropped (the server drops it once the answer's body is written, or when the request is
/// abandoned).
#[derive(Debug)]
pub struct InFlight {
    shared: Arc<Shared>,
    slots: Arc<Slots>,
}

/// Put in the request's extensions by the server: [`ReadingBody::done`] marks the connection busy
/// once the request's body is buffered ([`super::body::read_first`]).
#[derive(Debug, Clone)]
pub struct ReadingBody {
    shared: Arc<Shared>,
}

impl ReadingBody {
    /// The body is buffered (or will not be read): the request is now being handled, and its
    /// connection is no longer evictable.
    pub fn done(&self) {
        self.shared.switch(&[READING], BUSY);
    }
}

/// The candidates of one pass over the open connections.
#[derive(Default)]
struct Candidates {
    fresh: Option<u64>,
    /// (since, id) of the oldest READING.
    reading: Option<(u64, u64)>,
    /// (since, id) of the longest IDLE past the floor.
    idle: Option<(u64, u64)>,
}

impl Slots {
    pub fn new(cap: usize) -> Arc<Self> {
        Self::with_idle_floor(cap, IDLE_EVICTION_FLOOR)
    }

    /// With another floor than [`IDLE_EVICTION_FLOOR`] (tests).
    pub fn with_idle_floor(cap: usize, idle_floor: Duration) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            idle_floor,
            inner: Mutex::new(Inner::default()),
            epoch: Instant::now(),
            empty: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A slot for a new connection, evicting an evictable one at the cap; `None` when no open
    /// connection is evictable (the new one must be closed).
    pub fn acquire(self: &Arc<Self>) -> Option<(Slot, Admission)> {
        let mut inner = self.lock();
        let mut admission = Admission::Free;
        if inner.open.len() >= self.cap {
            let victim = self.evict_one(&inner)?;
            inner.open.remove(&victim);
            admission = Admission::Evicted;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let shared = Arc::new(Shared::default());
        inner.open.insert(id, Arc::clone(&shared));
        Some((Slot { id, shared, slots: Arc::clone(self) }, admission))
    }

    /// Evicts the oldest header-less connection, else the one reading its body the longest, else
    /// the longest idle past the floor; returns its id. One pass over the connections per try; a
    /// candidate whose state changed meanwhile (its compare-and-swap fails) means another pass.
    fn evict_one(&self, inner: &Inner) -> Option<u64> {
        let idle_before = self.now().saturating_sub(u64::try_from(self.idle_floor.as_nanos()).unwrap_or(u64::MAX));
        for _ in 0..3 {
            let mut found = Candidates::default();
            for (&id, conn) in &inner.open {
                let older = |best: Option<(u64, u64)>, since: u64| best.is_none_or(|(b, _)| since < b);
                match conn.state.load(Ordering::Acquire) {
                    FRESH if found.fresh.is_none() => found.fresh = Some(id),
                    READING => {
                        let since = conn.since.load(Ordering::Acquire);
                        if older(found.reading, since) {
                            found.reading = Some((since, id));
                        }
                    }
                    IDLE => {
                        let since = conn.since.load(Ordering::Acquire);
                        if since <= idle_before && older(found.idle, since) {
                            found.idle = Some((since, id));
                        }
                    }
                    _ => {}
                }
            }
            let tries = [
                (found.fresh, FRESH),
                (found.reading.map(|(_, id)| id), READING),
                (found.idle.map(|(_, id)| id), IDLE),
            ];
            let mut any = false;
            for (id, from) in tries {
                let Some(id) = id else { continue };
                any = true;
                if inner.open.get(&id).is_some_and(|c| c.try_evict(from)) {
                    return Some(id);
                }
            }
            if !any {
                return None;
            }
        }
        None
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
    /// The connection delivered a complete request head: it is reading the body (still
    /// evictable, after header-less ones) until [`ReadingBody::done`] makes it busy, or busy at once
    /// when `has_body` is false; busy until the returned guard is dropped. On a connection
    /// already evicted it stays evicted (it is being closed).
    pub fn request_started(&self, has_body: bool) -> (InFlight, ReadingBody) {
        self.shared.since.store(self.slots.now(), Ordering::Release);
        self.shared.switch(&[FRESH, IDLE], if has_body { READING } else { BUSY });
        (
            InFlight { shared: Arc::clone(&self.shared), slots: Arc::clone(&self.slots) },
            ReadingBody { shared: Arc::clone(&self.shared) },
        )
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
        self.shared.since.store(self.slots.now(), Ordering::Release);
        // Unless it was evicted meanwhile (the race in `Shared::state`'s doc).
        self.shared.switch(&[BUSY, READING], IDLE);
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

    /// Makes the connection idle (one request without a body answered).
    fn answer_one(slot: &Slot) {
        drop(slot.request_started(false));
        // Distinct `since` values, so "longest idle" is well defined.
        std::thread::sleep(Duration::from_millis(2));
    }

    #[test]
    fn at_the_cap_the_oldest_connection_without_a_request_makes_room() {
        let slots = Slots::new(2);
        let (first, _) = slots.acquire().expect("room");
        let (second, _) = slots.acquire().expect("room");
        let _first_busy = first.request_started(false);
        let (third, admission) = slots.acquire().expect("second is evictable");
        assert_eq!(admission, Admission::Evicted);
        assert!(second.is_evicted() && !first.is_evicted());
        assert_eq!(slots.open(), 2);
        let _third_busy = third.request_started(false);
        assert!(slots.acquire().is_none(), "every connection is busy: the new one is refused");
        drop(second);
        assert_eq!(slots.open(), 2, "an evicted slot was already released");
        drop(first);
        assert!(slots.acquire().is_some());
    }

    #[test]
    fn idle_keep_alive_connections_make_room_after_header_less_ones_longest_idle_first() {
        let slots = Slots::with_idle_floor(3, Duration::ZERO);
        let (a, _) = slots.acquire().expect("room");
        let (b, _) = slots.acquire().expect("room");
        let (c, _) = slots.acquire().expect("room");
        // b answers a request, then a: both idle, b for longer. c never sends a head.
        answer_one(&b);
        answer_one(&a);
        let (d, admission) = slots.acquire().expect("c is header-less");
        assert_eq!(admission, Admission::Evicted);
        assert!(c.is_evicted() && !a.is_evicted() && !b.is_evicted(), "header-less first");
        let _d_busy = d.request_started(false);
        let (e, _) = slots.acquire().expect("b is idle");
        assert!(b.is_evicted() && !a.is_evicted(), "then the longest idle");
        let _e_busy = e.request_started(false);
        // A connection with a request in flight is not evicted; once answered, it is again.
        let busy = a.request_started(false);
        assert!(slots.acquire().is_none(), "every connection has a request in flight");
        assert!(!a.is_evicted());
        drop(busy);
        assert!(slots.acquire().is_some(), "a is idle again");
        assert!(a.is_evicted());
    }

    #[test]
    fn connections_reading_a_body_make_room_after_header_less_ones_and_before_idle_ones() {
        let slots = Slots::with_idle_floor(4, Duration::ZERO);
        let (idle, _) = slots.acquire().expect("room");
        let (older, _) = slots.acquire().expect("room");
        let (newer, _) = slots.acquire().expect("room");
        let (fresh, _) = slots.acquire().expect("room");
        answer_one(&idle);
        let (_older_request, _) = older.request_started(true);
        std::thread::sleep(Duration::from_millis(2));
        let (_newer_request, newer_body) = newer.request_started(true);
        let (e, _) = slots.acquire().expect("fresh is header-less");
        assert!(fresh.is_evicted() && !older.is_evicted());
        let _e_busy = e.request_started(false);
        let (f, _) = slots.acquire().expect("older is reading");
        assert!(older.is_evicted() && !newer.is_evicted() && !idle.is_evicted(), "the oldest reader first");
        let _f_busy = f.request_started(false);
        // Once its body is buffered, a request is busy: the idle connection goes instead.
        newer_body.done();
        let (g, _) = slots.acquire().expect("idle is idle");
        assert!(idle.is_evicted() && !newer.is_evicted());
        let _g_busy = g.request_started(false);
        assert!(slots.acquire().is_none(), "every connection is busy");
    }

    #[test]
    fn a_connection_idle_for_less_than_the_floor_is_not_evicted() {
        let slots = Slots::new(1);
        let (a, _) = slots.acquire().expect("room");
        answer_one(&a);
        assert!(slots.acquire().is_none(), "idle for less than {IDLE_EVICTION_FLOOR:?}");
        assert!(!a.is_evicted());

        let slots = Slots::with_idle_floor(1, Duration::from_millis(50));
        let (b, _) = slots.acquire().expect("room");
        answer_one(&b);
        assert!(slots.acquire().is_none(), "idle for less than 50 ms");
        std::thread::sleep(Duration::from_millis(60));
        assert!(slots.acquire().is_some(), "idle past the floor");
        assert!(b.is_evicted());
    }
}
