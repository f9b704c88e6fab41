//! The wake-up from the notify handler to the batch applier when both run in one process.
//!
//! Notifications are applied straight from the inbox table, so no job is queued per
//! notification: the handler only signals that a new entry was committed, and a sleeping
//! applier claims it at once. Across processes (an API-only replica) there is no signal; the
//! applier's poll (`apply.poll_interval_ms`) bounds the delay instead. A lost signal costs at
//! most one poll interval, never an entry.

use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug, Clone, Default)]
pub struct InboxSignal(Arc<Notify>);

impl InboxSignal {
    /// A new entry is durable. Wakes one waiting applier, or the next one to wait.
    pub fn entry_stored(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next [`Self::entry_stored`] (or at once if one came while nobody waited).
    pub async fn wait(&self) {
        self.0.notified().await;
    }
}
