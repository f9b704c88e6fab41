//! `platform_certificates`: the WeChat Pay platform certificates last downloaded, kept so a
//! restart (or another replica) verifies WeChat's signatures without asking WeChat first.
//! Rows are upserted by serial and never deleted by code: a certificate is public, small, and
//! WeChat issues one every few years.

use sqlx::FromRow;

use super::{Db, StorageError};

/// One stored certificate; the PEM is what counts, the rest repeats it for queries.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct StoredCertificate {
    pub serial: String,
    pub pem: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub fetched_at_ms: i64,
}

impl Db {
    /// Saves a downloaded list: new serials inserted, known ones refreshed (`fetched_at_ms`).
    pub async fn save_platform_certificates(&self, certificates: &[StoredCertificate]) -> Result<(), StorageError> {
        let mut tx = self.writer().begin().await?;
        for cert in certificates {
            sqlx::query(
                "INSERT INTO platform_certificates (serial, pem, not_before_ms, not_after_ms, fetched_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (serial) DO UPDATE SET pem = excluded.pem, not_before_ms = excluded.not_before_ms,
                     not_after_ms = excluded.not_after_ms,
                     fetched_at_ms = CASE WHEN excluded.fetched_at_ms > platform_certificates.fetched_at_ms
                                          THEN excluded.fetched_at_ms ELSE platform_certificates.fetched_at_ms END",
            )
            .bind(&cert.serial)
            .bind(&cert.pem)
            .bind(cert.not_before_ms)
            .bind(cert.not_after_ms)
            .bind(cert.fetched_at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every stored certificate, oldest first.
    pub async fn platform_certificates(&self) -> Result<Vec<StoredCertificate>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT serial, pem, not_before_ms, not_after_ms, fetched_at_ms FROM platform_certificates
             ORDER BY not_before_ms, serial",
        )
        .fetch_all(self.reader())
        .await?)
    }
}
