//! The live set of WeChat keys we verify with: the configured keys, which never change while
//! the process runs, plus the platform certificates downloaded from WeChat, which do (WeChat
//! rotates its certificate and signs with the new one from a date of its choosing).
//!
//! Readers take an immutable snapshot (one `Arc` clone under a read lock), so a refresh swaps
//! the whole set at once: a verification sees the old set or the new one, never half of each.
//! Downloaded certificates are merged by serial, never dropped: the old certificate keeps
//! verifying the notifications WeChat signed before the switch until it expires, and two
//! refreshes (a reload from the database, a download) give the same set in either order.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, watch};

use super::certificate::PlatformCertificate;
use super::verify::{PlatformKeys, SignedHeaders, VerifyError, is_certificate_serial};

/// The live key set; cheap to clone (clones share it).
#[derive(Clone)]
pub struct KeyRing(Arc<Inner>);

struct Inner {
    configured: PlatformKeys,
    state: RwLock<State>,
    /// The last list downloaded from WeChat by this process (to be saved for restarts and for
    /// the other replicas).
    fetched: watch::Sender<Option<Fetched>>,
    /// When the last on-demand refresh started; held while one runs, so concurrent callers
    /// wait for it instead of asking WeChat again.
    on_demand: Mutex<Option<Instant>>,
}

/// A certificate list as WeChat answered it, and when.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub certificates: Arc<[PlatformCertificate]>,
    pub at: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    keys: Arc<PlatformKeys>,
    downloaded: Arc<[PlatformCertificate]>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("keys", &self.snapshot()).finish()
    }
}

impl Default for KeyRing {
    fn default() -> Self {
        Self::new(PlatformKeys::default())
    }
}

impl From<PlatformKeys> for KeyRing {
    fn from(keys: PlatformKeys) -> Self {
        Self::new(keys)
    }
}

impl KeyRing {
    pub fn new(configured: PlatformKeys) -> Self {
        let state = State { keys: Arc::new(configured.clone()), downloaded: Arc::from(Vec::new()) };
        KeyRing(Arc::new(Inner {
            configured,
            state: RwLock::new(state),
            fetched: watch::Sender::new(None),
            on_demand: Mutex::new(None),
        }))
    }

