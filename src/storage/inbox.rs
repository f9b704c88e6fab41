//! `notifications` (the inbox), `notify_rejections` and `anomalies`.
//!
//! The inbox write is batched: many verified notifications are upserted in one statement and
//! one commit, and each caller learns whether its notification was new.

use std::collections::{HashMap, HashSet};

use sqlx::FromRow;

use sqlx::AssertSqlSafe;

use crate::domain::{AnomalyKind, EventSource};

use super::{Db, Dialect, StorageError, Tx, corrupt, values_list};

/// A verified, decrypted notification ready to be stored.
#[derive(Debug, Clone)]
pub struct NewInboxRow {
    pub notification_id: String,
    pub event_type: String,
    pub resource_type: String,
    pub summary: String,
    pub create_time: String,
    pub serial: String,
    pub wechat_timestamp: String,
    pub wechat_nonce: String,
    pub signature: String,
    pub raw_body: String,
    pub resource_json: String,
    pub out_trade_no: Option<String>,
    pub received_at_ms: i64,
}

impl NewInboxRow {
    /// Roughly what this row adds to the statement that stores it: the values, plus a length
    /// and a format code for each of the `NEW_COLUMNS` parameters.
    pub fn wire_size(&self) -> usize {
        let text = [
            &self.notification_id,
            &self.event_type,
            &self.resource_type,
            &self.summary,
            &self.create_time,
            &self.serial,
            &self.wechat_timestamp,
            &self.wechat_nonce,
            &self.signature,
            &self.raw_body,
            &self.resource_json,
        ];
        let text_bytes: usize = text.iter().map(|s| s.len()).sum();
        text_bytes + self.out_trade_no.as_ref().map_or(0, String::len) + 4 * 8 + NEW_COLUMNS * 6
    }
}

/// The stored state of one notification after an upsert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxUpsert {
    pub id: i64,
    /// This delivery created the row (the first time we saw this notification id).
    pub first_delivery: bool,
    pub processed: bool,
}

#[derive(Debug, Clone, FromRow)]
pub struct InboxRow {
    pub id: i64,
    pub notification_id: String,
    pub event_type: String,
    pub resource_json: String,
    pub out_trade_no: Option<String>,
    pub deliveries: i64,
    pub received_at_ms: i64,
    pub processed_at_ms: Option<i64>,
    pub outcome: Option<String>,
}

const NEW_COLUMNS: usize = 16;

/// The columns an [`InboxRow`] is read from.
const INBOX_COLUMNS: &str = "id, notification_id, event_type, resource_json, out_trade_no, deliveries, received_at_ms, processed_at_ms, outcome";

/// A sample of a rejected notification, kept so the rejection can be explained later. Its
/// fields are already cut to a bounded size by the sampler (`services::rejection_sampler`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
    pub serial: Option<String>,
    pub notification_id: Option<String>,
    pub body_sha256: String,
    pub body_excerpt: String,
    pub received_at_ms: i64,
}

/// Evidence we refused to apply.
#[derive(Debug, Clone)]
pub struct Anomaly<'a> {
    pub kind: AnomalyKind,
    pub source: EventSource,
    pub out_trade_no: Option<&'a str>,
    pub evidence: Option<&'a str>,
    pub ours: Option<&'a str>,
    pub theirs: Option<&'a str>,
    pub now_ms: i64,
}

/// An anomaly as recorded, for operators (`order show`) and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAnomaly {
    pub kind: AnomalyKind,
    pub source: EventSource,
    pub out_trade_no: Option<String>,
    /// The refused evidence's reference (`<how>:<reference>`, e.g. a notification id or `bill:<date>`).
    pub evidence: Option<String>,
    /// Our value and theirs, where the kind compares values.
    pub ours: Option<String>,
    pub theirs: Option<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, FromRow)]
struct AnomalyRow {
    kind: String,
    source: String,
    out_trade_no: Option<String>,
    evidence: Option<String>,
    ours: Option<String>,
    theirs: Option<String>,
    created_at_ms: i64,
}

