//! Notification ingest: verify the platform signature over the raw bytes and the timestamp
//! window, decrypt the resource, store it durably in the inbox, and only then acknowledge.
//! The worker applies it from the inbox in batches; the handler only signals that an entry is
//! waiting (see `inbox_signal`).
//! Every rejection is counted; a rate-limited sample of them is logged and recorded for later
//! explanation (`rejection_sampler`), so anonymous junk costs one counter increment.
//!
//! Hostile input must cost the attacker more than us: headers no real WeChat notification
//! carries (oversized, a timestamp that is not digits) are refused before any key lookup,
//! certificate download or RSA.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::storage::inbox::NewInboxRow;
use crate::telemetry::metrics::Metrics;
use crate::wechat::verify::{SignedHeaders, VerifyError};
use crate::wechat::{Credentials, PayClient, notification};

use super::inbox_signal::InboxSignal;
use super::inbox_writer::{InboxWriter, WriteError};
use super::rejection_sampler::{FIELD_BYTES, Offer, Provenance, RejectionSampler, truncate};

/// Rejection reason when the inbox could not be written.
const STORAGE_UNAVAILABLE: &str = "storage_unavailable";
/// Rejection reason when the body could not be read (too large, cut off).
pub const BODY_UNREADABLE: &str = "body_unreadable";

/// Rejection reason for a header longer than any WeChat sends (refused before any other check).
pub const OVERSIZED_HEADER: &str = "oversized_header";

/// Longest `Wechatpay-Serial` accepted: a certificate serial is 40 hex digits, a public key id
/// `PUB_KEY_ID_` + 32 digits.
const MAX_SERIAL: usize = 64;
/// Longest `Wechatpay-Signature`: base64 of an RSA-4096 signature is 684 characters, plus
/// WeChat's `WECHATPAY/SIGNTEST/` probe prefix.
const MAX_SIGNATURE: usize = 720;
/// Longest `Wechatpay-Nonce` (WeChat sends 32 characters) and `Wechatpay-Signature-Type`.
const MAX_NONCE: usize = 64;
/// Longest `Wechatpay-Timestamp`: Unix seconds, digits only (i64::MAX has 19).
const MAX_TIMESTAMP: usize = 19;

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
    /// `detail` may quote the sender's headers: cut it before logging (the sampler does).
    #[error("{reason}: {detail}")]
    Rejected { reason: &'static str, detail: String, provenance: Provenance },
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
    rejections: RejectionSampler,
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
        rejections: RejectionSampler,
        metrics: Metrics,
    ) -> Self {
        let reasons = VerifyError::REASONS.iter().chain(notification::REFUSAL_REASONS);
        for reason in reasons.chain(&[STORAGE_UNAVAILABLE, BODY_UNREADABLE, OVERSIZED_HEADER]) {
            let _ = metrics.notify_rejected.with_label_values(&[reason]);
        }
        for kind in ["new", "duplicate"] {
            let _ = metrics.notify_accepted.with_label_values(&[kind]);
        }
        Self { creds, pay, clock, tolerance_secs, writer, signal, rejections, metrics }
    }

    pub async fn ingest(&self, headers: &SignedHeaders<'_>, body: &[u8]) -> Result<Stored, IngestError> {
        let started = Instant::now();
        self.metrics.notify_received.inc();
        let result = self.ingest_inner(headers, body).await;
        self.metrics.notify_ingest_duration.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(Stored::New) => self.metrics.notify_accepted.with_label_values(&["new"]).inc(),
            Ok(Stored::Duplicate) => self.metrics.notify_accepted.with_label_values(&["duplicate"]).inc(),
            Err(IngestError::Rejected { reason, detail, provenance }) => {
                self.metrics.notify_rejected.with_label_values(&[reason]).inc();
                let offer =
                    Offer { provenance: *provenance, reason, detail, headers, body, now_ms: self.clock.now_ms() };
                // Logged only when sampled: wxpay_notify_rejected_total counts every one.
                if self.rejections.offer(&offer) {
                    tracing::warn!(
                        notify.reason = reason,
                        notify.detail = %truncate(detail, FIELD_BYTES),
                        notify.serial = %truncate(headers.serial.unwrap_or(""), FIELD_BYTES),
                        "notification rejected"
                    );
                }
            }
            Err(IngestError::Unavailable(detail)) => {
                self.metrics.notify_rejected.with_label_values(&[STORAGE_UNAVAILABLE]).inc();
                tracing::error!(notify.detail = %detail, "notification not stored: answering FAIL so WeChat retries");
            }
        }
        result
    }

    async fn ingest_inner(&self, headers: &SignedHeaders<'_>, body: &[u8]) -> Result<Stored, IngestError> {
        let anonymous = |reason: &'static str, detail: String| IngestError::Rejected {
            reason,
            detail,
            provenance: Provenance::Anonymous,
        };
        precheck(headers).map_err(|e| anonymous(e.reason(), e.to_string()))?;
        self.verify(headers, body).await.map_err(|e| anonymous(e.reason(), e.to_string()))?;
        let reject = |reason: &'static str, detail: String| IngestError::Rejected {
            reason,
            detail,
            provenance: Provenance::Signed,
        };
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
}

