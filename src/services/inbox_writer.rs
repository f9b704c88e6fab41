//! Group commit for the notification inbox.
//!
//! Each notify request hands its verified row to a writer and waits; a writer takes every row
//! waiting (up to `max_batch` rows and what one statement should carry, see
//! `Db::inbox_statement_bytes`), upserts them in one statement and one commit, then answers
//! each request. A request is therefore acknowledged only after the commit that holds its
//! row, while a burst of N notifications costs a handful of commits instead of N; the writers
//! commit in parallel.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::storage::inbox::{InboxUpsert, NewInboxRow};
use crate::storage::{Db, StorageError};
use crate::telemetry::metrics::Metrics;

/// Why a row was not stored. Cloneable: one failed commit fails every row it held.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("inbox write failed: {0}")]
    Failed(String),
    #[error("inbox writer stopped")]
    Stopped,
}

type Request = (NewInboxRow, oneshot::Sender<Result<InboxUpsert, WriteError>>);

/// Handle used by request handlers; cheap to clone.
#[derive(Debug, Clone)]
pub struct InboxWriter {
    tx: mpsc::Sender<Request>,
}

impl InboxWriter {
    /// Starts `writers` batching tasks over one shared request channel.
    pub fn spawn(db: Db, max_batch: usize, writers: usize, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel::<Request>(max_batch.saturating_mul(writers).max(64));
        let rx = Arc::new(Mutex::new(Pending { rx, carried: None }));
        for _ in 0..writers {
            let rx = Arc::clone(&rx);
            let db = db.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move { run(db, rx, max_batch, metrics).await });
        }
        Self { tx }
    }

    /// Stores one row durably; returns once the commit holding it has finished.
    pub async fn write(&self, row: NewInboxRow) -> Result<InboxUpsert, WriteError> {
        let (done, wait) = oneshot::channel();
        self.tx.send((row, done)).await.map_err(|_| WriteError::Stopped)?;
        wait.await.map_err(|_| WriteError::Stopped)?
    }
}

/// The request channel, and the request that did not fit in the previous batch.
struct Pending {
    rx: mpsc::Receiver<Request>,
    carried: Option<Request>,
}

async fn run(db: Db, pending: Arc<Mutex<Pending>>, max_batch: usize, metrics: Metrics) {
    let max_bytes = db.inbox_statement_bytes();
    loop {
        let batch = {
            let mut pending = pending.lock().await;
            let first = match pending.carried.take() {
                Some(request) => request,
                None => match pending.rx.recv().await {
                    Some(request) => request,
                    None => return,
                },
            };
            let mut bytes = first.0.wire_size();
            let mut batch = Vec::with_capacity(max_batch);
            batch.push(first);
            while batch.len() < max_batch {
                let Ok(request) = pending.rx.try_recv() else { break };
                let size = request.0.wire_size();
                if bytes.saturating_add(size) > max_bytes {
                    pending.carried = Some(request);
                    break;
                }
                bytes += size;
                batch.push(request);
            }
            batch
        };
        let started = Instant::now();
        let (rows, waiters): (Vec<NewInboxRow>, Vec<_>) = batch.into_iter().unzip();
        metrics.notify_commit_batch.observe(rows.len() as f64);
        match db.upsert_inbox_batch(&rows).await {
            Ok(results) => {
                for (waiter, result) in waiters.into_iter().zip(results) {
                    let _ = waiter.send(Ok(result));
                }
            }
            Err(err) => {
                let error = match &err {
                    StorageError::Unavailable(_) => WriteError::Unavailable(err.to_string()),
                    _ => WriteError::Failed(err.to_string()),
                };
                tracing::error!(error = %err, rows = rows.len(), elapsed_ms = started.elapsed().as_millis() as u64, "inbox commit failed");
                for waiter in waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
            }
        }
    }
}
