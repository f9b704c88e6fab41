//! Our database, behind one type for both profiles.
//!
//! `Db` speaks to SQLite (embedded) or PostgreSQL (cluster) through sqlx's `Any` driver, so one
//! set of SQL statements (numbered `$n` parameters, `ON CONFLICT`, `RETURNING`, instants as
//! Unix milliseconds) serves both; the few real differences (row locks) go through
//! [`Dialect`]. Each table has its own file with the statements that touch it.
//!
//! This is one of the two edges where outside data becomes domain values: row structs stay
//! private to their file and functions return `domain` types (a stored text the domain does
//! not know is [`StorageError::Corrupt`]). No business rule lives here: services decide what to
//! change (refund limits, which transition to attempt) and this layer runs the statements,
//! guarding each status change with the domain's own transition table.

mod bounded;
pub mod certificates;
mod error;
pub mod events;
pub mod inbox;
pub mod jobs;
pub mod leases;
pub mod orders;
pub mod polling;
pub mod products;
pub mod reconcile;
pub mod refunds;
pub mod sessions;
pub mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, AssertSqlSafe, Connection, Executor};

pub use error::{StorageError, acquire_timeouts};

use crate::config::DatabaseSettings;

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// A stored value the domain refuses: the database and the code disagree.
pub(crate) fn corrupt(err: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(err.to_string())
}

/// `'A', 'B'` for a status guard; the values are our own constants, never user input.
pub(crate) fn in_list<T: std::fmt::Display>(values: &[T]) -> String {
    values.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ")
}

/// `($f, $f+1, ..), (..)`: `rows` tuples of `columns` numbered parameters, the first `$first`.
pub(crate) fn values_list(rows: usize, columns: usize, first: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 6);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", first + r * columns + c));
        }
        sql.push(')');
    }
    sql
}

/// The SQL differences between our two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Row lock for read-then-update inside a transaction. SQLite needs none: its single
    /// writer connection serialises every write transaction.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Row claim that lets concurrent sweepers take disjoint rows.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

/// What a pool holds at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub idle: u32,
    pub in_use: u32,
    pub max: u32,
}

/// Connection pools: on SQLite one writer (writes serialise anyway; this avoids busy errors)
/// plus readers; on PostgreSQL one pool for both.
#[derive(Debug, Clone)]
pub struct Db {
    write: AnyPool,
    read: AnyPool,
    dialect: Dialect,
}

impl Db {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StorageError> {
        install_default_drivers();
        let acquire = Duration::from_millis(settings.acquire_timeout_ms);
        if settings.url.starts_with("sqlite:") {
            let url = sqlite_url(&settings.url)?;
            let write = sqlite_pool(&url, 1, acquire).await?;
            let read = sqlite_pool(&url, settings.max_connections, acquire).await?;
            Ok(Self { write, read, dialect: Dialect::Sqlite })
        } else {
            // One real connection first: a pool that cannot connect only ever says "pool timed
            // out"; this says which server and why (refused, unknown host, bad password).
            let options = sqlx::any::AnyConnectOptions::from_str(&settings.url)?;
            let endpoint = crate::config::endpoint_of(&settings.url);
            match tokio::time::timeout(acquire, sqlx::AnyConnection::connect_with(&options)).await {
                Ok(Ok(conn)) => conn.close().await?,
                Ok(Err(err)) => {
                    return Err(StorageError::Unreachable { endpoint, cause: err.to_string() });
                }
                Err(_) => {
                    let cause =
                        format!("no connection within {} ms (database.acquire_timeout_ms)", acquire.as_millis());
                    return Err(StorageError::Unreachable { endpoint, cause });
                }
            }
            let pool = AnyPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(acquire)
                .connect_lazy(&settings.url)?;
            Ok(Self { write: pool.clone(), read: pool, dialect: Dialect::Postgres })
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Pool for statements that write (and transactions).
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// Pool for read-only statements.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// Connections open, idle and allowed, over both pools on SQLite (one pool on PostgreSQL).
    pub fn pool_stats(&self) -> PoolStats {
        let pools: &[&AnyPool] = match self.dialect {
            Dialect::Sqlite => &[&self.write, &self.read],
            Dialect::Postgres => &[&self.write],
        };
        pools.iter().fold(PoolStats::default(), |stats, pool| {
            let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
            PoolStats {
                idle: stats.idle + idle,
                in_use: stats.in_use + pool.size().saturating_sub(idle),
                max: stats.max + pool.options().get_max_connections(),
            }
        })
    }

    /// How long getting a writer connection takes right now (it is handed back at once): the
    /// wait every write statement pays before it runs. A probe that times out in the pool is
    /// counted as an acquire timeout like any statement's, and reports the time it waited.
    pub async fn probe_acquire(&self) -> Duration {
        let started = std::time::Instant::now();
        if let Err(err) = self.write.acquire().await {
            error::count_acquire_timeout(&err);
        }
        started.elapsed()
    }

    /// A write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`):
    /// our transactions read the row they then change (`lock_order`, claims), and a deferred
    /// transaction that has read cannot wait for the lock when another process (a CLI command
    /// beside the daemon) wrote meanwhile; SQLite fails it at once with "database is locked"
    /// (SQLITE_BUSY_SNAPSHOT), ignoring busy_timeout. Taken at BEGIN, the lock is waited for
    /// (busy_timeout) and the transaction's reads are current. Within one process nothing
    /// changes: the single writer connection already serialised every write transaction.
    pub async fn begin(&self) -> Result<Tx, StorageError> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.write.begin().await?,
        })
    }

    /// Applies pending migrations. On PostgreSQL sqlx holds an advisory lock meanwhile, so
    /// replicas starting together do not race.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let result = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&self.write).await,
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&self.write).await,
        };
        result.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(err) => StorageError::from(err),
            other => StorageError::Corrupt(format!("migration: {other}")),
        })
    }

    /// A trivial round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.write.execute("SELECT 1").await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// `sqlite://path` with the parent directory created and create-if-missing mode.
fn sqlite_url(url: &str) -> Result<String, StorageError> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StorageError::Corrupt(format!("cannot create {}: {e}", parent.display())))?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// How long a SQLite statement waits for a lock held elsewhere before failing: far above any
/// of our write transactions (milliseconds), so only a stuck writer makes it give up. The
/// queue's SQLite file uses the same (`queue::JobQueue::connect`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

async fn sqlite_pool(url: &str, max: u32, acquire: Duration) -> Result<AnyPool, StorageError> {
    let _ = sqlx::any::AnyConnectOptions::from_str(url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // busy_timeout first: every statement after it, these pragmas included, waits
                // up to BUSY_TIMEOUT for a lock another connection or process holds (the daemon
                // and a CLI command share the file) instead of failing "database is locked".
                // WAL lets readers run beside the writer; FULL makes each commit durable
                // before we acknowledge WeChat.
                conn.execute(AssertSqlSafe(format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis()))).await?;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}
