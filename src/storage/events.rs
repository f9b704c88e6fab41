//! `order_events`: the append-only history of each order.

use sqlx::{AssertSqlSafe, FromRow};

use crate::domain::{EventSource, OrderStatus};

use super::{Db, StorageError, Tx, values_list};

/// One event to append, inside the transaction that made (or refused) the change.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub order_id: i64,
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub applied: bool,
    pub source: EventSource,
    pub evidence: Option<&'a str>,
    pub note: Option<&'a str>,
    pub now_ms: i64,
}

impl NewEvent<'_> {
    pub async fn insert(&self, tx: &mut Tx) -> Result<(), StorageError> {
        Self::insert_many(tx, std::slice::from_ref(self)).await
    }

    /// Appends many events in one statement per 256 (a batch's history), in the given order.
    pub async fn insert_many(tx: &mut Tx, events: &[NewEvent<'_>]) -> Result<(), StorageError> {
        for chunk in events.chunks(256) {
            let sql = format!(
                "INSERT INTO order_events (order_id, from_status, to_status, applied, source, evidence, note, created_at_ms)
                 VALUES {}",
                values_list(chunk.len(), 8, 1)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                query = query
                    .bind(e.order_id)
                    .bind(e.from.map(OrderStatus::as_str))
                    .bind(e.to.as_str())
                    .bind(i64::from(e.applied))
                    .bind(e.source.as_str())
                    .bind(e.evidence)
                    .bind(e.note)
                    .bind(e.now_ms);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub from_status: Option<String>,
    pub to_status: String,
    pub applied: i64,
    pub source: String,
    pub evidence: Option<String>,
    pub note: Option<String>,
    pub created_at_ms: i64,
}

impl Db {
    pub async fn order_events(&self, order_id: i64) -> Result<Vec<EventRow>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT id, from_status, to_status, applied, source, evidence, note, created_at_ms
             FROM order_events WHERE order_id = $1 ORDER BY id",
        )
        .bind(order_id)
        .fetch_all(self.reader())
        .await?)
    }
}
