//! A bounded sample of rejected notifications, for explaining rejections later.
//!
//! The notify endpoint is anonymous: anyone can send junk that fails before the signature is
//! checked. Every rejection is counted (`wxpay_notify_rejected_total{reason}`), but storing and
//! logging each one would let an attacker fill the disk and, on the embedded profile, hold the
//! single SQLite writer in front of WeChat's genuine notifications. So a rejection is only
//! *offered* here:
//! - a rate limiter (`notify.rejection_samples_per_sec`) decides, before any work (no hashing,
//!   no copying), whether this one is sampled; the same decision gates its log line;
//! - a sample is cut to bounded fields ([`FIELD_BYTES`], [`EXCERPT_BYTES`]) and queued on a
//!   bounded channel, dropped (and counted) when the channel is full, never waited on;
//! - one background task writes the queue in small batches, at most one short transaction per
//!   [`GATHER`], pruning the table to `notify.rejection_max_rows` in the same transaction.
//!
//! Rejections after a *valid* signature (a resource we cannot decrypt or parse) can only come
//! from WeChat, so they skip the rate limiter; they still take the bounded queue.
//!
//! Must not: block the caller, or store or log an attacker-supplied value uncut.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::NotifySettings;
use crate::storage::Db;
use crate::storage::inbox::Rejection;
use crate::telemetry::metrics::Metrics;
use crate::wechat::verify::SignedHeaders;

/// Longest serial, detail or notification id kept (bytes): a real serial is 40 hex digits or a
/// 43-character `PUB_KEY_ID_…`, a notification id 36 characters.
pub const FIELD_BYTES: usize = 256;
/// Longest body excerpt kept (bytes). Resources are encrypted, so the envelope's first KiB
/// (id, event type, resource metadata) is all an operator can read anyway.
pub const EXCERPT_BYTES: usize = 1024;
/// Samples waiting for the writer at most; more are dropped and counted `queue_full`.
const QUEUE: usize = 256;
/// Rows one write stores at most.
const MAX_BATCH: usize = 64;
/// Pause between two writes: the writer takes the database at most this often, whatever the
/// rate of rejections (samples arriving meanwhile go into the next batch).
const GATHER: Duration = Duration::from_millis(200);
/// Bodies larger than this are not parsed for their notification id (the excerpt remains).
const ID_PARSE_LIMIT: usize = 16 * 1024;

/// Where a rejection came from: anyone, or WeChat (its signature checked out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Rejected before a valid signature: anyone on the internet can produce it.
    Anonymous,
    /// Rejected after a valid signature: only WeChat can produce it, so it is always kept.
    Signed,
}

/// One rejection, as the caller knows it.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    pub provenance: Provenance,
    pub reason: &'static str,
    pub detail: &'a str,
    pub headers: &'a SignedHeaders<'a>,
    pub body: &'a [u8],
    pub now_ms: i64,
}

/// Decides which rejections are kept and hands them to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct RejectionSampler {
    limiter: Arc<DefaultDirectRateLimiter>,
    queue: mpsc::Sender<Rejection>,
    metrics: Metrics,
}

impl std::fmt::Debug for RejectionSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RejectionSampler")
    }
}

impl RejectionSampler {
    /// A sampler and the task that writes its samples to `notify_rejections` (spawned here;
    /// it ends when the last clone of the sampler is dropped).
    pub fn spawn(db: Db, settings: &NotifySettings, metrics: Metrics) -> Self {
        let (sampler, queue) = Self::new(settings.rejection_samples_per_sec, metrics.clone());
        tokio::spawn(write_samples(db, queue, settings.rejection_max_rows, metrics));
        sampler
    }

    /// A sampler admitting `per_sec` anonymous rejections a second (burst of as many), and the
    /// receiving end of its queue.
    pub fn new(per_sec: u32, metrics: Metrics) -> (Self, mpsc::Receiver<Rejection>) {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let (queue, rx) = mpsc::channel(QUEUE);
        let limiter = Arc::new(DefaultDirectRateLimiter::direct(Quota::per_second(per_sec)));
        (Self { limiter, queue, metrics }, rx)
    }

    /// Offers a rejection; returns whether it was sampled (queued for storage), which is also
    /// whether the caller may log it. Never waits.
    pub fn offer(&self, offer: &Offer<'_>) -> bool {
        let outcome = |o: &str| self.metrics.notify_rejection_samples.with_label_values(&[o]).inc();
        if offer.provenance == Provenance::Anonymous && self.limiter.check().is_err() {
            outcome("rate_limited");
            return false;
        }
        match self.queue.try_send(sample(offer)) {
            Ok(()) => true,
            Err(_) => {
                outcome("queue_full");
                false
            }
        }
    }
}

