//! Following WeChat's platform certificates while the service runs: the saved list is loaded
//! at start (a restart needs no call to WeChat), every process re-reads it regularly (what
//! another replica downloaded), one replica at a time (a lease) downloads WeChat's list every
//! `platform_certificates.refresh_interval_secs`, and every list a process downloads (including
//! the on-demand downloads for an unknown serial) is saved. The expiry metrics come from here.
//!
//! Nothing happens with WeChat when no certificate is in use: a merchant on WeChat Pay public
//! keys only may not even be allowed to call `/v3/certificates`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::PlatformCertificateSettings;
use crate::storage::certificates::StoredCertificate;
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;
use crate::wechat::PayClient;
use crate::wechat::certificate::PlatformCertificate;
use crate::wechat::keyring::{Fetched, KeyRing};

/// The lease of the scheduled download (one replica at a time).
pub const LEASE: &str = "platform-certificates";

/// Loads the saved certificates into `ring`; returns how many were read.
pub async fn load_saved(db: &Db, ring: &KeyRing) -> Result<usize, StorageError> {
    let saved = db.platform_certificates().await?;
    install_saved(ring, &saved);
    Ok(saved.len())
}

/// Installs saved rows. A saved PEM that no longer parses is skipped with a warning (the next
/// download replaces it).
fn install_saved(ring: &KeyRing, saved: &[StoredCertificate]) {
    ring.install(saved.iter().filter_map(|row| match PlatformCertificate::from_pem(&row.pem) {
        Ok(cert) => Some(cert),
        Err(err) => {
            tracing::warn!(serial = %row.serial, error = %err, "a saved platform certificate does not parse; skipped");
            None
        }
    }));
}

/// Saves a downloaded list (each row stamped with when WeChat listed it).
pub async fn save(db: &Db, fetched: &Fetched) -> Result<(), StorageError> {
    let at_ms = fetched.at.timestamp_millis();
    let rows: Vec<StoredCertificate> = fetched
        .certificates
        .iter()
        .map(|cert| StoredCertificate {
            serial: cert.serial.clone(),
            pem: cert.pem.clone(),
            not_before_ms: cert.not_before.timestamp_millis(),
            not_after_ms: cert.not_after.timestamp_millis(),
            fetched_at_ms: at_ms,
        })
        .collect();
    db.save_platform_certificates(&rows).await
}

/// The background loop of one process.
#[derive(Debug, Clone)]
pub struct CertificateKeeper {
    pub db: Db,
    pub pay: PayClient,
    pub clock: Clock,
    pub metrics: Metrics,
    pub settings: PlatformCertificateSettings,
    /// This process's name in the lease table.
    pub holder: String,
    pub lease_ttl: Duration,
}

impl CertificateKeeper {
    fn ring(&self) -> &KeyRing {
        &self.pay.credentials().platform_keys
    }

    /// Runs until `stop`: saves what this process downloads, and ticks every reload interval.
    pub async fn run(self, stop: CancellationToken) {
        let mut fetched = self.ring().subscribe();
        let mut tick = tokio::time::interval(self.settings.reload_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                changed = fetched.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let list = fetched.borrow_and_update().clone();
                    if let Some(list) = list {
                        self.save_fetched(&list).await;
                    }
                }
                _ = tick.tick() => self.tick().await,
            }
        }
        let _ = self.db.release_lease(LEASE, &self.holder).await;
    }

    async fn save_fetched(&self, list: &Fetched) {
        match save(&self.db, list).await {
            Ok(()) => self.metrics.certificate_last_refresh.set(list.at.timestamp()),
            Err(err) => tracing::warn!(error = %err, "could not save the downloaded platform certificates"),
        }
    }

    /// One pass: re-read the saved list (one query), download WeChat's when due and ours to do,
    /// and update the metrics. Failures are logged; the next tick tries again.
    pub async fn tick(&self) {
        let saved = match self.db.platform_certificates().await {
            Ok(saved) => saved,
            Err(err) => {
                tracing::warn!(error = %err, "could not re-read the saved platform certificates");
                return;
            }
        };
        install_saved(self.ring(), &saved);
        let mut last_saved_ms = saved.iter().map(|c| c.fetched_at_ms).max();
        if self.ring().certificate_mode() {
            match self.refresh_if_due(&saved, last_saved_ms).await {
                Ok(true) => {
                    tracing::info!("platform certificates downloaded (scheduled refresh)");
                    last_saved_ms = Some(self.clock.now_ms());
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "scheduled platform certificate refresh failed; will retry"),
            }
        }
        self.update_metrics(last_saved_ms);
    }

    /// Downloads WeChat's list if no replica did within the refresh interval and we hold the
    /// lease. Returns whether it downloaded.
    async fn refresh_if_due(&self, saved: &[StoredCertificate], last_ms: Option<i64>) -> Result<bool, anyhow::Error> {
        let now_ms = self.clock.now_ms();
        let interval_ms = i64::try_from(self.settings.refresh_interval().as_millis()).unwrap_or(i64::MAX);
        // Certificates are followed while they are configured or saved: an operator who deleted
        // the saved rows (moving to the public key) is not overruled by a replica that still
        // holds them in memory.
        if saved.is_empty() && !self.ring().configured_certificates() {
            return Ok(false);
        }
        if last_ms.is_some_and(|last| now_ms.saturating_sub(last) < interval_ms) {
            return Ok(false);
        }
        let ttl_ms = i64::try_from(self.lease_ttl.as_millis()).unwrap_or(30_000);
        if !self.db.try_lease(LEASE, &self.holder, now_ms, ttl_ms).await? {
            return Ok(false);
        }
        let certificates = self.pay.refresh_certificates().await?;
        // Saved now, not only when the loop handles the announcement: a tick that runs first
        // must see the download as done rather than download again.
        save(&self.db, &Fetched { certificates: certificates.into(), at: self.clock.now() }).await?;
        Ok(true)
    }

    fn update_metrics(&self, last_saved_ms: Option<i64>) {
        let keys = self.ring().snapshot();
        let in_use = keys.has_certificates();
        self.metrics.certificates_in_use.set(i64::from(in_use));
        if !in_use {
            return;
        }
        let expiry = keys.newest_certificate_expiry(self.clock.now()).map_or(0, |t| t.timestamp());
        self.metrics.certificate_expiry.set(expiry);
        if let Some(last) = last_saved_ms {
            self.metrics.certificate_last_refresh.set(last / 1000);
        }
    }
}
