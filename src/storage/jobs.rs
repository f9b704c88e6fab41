//! `dead_jobs`: jobs that exhausted their attempts. The queue backends (SQLite, Redis) each
//! have their own notion of failure; this table is ours, the same on both profiles, and the
//! one `wxpay-recon jobs dead|retry` reads.

use sqlx::FromRow;

use crate::domain::JobKind;
use crate::domain::job::DeadJob;

use super::{Db, StorageError, corrupt};

#[derive(Debug, Clone, FromRow)]
struct DeadJobRow {
    id: i64,
    kind: String,
    payload: String,
    attempts: i64,
    last_error: String,
    died_at_ms: i64,
}

impl TryFrom<DeadJobRow> for DeadJob {
    type Error = StorageError;
    fn try_from(r: DeadJobRow) -> Result<Self, StorageError> {
        Ok(DeadJob {
            id: r.id,
            kind: r.kind.parse().map_err(corrupt)?,
            payload: r.payload,
            attempts: r.attempts,
            last_error: r.last_error,
            died_at_ms: r.died_at_ms,
        })
    }
}

impl Db {
    pub async fn insert_dead_job(
        &self,
        kind: JobKind,
        payload: &str,
        attempts: i64,
        last_error: &str,
        now_ms: i64,
    ) -> Result<i64, StorageError> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO dead_jobs (kind, payload, attempts, last_error, died_at_ms) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(kind.as_str())
        .bind(payload)
        .bind(attempts)
        .bind(last_error)
        .bind(now_ms)
        .fetch_one(self.writer())
        .await?;
        Ok(id)
    }

    /// Dead jobs not yet retried, oldest first.
    pub async fn dead_jobs(&self) -> Result<Vec<DeadJob>, StorageError> {
        let rows: Vec<DeadJobRow> = sqlx::query_as(
            "SELECT id, kind, payload, attempts, last_error, died_at_ms FROM dead_jobs WHERE retried_at_ms IS NULL ORDER BY id",
        )
        .fetch_all(self.reader())
        .await?;
        rows.into_iter().map(DeadJob::try_from).collect()
    }

    /// Claims a dead job for retry; false if it was already retried (or does not exist).
    pub async fn mark_dead_job_retried(&self, id: i64, now_ms: i64) -> Result<bool, StorageError> {
        let done = sqlx::query("UPDATE dead_jobs SET retried_at_ms = $2 WHERE id = $1 AND retried_at_ms IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(self.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Open dead jobs by kind, for the `wxpay_jobs_dead` gauge.
    pub async fn dead_job_counts(&self) -> Result<Vec<(JobKind, i64)>, StorageError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT kind, COUNT(*) FROM dead_jobs WHERE retried_at_ms IS NULL GROUP BY kind")
                .fetch_all(self.reader())
                .await?;
        rows.into_iter().map(|(kind, n)| Ok((kind.parse().map_err(corrupt)?, n))).collect()
    }
}