impl TryFrom<AnomalyRow> for RecordedAnomaly {
    type Error = StorageError;
    fn try_from(r: AnomalyRow) -> Result<Self, StorageError> {
        Ok(RecordedAnomaly {
            kind: r.kind.parse().map_err(corrupt)?,
            source: r.source.parse().map_err(corrupt)?,
            out_trade_no: r.out_trade_no,
            evidence: r.evidence,
            ours: r.ours,
            theirs: r.theirs,
            created_at_ms: r.created_at_ms,
        })
    }
}

/// Row data sent per inbox INSERT statement at most, on PostgreSQL.
///
/// sqlx 0.9.0 leaves Nagle's algorithm on (it no longer sets TCP_NODELAY: sqlx issue #4335).
/// Over TLS, a message larger than one TLS record (16 KiB of plaintext) leaves as several
/// writes, and the last one waits for the server's delayed ACK: ~40 ms per statement, which
/// made every group commit of more than ~8 notifications take ~45 ms and capped the cluster
/// profile at a third of its commit rate. Statements that fit in one record leave in one write
/// and do not wait. The margin covers the Bind header, Execute and Sync sent with them.
const PG_STATEMENT_BYTES: usize = 14 * 1024;

/// Rows per INSERT statement at most, well under both backends' parameter limits.
const MAX_ROWS_PER_STATEMENT: usize = 256;

/// One multi-row upsert of `rows` (distinct notification ids).
fn upsert_statement<'q>(
    rows: &'q [(&'q NewInboxRow, i64)],
) -> sqlx::query::QueryAs<'q, sqlx::Any, (i64, String, i64, Option<i64>), sqlx::any::AnyArguments> {
    let mut sql = String::from(
        "INSERT INTO notifications (notification_id, event_type, resource_type, summary, create_time, serial,
             wechat_timestamp, wechat_nonce, signature, raw_body, resource_json, out_trade_no, deliveries,
             received_at_ms, last_delivery_at_ms, enqueued_at_ms) VALUES ",
    );
    sql.push_str(&values_list(rows.len(), NEW_COLUMNS, 1));
    sql.push_str(
        " ON CONFLICT (notification_id) DO UPDATE SET
             deliveries = notifications.deliveries + excluded.deliveries,
             last_delivery_at_ms = excluded.last_delivery_at_ms
         RETURNING id, notification_id, deliveries, processed_at_ms",
    );
    let mut query = sqlx::query_as::<_, (i64, String, i64, Option<i64>)>(AssertSqlSafe(sql));
    for (row, count) in rows {
        query = query
            .bind(&row.notification_id)
            .bind(&row.event_type)
            .bind(&row.resource_type)
            .bind(&row.summary)
            .bind(&row.create_time)
            .bind(&row.serial)
            .bind(&row.wechat_timestamp)
            .bind(&row.wechat_nonce)
            .bind(&row.signature)
            .bind(&row.raw_body)
            .bind(&row.resource_json)
            .bind(row.out_trade_no.as_deref())
            .bind(*count)
            .bind(row.received_at_ms)
            .bind(row.received_at_ms)
            .bind(row.received_at_ms);
    }
    query
}

impl Db {
    /// How many bytes of rows ([`NewInboxRow::wire_size`]) one inbox statement should carry at
    /// most; a batch within it is stored by a single statement (see [`PG_STATEMENT_BYTES`]).
    pub fn inbox_statement_bytes(&self) -> usize {
        match self.dialect() {
            Dialect::Postgres => PG_STATEMENT_BYTES,
            Dialect::Sqlite => usize::MAX,
        }
    }

