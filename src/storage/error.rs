//! Storage errors, classified so callers can answer precisely: a missing row, a unique key
//! already taken, or a database that is down (WeChat must then be told to retry).

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("conflict on unique key {0}")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
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
        matches!(self, StorageError::Unavailable(_))
    }
}