    /// The keys as they are now.
    pub fn snapshot(&self) -> Arc<PlatformKeys> {
        Arc::clone(&self.0.state.read().unwrap_or_else(PoisonError::into_inner).keys)
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Certificate mode: some key is a platform certificate, so WeChat's list must be followed.
    /// A merchant on WeChat Pay public keys only never calls `/v3/certificates`.
    pub fn certificate_mode(&self) -> bool {
        self.snapshot().has_certificates()
    }

    /// Whether the configuration itself names a platform certificate (not only downloads).
    pub fn configured_certificates(&self) -> bool {
        self.0.configured.has_certificates()
    }

    pub fn preferred_serial(&self, now: DateTime<Utc>) -> Option<String> {
        self.snapshot().preferred_serial(now).map(str::to_owned)
    }

    pub fn verify(
        &self,
        headers: &SignedHeaders<'_>,
        body: &[u8],
        now_unix: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        self.snapshot().verify(headers, body, now_unix, tolerance_secs)
    }

    /// Sees every list this process downloads from WeChat.
    pub fn subscribe(&self) -> watch::Receiver<Option<Fetched>> {
        self.0.fetched.subscribe()
    }

    /// Installs a list just downloaded from WeChat and announces it to [`Self::subscribe`]rs.
    pub fn install_fetched(&self, certificates: Vec<PlatformCertificate>, at: DateTime<Utc>) -> bool {
        let changed = self.install(certificates.iter().cloned());
        self.0.fetched.send_replace(Some(Fetched { certificates: Arc::from(certificates), at }));
        changed
    }

    /// Merges `certificates` into the downloaded set (same serial: the new copy wins) and swaps
    /// the key set. Returns whether anything changed.
    pub fn install(&self, certificates: impl IntoIterator<Item = PlatformCertificate>) -> bool {
        let mut state = self.0.state.write().unwrap_or_else(PoisonError::into_inner);
        let mut merged: Vec<PlatformCertificate> = state.downloaded.to_vec();
        let mut changed = false;
        for cert in certificates {
            match merged.iter_mut().find(|known| known.serial.eq_ignore_ascii_case(&cert.serial)) {
                Some(known) if *known == cert => {}
                Some(known) => {
                    *known = cert;
                    changed = true;
                }
                None => {
                    merged.push(cert);
                    changed = true;
                }
            }
        }
        if !changed {
            return false;
        }
        merged.sort_by(|a, b| (a.not_before, &a.serial).cmp(&(b.not_before, &b.serial)));
        let mut keys = self.0.configured.clone();
        for cert in &merged {
            // A configured key of the same serial stays: configuration is the operator's word.
            if !keys.contains(&cert.serial) {
                keys.insert_certificate(cert);
            }
        }
        *state = State { keys: Arc::new(keys), downloaded: Arc::from(merged) };
        true
    }

    /// Without waiting: could [`Self::refresh_on_demand`] teach us `serial` now? Only a
    /// certificate serial in certificate mode, and only while a download runs or one may start
    /// (the minute since the last one has passed). Lets a caller skip all work for a made-up
    /// serial the rest of the time.
    pub fn refresh_may_help(&self, serial: &str, min_interval: Duration) -> bool {
        if !is_certificate_serial(serial) || !self.certificate_mode() {
            return false;
        }
        match self.0.on_demand.try_lock() {
            Ok(last) => last.is_none_or(|started| started.elapsed() >= min_interval),
            Err(_) => true,
        }
    }

    /// Called when a signature names `serial` and we do not know it. In certificate mode, a
    /// hex serial may be WeChat's new certificate: download the list (`fetch`) at most once per
    /// `min_interval` per process, whoever asks, and say whether the serial is known now.
    /// Concurrent callers wait for the download in progress rather than starting another; a
    /// made-up serial therefore costs WeChat one call a minute at most.
    pub async fn refresh_on_demand<F, Fut, E>(
        &self,
        serial: &str,
        min_interval: Duration,
        now: DateTime<Utc>,
        fetch: F,
    ) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<PlatformCertificate>, E>>,
        E: std::fmt::Display,
    {
        if !is_certificate_serial(serial) || !self.certificate_mode() {
            return false;
        }
        let mut last = self.0.on_demand.lock().await;
        if self.snapshot().contains(serial) {
            return true;
        }
        if last.is_some_and(|started| started.elapsed() < min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match fetch().await {
            Ok(certificates) => {
                if self.install_fetched(certificates, now) {
                    tracing::info!(serial, "platform certificates refreshed for an unknown serial");
                }
                let known = self.snapshot().contains(serial);
                if !known {
                    tracing::warn!(serial, "a signature names a serial WeChat's certificate list does not have");
                }
                known
            }
            Err(err) => {
                tracing::warn!(serial, error = %err, "could not refresh the platform certificates");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::Duration as Span;

    use super::*;
    use crate::sim::certificates::issue;
    use crate::wechat::testkeys;
    use crate::wechat::verify::SIGNTEST_PREFIX;

    fn cert(not_before: DateTime<Utc>, days: i64) -> (PlatformCertificate, crate::wechat::sign::RsaSigner) {
        let issued = issue(not_before, not_before + Span::days(days)).expect("issue");
        (PlatformCertificate::from_pem(&issued.pem).expect("parse"), issued.signer)
    }

    fn signed<'a>(serial: &'a str, ts: &'a str, signature: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            timestamp: Some(ts),
            nonce: Some("n"),
            signature: Some(signature),
            serial: Some(serial),
            signature_type: None,
        }
    }

    #[test]
    fn the_newest_valid_certificate_is_named_unless_a_public_key_is_held_and_expired_ones_do_not_verify() {
        let now = Utc::now();
        let (old, old_signer) = cert(now - Span::days(400), 365); // expired a month ago
        let (current, _) = cert(now - Span::days(10), 365);
        let (next, _) = cert(now + Span::days(3), 365); // listed, not in effect yet
        let ring = KeyRing::default();
        assert!(!ring.certificate_mode());
        assert!(ring.install([old.clone(), current.clone(), next.clone()]));
        assert!(!ring.install([current.clone()]), "nothing new");
        assert!(ring.certificate_mode());
        assert_eq!(ring.preferred_serial(now).as_deref(), Some(current.serial.as_str()));
        assert_eq!(ring.snapshot().newest_certificate_expiry(now), Some(current.not_after));
        assert_eq!(ring.preferred_serial(now + Span::days(4)).as_deref(), Some(next.serial.as_str()));

        let ts = now.timestamp().to_string();
        let message = crate::wechat::sign::response_message(&ts, "n", b"{}");
        let signature = old_signer.sign(&message).expect("sign");
        assert_eq!(
            ring.verify(&signed(&old.serial, &ts, &signature), b"{}", now.timestamp(), 300),
            Err(VerifyError::KeyNotValid(old.serial.clone()))
        );
        let probe = format!("{SIGNTEST_PREFIX}AAAA");
        assert_eq!(
            ring.verify(&signed(&current.serial, &ts, &probe), b"{}", now.timestamp(), 300),
            Err(VerifyError::SignatureProbe)
        );

        let mut configured = PlatformKeys::default();
        configured.insert("PUB_KEY_ID_0000000000000024101100397200000006", testkeys::k1_signer().public_key());
        let both = KeyRing::new(configured);
        both.install([current.clone()]);
        assert_eq!(
            both.preferred_serial(now).as_deref(),
            Some("PUB_KEY_ID_0000000000000024101100397200000006"),
            "a public key does not expire: it is named first"
        );
    }

    #[tokio::test]
    async fn an_unknown_serial_downloads_once_for_every_caller_and_at_most_once_a_minute() {
        let now = Utc::now();
        let (current, _) = cert(now - Span::days(1), 365);
        let (rotated, _) = cert(now, 365);
        let ring = KeyRing::default();
        let downloads = AtomicUsize::new(0);
        let fetch = || async {
            downloads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, String>(vec![current.clone(), rotated.clone()])
        };
        let minute = Duration::from_secs(60);
        assert!(!ring.refresh_on_demand(&rotated.serial, minute, now, fetch).await, "public-key mode: no download");
        assert_eq!(downloads.load(Ordering::SeqCst), 0);

        ring.install([current.clone()]);
        let mut fetched = ring.subscribe();
        let callers = (0..5).map(|_| ring.refresh_on_demand(&rotated.serial, minute, now, fetch));
        assert!(futures::future::join_all(callers).await.into_iter().all(|known| known));
        assert_eq!(downloads.load(Ordering::SeqCst), 1, "five callers, one download");
        assert!(fetched.has_changed().expect("sender alive"), "the download is announced for saving");
        assert_eq!(fetched.borrow_and_update().as_ref().map(|f| f.certificates.len()), Some(2));

        assert!(!ring.refresh_may_help("ABCDEF0123", minute), "within the minute: skip all work");
        assert!(!ring.refresh_may_help("PUB_KEY_ID_0001", Duration::ZERO), "public keys are never downloaded");
        assert!(ring.refresh_may_help("ABCDEF0123", Duration::ZERO));
        assert!(!ring.refresh_on_demand("ABCDEF0123", minute, now, fetch).await);
        assert!(!ring.refresh_on_demand("ABCDEF0123", minute, now, fetch).await);
        assert_eq!(downloads.load(Ordering::SeqCst), 1, "a made-up serial costs nothing within the minute");
        assert!(!ring.refresh_on_demand("PUB_KEY_ID_0001", Duration::ZERO, now, fetch).await);
        assert!(!ring.refresh_on_demand("00000", Duration::ZERO, now, fetch).await);
        assert_eq!(downloads.load(Ordering::SeqCst), 2, "the minute elapsed (zero here): one more download");
    }
}
