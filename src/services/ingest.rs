//! Notification ingest: verify the platform signature over the raw bytes and the timestamp
//! window, decrypt the resource, store it durably in the inbox, and only then acknowledge.
//! The worker applies it from the inbox in batches; the handler only signals that an entry is
//! waiting (see `inbox_signal`).
//! Every rejection is counted, logged (no secrets) and recorded for later explanation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::storage::Db;
use crate::storage::inbox::{NewInboxRow, Rejection};
use crate::telemetry::metrics::Metrics;
use crate::wechat::verify::{SignedHeaders, VerifyError};
use crate::wechat::{Credentials, PayClient, notification};

use super::inbox_signal::InboxSignal;
use super::inbox_writer::{InboxWriter, WriteError};

/// Rejection reason when the inbox could not be written.
const STORAGE_UNAVAILABLE: &str = "storage_unavailable";
/// Rejection reason when the body could not be read (too large, cut off).
pub const BODY_UNREADABLE: &str = "body_unreadable";

/// Bodies of rejected notifications kept for explanation are cut at this size.
const EXCERPT_BYTES: usize = 4096;

/// How a notification was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// First delivery of this notification id.
    New,
    /// A notification id we already hold (WeChat retried or duplicated it).
    Duplicate,
}

/// Why a notification was answered with a failure.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Not acceptable as sent; WeChat's retry may succeed (e.g. after a key is configured).
    #[error("{reason}: {detail}")]
    Rejected { reason: &'static str, detail: String },
    /// We could not make it durable: FAIL, so WeChat retries.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Longest a notification waits for a certificate download when it names a serial we do not
/// know (WeChat waits 5 s for our answer; a FAIL makes it deliver again 15 s later).
const CERTIFICATE_REFRESH_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct NotifyIngest {
    creds: Arc<Credentials>,
    /// Downloads WeChat's certificate list when a notification is signed with a new one.
    pay: PayClient,
    clock: Clock,
    tolerance_secs: i64,
    writer: InboxWriter,
    signal: InboxSignal,
    db: Db,
    metrics: Metrics,
}

impl NotifyIngest {
    #[expect(clippy::too_many_arguments, reason = "each is a distinct collaborator wired once at start-up")]
    pub fn new(
        creds: Arc<Credentials>,
        pay: PayClient,
        clock: Clock,
        tolerance_secs: i64,
        writer: InboxWriter,
        signal: InboxSignal,
        db: Db,
        metrics: Metrics,
    ) -> Self {
        let reasons = VerifyError::REASONS.iter().chain(notification::REFUSAL_REASONS);
        for reason in reasons.chain(&[STORAGE_UNAVAILABLE, BODY_UNREADABLE]) {
            let _ = metrics.notify_rejected.with_label_values(&[reason]);
        }
        for kind in ["new", "duplicate"] {
            let _ = metrics.notify_accepted.with_label_values(&[kind]);
        }
        Self { creds, pay, clock, tolerance_secs, writer, signal, db, metrics }
    }

    pub async fn ingest(&self, headers: &SignedHeaders<'_>, body: &[u8]) -> Result<Stored, IngestError> {
        let started = Instant::now();
        self.metrics.notify_received.inc();
        let result = self.ingest_inner(headers, body).await;
        self.metrics.notify_ingest_duration.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(Stored::New) => self.metrics.notify_accepted.with_label_values(&["new"]).inc(),
            Ok(Stored::Duplicate) => self.metrics.notify_accepted.with_label_values(&["duplicate"]).inc(),
            Err(IngestError::Rejected { reason, detail }) => {
                self.metrics.notify_rejected.with_label_values(&[reason]).inc();
                tracing::warn!(notify.reason = reason, notify.detail = %detail, notify.serial = headers.serial.unwrap_or(""), "notification rejected");
                self.record_rejection(reason, detail, headers, body).await;
            }
            Err(IngestError::Unavailable(detail)) => {
                self.metrics.notify_rejected.with_label_values(&[STORAGE_UNAVAILABLE]).inc();
                tracing::error!(notify.detail = %detail, "notification not stored: answering FAIL so WeChat retries");
            }
        }
        result
    }

    async fn ingest_inner(&self, headers: &SignedHeaders<'_>, body: &[u8]) -> Result<Stored, IngestError> {
        let reject = |reason: &'static str, detail: String| IngestError::Rejected { reason, detail };
        self.verify(headers, body).await.map_err(|e| reject(e.reason(), e.to_string()))?;
        let raw_body = std::str::from_utf8(body).map_err(|_| reject("malformed_body", "body is not UTF-8".into()))?;
        let opened = notification::open(&self.creds.apiv3_key, raw_body).map_err(|e| reject(e.reason, e.detail))?;
        let row = NewInboxRow {
            notification_id: opened.id.clone(),
            event_type: opened.event_type.clone(),
            resource_type: opened.resource_type,
            summary: opened.summary,
            create_time: opened.create_time,
            serial: headers.serial.unwrap_or_default().to_owned(),
            wechat_timestamp: headers.timestamp.unwrap_or_default().to_owned(),
            wechat_nonce: headers.nonce.unwrap_or_default().to_owned(),
            signature: headers.signature.unwrap_or_default().to_owned(),
            raw_body: raw_body.to_owned(),
            resource_json: opened.resource_json,
            out_trade_no: opened.out_trade_no,
            received_at_ms: self.clock.now_ms(),
        };
        let stored = self.writer.write(row).await.map_err(|e| match e {
            WriteError::Unavailable(m) | WriteError::Failed(m) => IngestError::Unavailable(m),
            WriteError::Stopped => IngestError::Unavailable("inbox writer stopped".into()),
        })?;
        if stored.first_delivery && !stored.processed {
            self.signal.entry_stored();
        }
        tracing::debug!(notify.id = %opened.id, notify.event_type = %opened.event_type, first = stored.first_delivery, "notification stored");
        Ok(if stored.first_delivery { Stored::New } else { Stored::Duplicate })
    }

    /// Checks the signature; a certificate serial we do not know may be WeChat's new
    /// certificate, so the list is downloaded (at most once a minute, waited on briefly) and the
    /// signature checked again.
    async fn verify(&self, headers: &SignedHeaders<'_>, body: &[u8]) -> Result<(), VerifyError> {
        let keys = &self.creds.platform_keys;
        let verify = || keys.verify(headers, body, self.clock.now().timestamp(), self.tolerance_secs);
        match verify() {
            Err(VerifyError::UnknownSerial(serial))
                if keys.refresh_may_help(&serial, crate::wechat::client::ON_DEMAND_REFRESH_INTERVAL) =>
            {
                // Its own task: a download outliving our wait still installs what it found.
                let (pay, wanted) = (self.pay.clone(), serial.clone());
                let refresh = tokio::spawn(async move { pay.refresh_on_demand(&wanted).await });
                let refreshed = matches!(tokio::time::timeout(CERTIFICATE_REFRESH_WAIT, refresh).await, Ok(Ok(true)));
                if refreshed { verify() } else { Err(VerifyError::UnknownSerial(serial)) }
            }
            other => other,
        }
    }

    async fn record_rejection(&self, reason: &str, detail: &str, headers: &SignedHeaders<'_>, body: &[u8]) {
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES)]).into_owned();
        let notification_id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
        let rejection = Rejection {
            reason,
            detail,
            serial: headers.serial,
            notification_id: notification_id.as_deref(),
            body_sha256: &hex::encode(Sha256::digest(body)),
            body_excerpt: &excerpt,
            now_ms: self.clock.now_ms(),
        };
        if let Err(err) = self.db.insert_rejection(&rejection).await {
            tracing::warn!(error = %err, "could not record the rejected notification (counted in metrics only)");
        }
    }
}
