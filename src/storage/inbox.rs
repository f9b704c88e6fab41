//! `notifications` (the inbox), `notify_rejections` and `anomalies`.
//!
//! The inbox write is batched: many verified notifications are upserted in one statement and
//! one commit, and each caller learns whether its notification was new.

use std::collections::{HashMap, HashSet};

use sqlx::FromRow;

use sqlx::AssertSqlSafe;

use super::{Db, StorageError, Tx};

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

/// A rejected notification, kept so the rejection can be explained later.
#[derive(Debug, Clone)]
pub struct Rejection<'a> {
    pub reason: &'a str,
    pub detail: &'a str,
    pub serial: Option<&'a str>,
    pub notification_id: Option<&'a str>,
    pub body_sha256: &'a str,
    pub body_excerpt: &'a str,
    pub now_ms: i64,
}

/// Evidence we refused to apply.
#[derive(Debug, Clone)]
pub struct Anomaly<'a> {
    pub kind: &'a str,
    pub source: &'a str,
    pub out_trade_no: Option<&'a str>,
    pub evidence: Option<&'a str>,
    pub ours: Option<&'a str>,
    pub theirs: Option<&'a str>,
    pub now_ms: i64,
}

impl Db {
    /// Upserts a batch in one statement and one commit. Deliveries of the same notification id
    /// within the batch are folded first (a statement may not touch a row twice); every input
    /// row gets the resulting state, in input order.
    pub async fn upsert_inbox_batch(&self, rows: &[NewInboxRow]) -> Result<Vec<InboxUpsert>, StorageError> {
        let mut unique: Vec<(&NewInboxRow, i64)> = Vec::with_capacity(rows.len());
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
        for row in rows {
            match index.get(row.notification_id.as_str()) {
                Some(&i) => unique[i].1 += 1,
                None => {
                    index.insert(&row.notification_id, unique.len());
                    unique.push((row, 1));
                }
            }
        }
        let mut sql = String::from(
            "INSERT INTO notifications (notification_id, event_type, resource_type, summary, create_time, serial,
                 wechat_timestamp, wechat_nonce, signature, raw_body, resource_json, out_trade_no, deliveries,
                 received_at_ms, last_delivery_at_ms, enqueued_at_ms) VALUES ",
        );
        for i in 0..unique.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..NEW_COLUMNS {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", i * NEW_COLUMNS + c + 1));
            }
            sql.push(')');
        }
        sql.push_str(
            " ON CONFLICT (notification_id) DO UPDATE SET
                 deliveries = notifications.deliveries + excluded.deliveries,
                 last_delivery_at_ms = excluded.last_delivery_at_ms
             RETURNING id, notification_id, deliveries, processed_at_ms",
        );
        let mut query = sqlx::query_as::<_, (i64, String, i64, Option<i64>)>(AssertSqlSafe(sql));
        for (row, count) in &unique {
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
        let mut tx = self.begin().await?;
        let returned = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;

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
            let added_by_batch = index.get(row.notification_id.as_str()).map_or(0, |&i| unique[i].1);
            // deliveries == what this batch added <=> the row did not exist before; and only
            // the first copy within the batch is the first delivery.
            let first_delivery = deliveries == added_by_batch && seen.insert(row.notification_id.as_str());
            out.push(InboxUpsert { id, first_delivery, processed });
        }
        Ok(out)
    }

    pub async fn inbox_entry(&self, id: i64) -> Result<Option<InboxRow>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT id, notification_id, event_type, resource_json, out_trade_no, deliveries, received_at_ms,
                    processed_at_ms, outcome
             FROM notifications WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.reader())
        .await?)
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

    /// Claims up to `limit` unprocessed entries whose apply job was last queued before
    /// `cutoff_ms`, marking them queued now: each stuck entry is re-enqueued at most once per
    /// sweep age, however long the backlog. Concurrent sweepers take disjoint rows.
    pub async fn claim_stale_inbox(&self, cutoff_ms: i64, now_ms: i64, limit: i64) -> Result<Vec<i64>, StorageError> {
        let sql = format!(
            "UPDATE notifications SET enqueued_at_ms = $2
             WHERE id IN (SELECT id FROM notifications
                          WHERE processed_at_ms IS NULL AND enqueued_at_ms <= $1
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

    pub async fn insert_rejection(&self, r: &Rejection<'_>) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO notify_rejections (reason, detail, serial, notification_id, body_sha256, body_excerpt, received_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(r.reason)
        .bind(r.detail)
        .bind(r.serial)
        .bind(r.notification_id)
        .bind(r.body_sha256)
        .bind(r.body_excerpt)
        .bind(r.now_ms)
        .execute(self.writer())
        .await?;
        Ok(())
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
        .bind(a.kind)
        .bind(a.source)
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
    pub async fn anomalies(
        &self,
        out_trade_no: Option<&str>,
    ) -> Result<Vec<(String, String, Option<String>)>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT kind, source, out_trade_no FROM anomalies WHERE ($1 IS NULL OR out_trade_no = $1) ORDER BY id",
        )
        .bind(out_trade_no)
        .fetch_all(self.reader())
        .await?)
    }
}
