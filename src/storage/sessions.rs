//! `sessions`: our bearer tokens, stored only as their SHA-256.

use super::{Db, StorageError};

impl Db {
    pub async fn insert_session(
        &self,
        token_hash: &str,
        user_id: i64,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StorageError> {
        sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(user_id)
            .bind(now_ms)
            .bind(expires_at_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// The user a live token belongs to; expired and unknown tokens are both `None`.
    pub async fn session_user(&self, token_hash: &str, now_ms: i64) -> Result<Option<i64>, StorageError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT user_id FROM sessions WHERE token_hash = $1 AND expires_at_ms > $2")
                .bind(token_hash)
                .bind(now_ms)
                .fetch_optional(self.reader())
                .await?;
        Ok(row.map(|(id,)| id))
    }

    /// Revokes one session (logout); whether it existed.
    pub async fn delete_session(&self, token_hash: &str) -> Result<bool, StorageError> {
        let done =
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(self.writer()).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes at most `limit` sessions expired at `now_ms`, oldest first; how many. Bounded so
    /// one purge never holds the (embedded: single) writer connection for long.
    pub async fn purge_expired_sessions(&self, now_ms: i64, limit: i64) -> Result<u64, StorageError> {
        let done = sqlx::query(
            "DELETE FROM sessions WHERE token_hash IN \
             (SELECT token_hash FROM sessions WHERE expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2)",
        )
        .bind(now_ms)
        .bind(limit)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected())
    }
}
