//! `orders`: creation, prepay bookkeeping, and the one guarded transition every status
//! change goes through (row re-read under lock, `UPDATE ... WHERE status IN (allowed)`, and an
//! `order_events` row in the same transaction).

use sqlx::FromRow;

use crate::domain::{EventSource, OrderStatus};

use sqlx::AssertSqlSafe;

use super::events::NewEvent;
use super::{Db, StorageError, Tx};

#[derive(Debug, Clone, FromRow)]
pub struct OrderRow {
    pub id: i64,
    pub out_trade_no: String,
    pub user_id: i64,
    pub payer_openid: String,
    pub product_id: String,
    pub quantity: i64,
    pub amount_fen: i64,
    pub description: String,
    pub status: String,
    pub prepay_id: Option<String>,
    pub prepay_at_ms: Option<i64>,
    pub transaction_id: Option<String>,
    pub time_expire_ms: i64,
    pub paid_at_ms: Option<i64>,
    pub closed_at_ms: Option<i64>,
    pub refunded_fen: i64,
    pub next_check_at_ms: Option<i64>,
    pub check_attempts: i64,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

const COLUMNS: &str = "id, out_trade_no, user_id, payer_openid, product_id, quantity, amount_fen, description, status, \
    prepay_id, prepay_at_ms, transaction_id, time_expire_ms, paid_at_ms, closed_at_ms, refunded_fen, next_check_at_ms, \
    check_attempts, version, created_at_ms, updated_at_ms";

impl OrderRow {
    pub fn status(&self) -> Result<OrderStatus, StorageError> {
        self.status.parse().map_err(|e: crate::domain::order::UnknownStatus| StorageError::Corrupt(e.to_string()))
    }
}

/// An order about to be created (status NOTPAY).
#[derive(Debug, Clone)]
pub struct NewOrder<'a> {
    pub out_trade_no: &'a str,
    pub user_id: i64,
    pub payer_openid: &'a str,
    pub product_id: &'a str,
    pub quantity: i64,
    pub amount_fen: i64,
    pub description: &'a str,
    pub time_expire_ms: i64,
    /// When the poller should first ask WeChat if nothing arrives before.
    pub first_check_at_ms: i64,
    pub now_ms: i64,
}

/// A status change to attempt, with its evidence.
#[derive(Debug, Clone)]
pub struct TransitionRequest<'a> {
    pub out_trade_no: &'a str,
    pub to: OrderStatus,
    pub source: EventSource,
    pub evidence: Option<&'a str>,
    pub transaction_id: Option<&'a str>,
    pub paid_at_ms: Option<i64>,
    pub note: Option<&'a str>,
    pub now_ms: i64,
}

/// What the guarded transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    /// The status changed from `from` to the requested one.
    Applied {
        order_id: i64,
        from: OrderStatus,
    },
    /// The order was in a status the move is not allowed from (duplicate, late or
    /// contradicting evidence); a no-op event was recorded.
    NotApplied {
        order_id: i64,
        current: OrderStatus,
    },
    NotFound,
}

impl Db {
    /// Inserts a NOTPAY order and its creation event in one transaction.
    pub async fn insert_order(&self, new: &NewOrder<'_>) -> Result<OrderRow, StorageError> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO orders (out_trade_no, user_id, payer_openid, product_id, quantity, amount_fen, description,
                 status, time_expire_ms, next_check_at_ms, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'NOTPAY', $8, $9, $10, $10)
             RETURNING {COLUMNS}"
        );
        let order: OrderRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(new.out_trade_no)
            .bind(new.user_id)
            .bind(new.payer_openid)
            .bind(new.product_id)
            .bind(new.quantity)
            .bind(new.amount_fen)
            .bind(new.description)
            .bind(new.time_expire_ms)
            .bind(new.first_check_at_ms)
            .bind(new.now_ms)
            .fetch_one(&mut *tx)
            .await?;
        NewEvent {
            order_id: order.id,
            from: None,
            to: OrderStatus::Notpay,
            applied: true,
            source: EventSource::Api,
            evidence: None,
            note: Some("created"),
            now_ms: new.now_ms,
        }
        .insert(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(order)
    }

    pub async fn set_prepay(&self, order_id: i64, prepay_id: &str, now_ms: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE orders SET prepay_id = $2, prepay_at_ms = $3, updated_at_ms = $3 WHERE id = $1")
            .bind(order_id)
            .bind(prepay_id)
            .bind(now_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    pub async fn order_by_no(&self, out_trade_no: &str) -> Result<Option<OrderRow>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE out_trade_no = $1");
        Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(out_trade_no).fetch_optional(self.reader()).await?)
    }

    /// The order, re-read inside `tx` under a row lock (PostgreSQL) or the write lock (SQLite).
    pub async fn lock_order(&self, tx: &mut Tx, out_trade_no: &str) -> Result<Option<OrderRow>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE out_trade_no = $1{}", self.dialect().for_update());
        Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(out_trade_no).fetch_optional(&mut **tx).await?)
    }

    /// The one way an order's status changes. Inside `tx`: lock the row, check the move is
    /// allowed from its current status, update guarded by that status, and append an event
    /// (applied or not). A duplicate or late message is therefore a recorded no-op.
    pub async fn transition(
        &self,
        tx: &mut Tx,
        req: &TransitionRequest<'_>,
    ) -> Result<TransitionOutcome, StorageError> {
        let Some(order) = self.lock_order(tx, req.out_trade_no).await? else {
            return Ok(TransitionOutcome::NotFound);
        };
        let current = order.status()?;
        let applied = if current.can_move_to(req.to) {
            let guard = in_list(req.to.allowed_from());
            let sql = format!(
                "UPDATE orders SET status = $1,
                     transaction_id = COALESCE($2, transaction_id),
                     paid_at_ms = COALESCE($3, paid_at_ms),
                     closed_at_ms = CASE WHEN $1 = 'CLOSED' THEN $4 ELSE closed_at_ms END,
                     next_check_at_ms = NULL,
                     version = version + 1,
                     updated_at_ms = $4
                 WHERE id = $5 AND status IN ({guard})"
            );
            let done = sqlx::query(AssertSqlSafe(sql))
                .bind(req.to.as_str())
                .bind(req.transaction_id)
                .bind(req.paid_at_ms)
                .bind(req.now_ms)
                .bind(order.id)
                .execute(&mut **tx)
                .await?;
            done.rows_affected() == 1
        } else {
            false
        };
        NewEvent {
            order_id: order.id,
            from: Some(current),
            to: req.to,
            applied,
            source: req.source,
            evidence: req.evidence,
            note: req.note,
            now_ms: req.now_ms,
        }
        .insert(tx)
        .await?;
        Ok(if applied {
            TransitionOutcome::Applied { order_id: order.id, from: current }
        } else {
            TransitionOutcome::NotApplied { order_id: order.id, current }
        })
    }

    /// Orders by status, for the `wxpay_orders` gauge.
    pub async fn order_counts(&self) -> Result<Vec<(String, i64)>, StorageError> {
        Ok(sqlx::query_as("SELECT status, COUNT(*) FROM orders GROUP BY status").fetch_all(self.reader()).await?)
    }
}

/// `'A', 'B'` for a guard; statuses are our own constants, never user input.
fn in_list(statuses: &[OrderStatus]) -> String {
    statuses.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
}
