//! The job queue, behind one type for both profiles: apalis' SQLite storage (embedded, in its
//! own file beside the data) or apalis' Redis storage (cluster).
//!
//! Jobs are at-least-once and carry only identifiers; the durable truth is in our database
//! (the inbox, orders), so a lost job is re-created by a sweeper rather than being a loss.
//! Retry timing and the dead-letter state are ours (see `worker::retry`), not the backend's.

mod job;

use std::str::FromStr;
use std::time::Duration;

use apalis::prelude::{Metrics, TaskBuilder, TaskSink};
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::{SqlitePool, SqliteStorage};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use job::{Envelope, Job, QueueName};

use crate::config::QueueSettings;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue setup: {0}")]
    Setup(String),
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

/// A handle to push jobs; cheap to clone.
#[derive(Clone)]
pub enum JobQueue {
    Sqlite { pool: SqlitePool, prefix: String, settings: QueueSettings },
    Redis { conn: ConnectionManager, prefix: String, settings: QueueSettings },
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobQueue::Sqlite { prefix, .. } => write!(f, "JobQueue::Sqlite({prefix})"),
            JobQueue::Redis { prefix, .. } => write!(f, "JobQueue::Redis({prefix})"),
        }
    }
}

impl JobQueue {
    /// Connects and prepares the backend named by `queue.url`.
    pub async fn connect(settings: &QueueSettings) -> Result<Self, QueueError> {
        if settings.url.starts_with("sqlite:") {
            let path = settings.url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            if let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| QueueError::Setup(format!("{}: {e}", parent.display())))?;
            }
            let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
                .map_err(|e| QueueError::Setup(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(crate::storage::BUSY_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(|e| QueueError::Unavailable(e.to_string()))?;
            // apalis' own `setup()` would switch this file to synchronous=OFF; run only its
            // migrations and keep our durability settings.
            SqliteStorage::<()>::migrations().run(&pool).await.map_err(|e| QueueError::Setup(e.to_string()))?;
            Ok(JobQueue::Sqlite { pool, prefix: settings.prefix.clone(), settings: settings.clone() })
        } else {
            let client = redis::Client::open(settings.url.as_str()).map_err(|e| QueueError::Setup(e.to_string()))?;
            // The default 500 ms response timeout turns any Redis hiccup into a dead worker.
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_connection_timeout(Some(Duration::from_secs(5)));
            let conn = client.get_connection_manager_with_config(config).await.map_err(|e| {
                QueueError::Unavailable(format!("Redis at {}: {e}", crate::config::endpoint_of(&settings.url)))
            })?;
            Ok(JobQueue::Redis { conn, prefix: settings.prefix.clone(), settings: settings.clone() })
        }
    }

    /// The full queue name, e.g. `wxpay.apply`.
    pub fn queue_name(&self, queue: QueueName) -> String {
        let prefix = match self {
            JobQueue::Sqlite { prefix, .. } | JobQueue::Redis { prefix, .. } => prefix,
        };
        format!("{prefix}.{}", queue.as_str())
    }

    /// The Redis connection and key prefix, on the cluster profile (shared rate limits use it).
    pub fn redis(&self) -> Option<(ConnectionManager, &str)> {
        match self {
            JobQueue::Redis { conn, prefix, .. } => Some((conn.clone(), prefix)),
            JobQueue::Sqlite { .. } => None,
        }
    }

    /// The SQLite storage of one queue (for workers).
    pub fn sqlite_storage(&self, queue: QueueName) -> Option<SqliteStorage<Envelope>> {
        match self {
            JobQueue::Sqlite { pool, settings, .. } => {
                let config = apalis_sqlite::Config::default()
                    .queue(self.queue_name(queue))
                    .heartbeat_interval(Duration::from_secs(settings.heartbeat_secs))
                    .missed_heartbeats(settings.missed_heartbeats);
                Some(SqliteStorage::new(pool).with_config(config))
            }
            JobQueue::Redis { .. } => None,
        }
    }

    /// The Redis storage of one queue (for workers).
    pub fn redis_storage(&self, queue: QueueName) -> Option<RedisStorage<Envelope>> {
        match self {
            JobQueue::Redis { conn, settings, .. } => {
                let config = apalis_redis::Config::default()
                    .queue(self.queue_name(queue))
                    .heartbeat_interval(Duration::from_secs(settings.heartbeat_secs))
                    .missed_heartbeats(settings.missed_heartbeats);
                Some(RedisStorage::new(conn.clone()).with_config(config))
            }
            JobQueue::Sqlite { .. } => None,
        }
    }

    /// Pushes one job, to run after `delay` (none: as soon as a worker is free).
    pub async fn push(&self, envelope: Envelope, delay: Option<Duration>) -> Result<(), QueueError> {
        let queue = envelope.job.queue();
        let mut builder = TaskBuilder::new(envelope);
        if let Some(delay) = delay {
            builder = builder.run_at_timestamp(run_at_secs(delay));
        }
        match self {
            JobQueue::Sqlite { .. } => {
                let mut storage =
                    self.sqlite_storage(queue).ok_or_else(|| QueueError::Setup("not a sqlite queue".into()))?;
                // The backend must not retry by itself: one execution per push, our policy decides.
                let task = builder.max_attempts(1).build();
                storage.push_task(task).await.map_err(|e| QueueError::Unavailable(e.to_string()))
            }
            JobQueue::Redis { .. } => {
                let mut storage =
                    self.redis_storage(queue).ok_or_else(|| QueueError::Setup("not a redis queue".into()))?;
                storage.push_task(builder.build()).await.map_err(|e| QueueError::Unavailable(e.to_string()))
            }
        }
    }

    /// Pushes many jobs at once (one transaction on SQLite, one pipeline on Redis).
    pub async fn push_many(&self, envelopes: Vec<Envelope>) -> Result<(), QueueError> {
        for queue in QueueName::ALL {
            let batch: Vec<Envelope> = envelopes.iter().filter(|e| e.job.queue() == queue).cloned().collect();
            if batch.is_empty() {
                continue;
            }
            match self {
                JobQueue::Sqlite { .. } => {
                    let mut storage =
                        self.sqlite_storage(queue).ok_or_else(|| QueueError::Setup("not a sqlite queue".into()))?;
                    let tasks: Vec<_> =
                        batch.into_iter().map(|e| TaskBuilder::new(e).max_attempts(1).build()).collect();
                    storage
                        .push_all(futures::stream::iter(tasks))
                        .await
                        .map_err(|e| QueueError::Unavailable(e.to_string()))?;
                }
                JobQueue::Redis { .. } => {
                    let mut storage =
                        self.redis_storage(queue).ok_or_else(|| QueueError::Setup("not a redis queue".into()))?;
                    storage.push_bulk(batch).await.map_err(|e| QueueError::Unavailable(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    /// A round trip to the backend, for `/readyz`.
    pub async fn ping(&self) -> Result<(), QueueError> {
        match self {
            JobQueue::Sqlite { pool, .. } => sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(|e| QueueError::Unavailable(e.to_string())),
            JobQueue::Redis { conn, .. } => {
                let mut conn = conn.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| QueueError::Unavailable(e.to_string()))
            }
        }
    }

    /// Per-queue statistics, the numbers apalis-board shows: apalis' own
    /// `Metrics::fetch_by_queue` on SQLite. On Redis that call fails in apalis-redis 1.0.0 (its
    /// Lua script reads a timestamp argument the Rust side never passes), so the same sets are
    /// counted here through apalis-redis' key names.
    pub async fn stats(&self, queue: QueueName) -> Result<Vec<QueueStat>, QueueError> {
        let unavailable = |e: &dyn std::fmt::Display| QueueError::Unavailable(e.to_string());
        match self {
            JobQueue::Sqlite { .. } => {
                let Some(storage) = self.sqlite_storage(queue) else { return Ok(Vec::new()) };
                let mut stats: Vec<(u64, QueueStat)> = storage
                    .fetch_by_queue()
                    .await
                    .map_err(|e| unavailable(&e))?
                    .into_iter()
                    .map(|s| (s.priority.unwrap_or(u64::MAX), QueueStat { title: s.title, value: s.value }))
                    .collect();
                stats.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.title.cmp(&b.1.title)));
                Ok(stats.into_iter().map(|(_, s)| s).collect())
            }
            JobQueue::Redis { conn, .. } => {
                let keys = apalis_redis::Config::default().queue(self.queue_name(queue));
                let count = |cmd: &str, key: String| {
                    let mut conn = conn.clone();
                    let cmd = redis::cmd(cmd).arg(key).clone();
                    async move { cmd.query_async::<u64>(&mut conn).await }
                };
                let pending = count("LLEN", keys.active_jobs_list()).await.map_err(|e| unavailable(&e))?;
                let scheduled = count("ZCARD", keys.scheduled_jobs_set()).await.map_err(|e| unavailable(&e))?;
                // Plain sets: apalis-redis 1.0.0 adds finished ids with SADD (lua/handle_results.lua);
                // ZCARD on them fails with WRONGTYPE once the first job finishes.
                let done = count("SCARD", keys.done_jobs_set()).await.map_err(|e| unavailable(&e))?;
                let failed = count("SCARD", keys.dead_jobs_set()).await.map_err(|e| unavailable(&e))?;
                // One inflight set per worker, `<queue>:inflight:<worker>`: found with SCAN
                // (never KEYS, which blocks a shared Redis).
                let pattern = format!("{}:*", keys.inflight_jobs_set());
                let mut scan_conn = conn.clone();
                let mut cursor: u64 = 0;
                let mut running = 0;
                loop {
                    let (next, sets): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut scan_conn)
                        .await
                        .map_err(|e| unavailable(&e))?;
                    for set in sets {
                        running += count("SCARD", set).await.map_err(|e| unavailable(&e))?;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                let stat = |title: &str, value: u64| QueueStat { title: title.to_owned(), value: value.to_string() };
                Ok(vec![
                    stat("RUNNING_JOBS", running),
                    stat("PENDING_JOBS", pending),
                    stat("SCHEDULED_JOBS", scheduled),
                    stat("FAILED_JOBS", failed),
                    stat("DONE_JOBS", done),
                ])
            }
        }
    }
}

/// One statistic of a queue as its backend reports it, e.g. `PENDING_JOBS` = `3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStat {
    pub title: String,
    pub value: String,
}

/// The Unix second a job delayed by `delay` may run at. Both backends keep whole seconds and
/// run a job once its second has begun, so the instant is rounded *up*: a backoff is never
/// shorter than the policy asked (apalis' own `run_after` rounds down, up to a second early).
fn run_at_secs(delay: Duration) -> u64 {
    let at = (std::time::SystemTime::now() + delay).duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    at.as_secs() + u64::from(at.subsec_nanos() > 0)
}