    /// Upserts a batch in one commit. Deliveries of the same notification id within the batch
    /// are folded first (a statement may not touch a row twice); every input row gets the
    /// resulting state, in input order.
    ///
    /// A batch within [`Self::inbox_statement_bytes`] is one multi-row statement, committed on
    /// its own; a larger one is split into such statements inside one transaction. Rows go in
    /// notification-id order so that concurrent writers lock conflicting ids in the same order.
    pub async fn upsert_inbox_batch(&self, rows: &[NewInboxRow]) -> Result<Vec<InboxUpsert>, StorageError> {
        let mut added: HashMap<&str, i64> = HashMap::with_capacity(rows.len());
        let mut firsts: Vec<&NewInboxRow> = Vec::with_capacity(rows.len());
        for row in rows {
            let count = added.entry(row.notification_id.as_str()).or_insert(0);
            if *count == 0 {
                firsts.push(row);
            }
            *count += 1;
        }
        let mut unique: Vec<(&NewInboxRow, i64)> =
            firsts.into_iter().map(|row| (row, added[row.notification_id.as_str()])).collect();
        unique.sort_unstable_by(|a, b| a.0.notification_id.cmp(&b.0.notification_id));
        let byte_budget = self.inbox_statement_bytes();
        let mut chunks = Vec::new();
        let mut rest = unique.as_slice();
        while !rest.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len() && take < MAX_ROWS_PER_STATEMENT {
                let size = rest[take].0.wire_size();
                if take > 0 && bytes + size > byte_budget {
                    break;
                }
                bytes += size;
                take += 1;
            }
            let (chunk, tail) = rest.split_at(take);
            chunks.push(chunk);
            rest = tail;
        }

        let returned = if let [chunk] = chunks.as_slice() {
            // One statement is its own transaction: no BEGIN and COMMIT round trips.
            upsert_statement(chunk).fetch_all(self.writer()).await?
        } else {
            let mut tx = self.begin().await?;
            let mut returned = Vec::with_capacity(unique.len());
            for chunk in chunks {
                returned.extend(upsert_statement(chunk).fetch_all(&mut *tx).await?);
            }
            tx.commit().await?;
            returned
        };