/// Why [`precheck`] refused a notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecheckError {
    #[error("header {header} is {len} bytes, longer than WeChat ever sends ({max})")]
    Oversized { header: &'static str, len: usize, max: usize },
    #[error("timestamp is not a number of seconds")]
    Timestamp,
}

impl PrecheckError {
    fn reason(&self) -> &'static str {
        match self {
            PrecheckError::Oversized { .. } => OVERSIZED_HEADER,
            // The label verify uses for the same fault.
            PrecheckError::Timestamp => "stale_timestamp",
        }
    }
}

/// Refuses, without touching keys, what no WeChat notification looks like: a header longer
/// than WeChat's longest, or a timestamp that is not plain digits (no sign, no spaces; which
/// also keeps negative extremes such as `i64::MIN` away from any arithmetic). Missing
/// headers are left to verify, which names them.
pub fn precheck(headers: &SignedHeaders<'_>) -> Result<(), PrecheckError> {
    let limits = [
        ("Wechatpay-Serial", headers.serial, MAX_SERIAL),
        ("Wechatpay-Signature", headers.signature, MAX_SIGNATURE),
        ("Wechatpay-Nonce", headers.nonce, MAX_NONCE),
        ("Wechatpay-Signature-Type", headers.signature_type, MAX_NONCE),
        ("Wechatpay-Timestamp", headers.timestamp, MAX_TIMESTAMP),
    ];
    for (header, value, max) in limits {
        if let Some(len) = value.map(str::len).filter(|len| *len > max) {
            return Err(PrecheckError::Oversized { header, len, max });
        }
    }
    if headers.timestamp.is_some_and(|ts| ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit())) {
        return Err(PrecheckError::Timestamp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(serial: &'a str, signature: &'a str, timestamp: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            timestamp: Some(timestamp),
            nonce: Some("s7iEF4nIgzBQiKesvPiPEV25HyedzQGO"),
            signature: Some(signature),
            serial: Some(serial),
            signature_type: Some("WECHATPAY2-SHA256-RSA2048"),
        }
    }

    #[test]
    fn real_headers_pass_the_precheck() {
        let signature = format!("WECHATPAY/SIGNTEST/{}", "A".repeat(684));
        assert_eq!(
            precheck(&headers("PUB_KEY_ID_0114232134912410000000000000000000", &signature, "1700000000")),
            Ok(())
        );
        assert_eq!(precheck(&headers(&"5157F09EFDC096DE15EBE81A47057A72".repeat(2), "abc=", "0")), Ok(()));
        let none = SignedHeaders { timestamp: None, nonce: None, signature: None, serial: None, signature_type: None };
        assert_eq!(precheck(&none), Ok(()), "missing headers are verify's to name");
    }

    #[test]
    fn oversized_headers_and_odd_timestamps_are_refused_before_any_key_work() {
        let huge = "S".repeat(400 * 1024);
        let refused = |h: SignedHeaders<'_>| precheck(&h).map_err(|e| e.reason());
        assert_eq!(refused(headers(&huge, "abc=", "1")), Err(OVERSIZED_HEADER));
        assert_eq!(refused(headers("SERIAL", &huge, "1")), Err(OVERSIZED_HEADER));
        assert_eq!(refused(headers("SERIAL", "abc=", "99999999999999999999")), Err(OVERSIZED_HEADER));
        for ts in ["-922337203685477580", "-1", " 1700000000", "+1", "1e9", ""] {
            assert_eq!(refused(headers("SERIAL", "abc=", ts)), Err("stale_timestamp"), "{ts:?}");
        }
        assert_eq!(refused(headers("SERIAL", "abc=", "9223372036854775807")), Ok(()), "verify judges the window");
    }
}
