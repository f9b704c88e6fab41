//! `leases`: who runs a singleton job (sweeper, poller, reconcile) right now.
//!
//! Acquire and renew are one upsert that only succeeds if the lease is free, expired or
//! already ours; release deletes only our own lease (compare-and-delete in one statement).
//! A holder that dies simply stops renewing, and the lease expires after its TTL.

use super::{Db, StorageError};

impl Db {
    /// Takes or renews the lease `name` for `holder` until `now + ttl`. True if we hold it.
    pub async fn try_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
             WHERE leases.holder = excluded.holder OR leases.expires_at_ms < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now_ms + ttl_ms)
        .bind(now_ms)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up early (shutdown), if we still hold it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.writer())
            .await?;
        Ok(())
    }
}