/// The stored form of a rejection: every attacker-supplied field cut to a bounded size.
pub fn sample(offer: &Offer<'_>) -> Rejection {
    let body = offer.body;
    let notification_id = (body.len() <= ID_PARSE_LIMIT)
        .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
        .flatten()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(|id| truncate(id, FIELD_BYTES)));
    Rejection {
        reason: offer.reason,
        detail: truncate(offer.detail, FIELD_BYTES),
        serial: offer.headers.serial.map(|s| truncate(s, FIELD_BYTES)),
        notification_id,
        body_sha256: hex::encode(Sha256::digest(body)),
        body_excerpt: truncate(&String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES)]), EXCERPT_BYTES),
        received_at_ms: offer.now_ms,
    }
}

/// `text` cut to at most `max` bytes, on a character boundary, marked with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    const MARK: &str = "…";
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// The writer task: a batch at a time, one transaction each, at most one per [`GATHER`].
async fn write_samples(db: Db, mut queue: mpsc::Receiver<Rejection>, max_rows: u32, metrics: Metrics) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let rows = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        match db.insert_rejections(&batch, max_rows).await {
            Ok(pruned) => {
                metrics.notify_rejection_samples.with_label_values(&["stored"]).inc_by(rows);
                metrics.notify_rejections_pruned.inc_by(pruned);
            }
            Err(err) => {
                metrics.notify_rejection_samples.with_label_values(&["write_failed"]).inc_by(rows);
                tracing::warn!(error = %err, rows, "could not store rejected-notification samples (counted in metrics only)");
            }
        }
        batch.clear();
        tokio::time::sleep(GATHER).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(serial: &str) -> SignedHeaders<'_> {
        SignedHeaders {
            timestamp: Some("1"),
            nonce: Some("n"),
            signature: Some("s"),
            serial: Some(serial),
            signature_type: None,
        }
    }

    #[test]
    fn every_stored_field_is_cut() {
        let serial = "S".repeat(400 * 1024);
        let detail = format!("no verification key for serial {serial:?}");
        let body = format!("{{\"id\":\"{}\",\"pad\":\"{}\"}}", "i".repeat(1000), "x".repeat(10_000));
        let headers = headers(&serial);
        let offer = Offer {
            provenance: Provenance::Anonymous,
            reason: "unknown_serial",
            detail: &detail,
            headers: &headers,
            body: body.as_bytes(),
            now_ms: 7,
        };
        let row = sample(&offer);
        assert!(row.serial.as_ref().unwrap().len() <= FIELD_BYTES);
        assert!(row.detail.len() <= FIELD_BYTES);
        assert!(row.notification_id.as_ref().unwrap().len() <= FIELD_BYTES);
        assert!(row.body_excerpt.len() <= EXCERPT_BYTES);
        assert_eq!(row.body_sha256, hex::encode(Sha256::digest(body.as_bytes())));
        assert_eq!((row.reason, row.received_at_ms), ("unknown_serial", 7));
    }

    #[test]
    fn truncation_keeps_short_text_and_respects_character_boundaries() {
        assert_eq!(truncate("abc", 3), "abc");
        let cut = truncate(&"支付".repeat(100), 10);
        assert!(cut.len() <= 10 && cut.ends_with('…'), "{cut}");
        assert_eq!(truncate("", 0), "");
    }

    #[tokio::test]
    async fn anonymous_rejections_are_sampled_at_the_configured_rate_and_signed_ones_always() {
        let metrics = Metrics::new();
        let (sampler, mut rx) = RejectionSampler::new(5, metrics.clone());
        let headers = headers("SERIAL");
        let offer = |provenance| Offer {
            provenance,
            reason: "bad_signature",
            detail: "d",
            headers: &headers,
            body: b"{}",
            now_ms: 0,
        };
        let sampled = (0..100).filter(|_| sampler.offer(&offer(Provenance::Anonymous))).count();
        assert_eq!(sampled, 5, "the burst is the per-second rate");
        assert!(sampler.offer(&offer(Provenance::Signed)), "signed rejections skip the limiter");
        let rate_limited = metrics.notify_rejection_samples.with_label_values(&["rate_limited"]).get();
        assert_eq!(rate_limited, 95);
        let mut queued = Vec::new();
        rx.recv_many(&mut queued, 1000).await;
        assert_eq!(queued.len(), 6);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Metrics::new();
        let (sampler, _rx) = RejectionSampler::new(1, metrics.clone());
        let headers = headers("SERIAL");
        let offer = Offer {
            provenance: Provenance::Signed,
            reason: "decrypt_failed",
            detail: "d",
            headers: &headers,
            body: b"",
            now_ms: 0,
        };
        let kept = (0..QUEUE + 10).filter(|_| sampler.offer(&offer)).count();
        assert_eq!(kept, QUEUE);
        assert_eq!(metrics.notify_rejection_samples.with_label_values(&["queue_full"]).get(), 10);
    }
}
