//! The connection cap of a listener, and who makes room when it is reached.
//!
//! A plain semaphore would let 2,000 slowloris connections hold every slot until the header
//! timeout cuts them, refusing WeChat's notification meanwhile. Here a connection that has not
//! yet delivered a complete request head (it is trickling bytes, or idle) is *evictable*: when
//! the cap is reached, a new connection takes the slot of the oldest evictable one. Only when
//! every open connection is busy answering a request is the new one refused. A client that
//! sends its request at once (WeChat, the proxy) is busy within microseconds of being accepted.
//!
//! A connection stays busy after its first request, idle keep-alive included: evicting idle
//! keep-alive connections would hit the proxy's upstream pool first (its oldest connections), and
//! a POST the proxy sends on a connection we just cut is answered 502, not retried. Those are
//! bounded by the header timeout instead, which restarts after each answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The open connections of one listener.
#[derive(Debug)]
pub struct Slots {
    cap: usize,
    inner: Mutex<Inner>,
    /// Fires whenever the last connection closes (for a drain at shutdown).
    empty: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Every open connection by acceptance order, so the first evictable one is the oldest.
    open: BTreeMap<u64, Arc<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Set once a request head has been read: from then on the connection is not evicted
    /// (keep-alive idleness is bounded by the header timeout instead).
    busy: AtomicBool,
    evict: CancellationToken,
}

/// What [`Slots::acquire`] did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// There was room.
    Free,
    /// The oldest connection without a complete request head was cut to make room.
    Evicted,
}

/// One open connection's slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    shared: Arc<Shared>,
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self { cap: cap.max(1), inner: Mutex::new(Inner::default()), empty: Notify::new() })
    }

    /// A slot for a new connection, evicting an idle one at the cap; `None` when every open
    /// connection is busy (the new one must be closed).
    pub fn acquire(self: &Arc<Self>) -> Option<(Slot, Admission)> {
        let mut inner = self.lock();
        let mut admission = Admission::Free;
        if inner.open.len() >= self.cap {
            let victim = inner.open.iter().find(|(_, c)| !c.busy.load(Ordering::Acquire)).map(|(id, _)| *id)?;
            if let Some(victim) = inner.open.remove(&victim) {
                victim.evict.cancel();
            }
            admission = Admission::Evicted;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let shared = Arc::new(Shared::default());
        inner.open.insert(id, Arc::clone(&shared));
        Some((Slot { id, shared, slots: Arc::clone(self) }, admission))
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
    /// The connection delivered a request head: it is doing real work now.
    pub fn mark_busy(&self) {
        self.shared.busy.store(true, Ordering::Release);
    }

    /// Fires when a newer connection took this slot.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shared.evict.cancelled()
    }

    pub fn is_evicted(&self) -> bool {
        self.shared.evict.is_cancelled()
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
        first.mark_busy();
        let (third, admission) = slots.acquire().expect("second is evictable");
        assert_eq!(admission, Admission::Evicted);
        assert!(second.is_evicted() && !first.is_evicted());
        assert_eq!(slots.open(), 2);
        third.mark_busy();
        assert!(slots.acquire().is_none(), "every connection is busy: the new one is refused");
        drop(second);
        assert_eq!(slots.open(), 2, "an evicted slot was already released");
        drop(first);
        assert!(slots.acquire().is_some());
    }
}
