//! Storage errors, classified so callers can answer precisely: a missing row, a unique key
//! already taken, or a database that is down (WeChat must then be told to retry).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("conflict on unique key {0}")]
    Conflict(String),
    /// A guarded write found the rows other than the transaction had just read and locked
    /// them: another writer got there first. Retrying reads them again.
    #[error("the books changed under a lock: {0}")]
    Changed(String),
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The server could not be reached at start: which one, and why.
    #[error("cannot connect to PostgreSQL at {endpoint}: {cause}")]
    Unreachable { endpoint: String, cause: String },
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

/// Statements that gave up waiting for a pool connection, in this process. A process-wide count
/// (not per `Db`) because it is exported as a process metric and the conversion below, where
/// every such failure passes, has no handle to anything else.
static ACQUIRE_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// How many statements of this process timed out waiting for a database connection.
pub fn acquire_timeouts() -> u64 {
    ACQUIRE_TIMEOUTS.load(Ordering::Relaxed)
}

/// Counts `err` when it is a wait for a connection that timed out.
pub(super) fn count_acquire_timeout(err: &sqlx::Error) {
    if matches!(err, sqlx::Error::PoolTimedOut) {
        ACQUIRE_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
        count_acquire_timeout(&err);
        match err {
            sqlx::Error::RowNotFound => StorageError::NotFound,
            sqlx::Error::Database(ref db) if db.is_unique_violation() => {
                StorageError::Conflict(db.constraint().unwrap_or("unique").to_owned())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => StorageError::Unavailable(err),
            sqlx::Error::Database(ref db) if is_unavailable_code(db.code().as_deref()) => {
                StorageError::Unavailable(err)
            }
            other => StorageError::Other(other),
        }
    }
}

/// PostgreSQL "the server is going away / not ready" classes and SQLite busy/locked: all mean
/// "try again", not "your request is wrong".
fn is_unavailable_code(code: Option<&str>) -> bool {
    match code {
        Some(code) => {
            code.starts_with("57P") || code.starts_with("08") || code.starts_with("53") || code == "5" || code == "6"
        }
        None => false,
    }
}

impl StorageError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_) | StorageError::Unreachable { .. })
    }
}