        let state: HashMap<String, (i64, i64, bool)> = returned
            .into_iter()
            .map(|(id, nid, deliveries, processed)| (nid, (id, deliveries, processed.is_some())))
            .collect();
        let mut seen = HashSet::with_capacity(rows.len());
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, deliveries, processed) = state
                .get(&row.notification_id)
                .copied()
                .ok_or_else(|| StorageError::Corrupt("inbox upsert returned no row".into()))?;
            let added_by_batch = added.get(row.notification_id.as_str()).copied().unwrap_or(0);
            // deliveries == what this batch added <=> the row did not exist before; and only
            // the first copy within the batch is the first delivery.
            let first_delivery = deliveries == added_by_batch && seen.insert(row.notification_id.as_str());
            out.push(InboxUpsert { id, first_delivery, processed });
        }
        Ok(out)
    }

    pub async fn inbox_entry(&self, id: i64) -> Result<Option<InboxRow>, StorageError> {
        let sql = format!("SELECT {INBOX_COLUMNS} FROM notifications WHERE id = $1");
        Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_optional(self.reader()).await?)
    }

    /// Marks an entry processed inside the transaction that applied it. Returns false if
    /// another worker got there first (the caller then rolls back).
    pub async fn mark_inbox_processed(
        &self,
        tx: &mut Tx,
        id: i64,
        outcome: &str,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "UPDATE notifications SET processed_at_ms = $2, outcome = $3, outcome_detail = $4
             WHERE id = $1 AND processed_at_ms IS NULL",
        )
        .bind(id)
        .bind(now_ms)
        .bind(outcome)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The entry `id`, locked inside `tx` if it is still unprocessed (PostgreSQL: `None` too when
    /// another transaction holds it, a batch most likely; SQLite's write lock excludes them).
    /// Taken before the order is locked, in the batch's order (notification, then order), so
    /// the single-entry path and a batch never wait for each other in a cycle.
    pub async fn lock_unprocessed_inbox_entry(&self, tx: &mut Tx, id: i64) -> Result<Option<InboxRow>, StorageError> {
        let sql = format!(
            "SELECT {INBOX_COLUMNS} FROM notifications WHERE id = $1 AND processed_at_ms IS NULL{}",
            self.dialect().skip_locked()
        );
        Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_optional(&mut **tx).await?)
    }

    /// The deferred entry's job was re-scheduled to run at `due_ms`: the sweeper counts its age
    /// from then, so a job waiting out its backoff is not taken for lost.
    pub async fn inbox_job_due(&self, id: i64, due_ms: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE notifications SET enqueued_at_ms = $2 WHERE id = $1 AND processed_at_ms IS NULL")
            .bind(id)
            .bind(due_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Whether any entry waits for the batch applier: one index probe, on a reader, so an idle
    /// applier polls without taking the write lock (SQLite) or a transaction.
    pub async fn has_unapplied_inbox(&self) -> Result<bool, StorageError> {
        Ok(!self.unapplied_inbox_ids(1).await?.is_empty())
    }

    /// The ids of the oldest entries waiting for the batch applier, without claiming them: what
    /// a failed batch most likely held, to be retried one by one.
    pub async fn unapplied_inbox_ids(&self, limit: usize) -> Result<Vec<i64>, StorageError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM notifications WHERE processed_at_ms IS NULL AND deferred_at_ms IS NULL
             ORDER BY id LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Claims the oldest `limit` entries waiting for the batch applier, inside `tx`: on
    /// PostgreSQL they stay locked until `tx` ends and concurrent claimers skip them (a crash
    /// rolls the claim back with everything else); SQLite's write transaction already excludes
    /// every other writer.
    pub async fn claim_inbox_batch(&self, tx: &mut Tx, limit: usize) -> Result<Vec<InboxRow>, StorageError> {
        let sql = format!(
            "SELECT {INBOX_COLUMNS} FROM notifications WHERE processed_at_ms IS NULL AND deferred_at_ms IS NULL
             ORDER BY id LIMIT $1{}",
            self.dialect().skip_locked()
        );
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut **tx)
            .await?)
    }

    /// Marks a whole batch processed in one statement: (inbox id, outcome, detail) each.
    /// Returns how many rows it marked; fewer than given means another worker got there first
    /// and the caller rolls back.
    pub async fn mark_inbox_batch_processed(
        &self,
        tx: &mut Tx,
        done: &[(i64, String, Option<String>)],
        now_ms: i64,
    ) -> Result<u64, StorageError> {
        let mut marked = 0;
        for chunk in done.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = values_list(chunk.len(), 3, 2);
            let sql = format!(
                "WITH done (id, outcome, outcome_detail) AS (VALUES {rows})
                 UPDATE notifications SET processed_at_ms = $1, outcome = done.outcome,
                     outcome_detail = done.outcome_detail
                 FROM done WHERE notifications.id = done.id AND notifications.processed_at_ms IS NULL"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now_ms);
            for (id, outcome, detail) in chunk {
                query = query.bind(*id).bind(outcome.as_str()).bind(detail.as_deref());
            }
            marked += query.execute(&mut **tx).await?.rows_affected();
        }
        Ok(marked)
    }

    /// Hands an entry the batch could not apply to its own retried job: the batch claimer
    /// skips it from now on, and the sweeper re-enqueues it if that job is lost. Returns false
    /// when it was already deferred (or applied): two claimers that both failed on it then
    /// enqueue one job, not two.
    pub async fn defer_inbox(&self, id: i64, now_ms: i64) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "UPDATE notifications SET deferred_at_ms = $2, enqueued_at_ms = $2
             WHERE id = $1 AND processed_at_ms IS NULL AND deferred_at_ms IS NULL",
        )
        .bind(id)
        .bind(now_ms)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The deferred entry's job was dead-lettered: the sweeper stops re-enqueueing it (it would
    /// die again every sweep age); an operator's `jobs retry` hands it back
    /// ([`Self::inbox_job_retried`]).
    pub async fn inbox_job_dead(&self, id: i64, now_ms: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE notifications SET job_dead_at_ms = $2 WHERE id = $1 AND processed_at_ms IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// An operator re-enqueued the entry's dead job: the sweeper covers it again should that
    /// job be lost.
    pub async fn inbox_job_retried(&self, id: i64, now_ms: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE notifications SET job_dead_at_ms = NULL, enqueued_at_ms = $2 WHERE id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Claims up to `limit` deferred entries (see [`Self::defer_inbox`]) whose job was last
    /// queued before `cutoff_ms`, marking them queued now: each is re-enqueued at most once per
    /// sweep age, however long the backlog. Concurrent sweepers take disjoint rows. Entries
    /// waiting for the batch applier are its own, not the sweeper's, and an entry whose job is
    /// dead-lettered waits for an operator.
    pub async fn claim_stale_inbox(&self, cutoff_ms: i64, now_ms: i64, limit: i64) -> Result<Vec<i64>, StorageError> {
        let sql = format!(
            "UPDATE notifications SET enqueued_at_ms = $2
             WHERE id IN (SELECT id FROM notifications
                          WHERE processed_at_ms IS NULL AND deferred_at_ms IS NOT NULL
                            AND job_dead_at_ms IS NULL AND enqueued_at_ms <= $1
                          ORDER BY enqueued_at_ms LIMIT $3{})
             RETURNING id",
            self.dialect().skip_locked()
        );
        let rows: Vec<(i64,)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(cutoff_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(self.writer())
            .await?;
        let mut ids: Vec<i64> = rows.into_iter().map(|(id,)| id).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// (unprocessed count, received_at of the oldest unprocessed) for the lag gauges.
    pub async fn inbox_backlog(&self) -> Result<(i64, Option<i64>), StorageError> {
        Ok(sqlx::query_as("SELECT COUNT(*), MIN(received_at_ms) FROM notifications WHERE processed_at_ms IS NULL")
            .fetch_one(self.reader())
            .await?)
    }

    /// Stores a batch of rejection samples and deletes the oldest rows beyond `max_rows`, in
    /// one transaction: the table never holds more than `max_rows` once it commits, and the
    /// writer is held for one short transaction however many rejections arrive. Ids only grow,
    /// so "older than the `max_rows`-th newest id" is one index range on the primary key.
    /// Returns how many rows were pruned.
    pub async fn insert_rejections(&self, rows: &[Rejection], max_rows: u32) -> Result<u64, StorageError> {
        let mut tx = self.begin().await?;
        for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO notify_rejections (reason, detail, serial, notification_id, body_sha256, body_excerpt, received_at_ms)
                 VALUES {}",
                values_list(chunk.len(), 7, 1)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                query = query
                    .bind(r.reason)
                    .bind(r.detail.as_str())
                    .bind(r.serial.as_deref())
                    .bind(r.notification_id.as_deref())
                    .bind(r.body_sha256.as_str())
                    .bind(r.body_excerpt.as_str())
                    .bind(r.received_at_ms);
            }
            query.execute(&mut *tx).await?;
        }
        let pruned =
            sqlx::query("DELETE FROM notify_rejections WHERE id <= (SELECT MAX(id) FROM notify_rejections) - $1")
                .bind(i64::from(max_rows))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(pruned)
    }

    /// How many rejection samples are stored (the cap's test and the ops CLI).
    pub async fn rejection_rows(&self) -> Result<i64, StorageError> {
        Ok(sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM notify_rejections").fetch_one(self.reader()).await?.0)
    }

    /// Rejections by reason, for the ops CLI and tests.
    pub async fn rejection_counts(&self) -> Result<Vec<(String, i64)>, StorageError> {
        Ok(sqlx::query_as("SELECT reason, COUNT(*) FROM notify_rejections GROUP BY reason ORDER BY reason")
            .fetch_all(self.reader())
            .await?)
    }

    pub async fn insert_anomaly(&self, tx: &mut Tx, a: &Anomaly<'_>) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO anomalies (kind, source, out_trade_no, evidence, ours, theirs, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(a.kind.as_str())
        .bind(a.source.as_str())
        .bind(a.out_trade_no)
        .bind(a.evidence)
        .bind(a.ours)
        .bind(a.theirs)
        .bind(a.now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Anomalies recorded for one order (or all when `None`), oldest first.
    pub async fn anomalies(&self, out_trade_no: Option<&str>) -> Result<Vec<RecordedAnomaly>, StorageError> {
        let rows: Vec<AnomalyRow> = sqlx::query_as(
            "SELECT kind, source, out_trade_no, evidence, ours, theirs, created_at_ms
             FROM anomalies WHERE ($1 IS NULL OR out_trade_no = $1) ORDER BY id",
        )
        .bind(out_trade_no)
        .fetch_all(self.reader())
        .await?;
        rows.into_iter().map(RecordedAnomaly::try_from).collect()
    }
}
