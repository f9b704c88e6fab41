//! `orders`: creation, prepay bookkeeping, and the one guarded transition every status
//! change goes through (row re-read under lock, `UPDATE ... WHERE status IN (allowed)`, and an
//! `order_events` row in the same transaction). Rows become [`Order`]s here; a stored value
//! the domain does not know is [`StorageError::Corrupt`].

use sqlx::{AssertSqlSafe, FromRow};

use crate::domain::{EventSource, Evidence, Fen, Order, OrderStatus, OutTradeNo, TransactionId};

use super::events::NewEvent;
use super::{Db, StorageError, Tx, corrupt, in_list, values_list};

#[derive(Debug, Clone, FromRow)]
struct OrderRow {
    id: i64,
    out_trade_no: String,
    user_id: i64,
    payer_openid: String,
    product_id: String,
    quantity: i64,
    amount_fen: i64,
    description: String,
    status: String,
    prepay_id: Option<String>,
    prepay_at_ms: Option<i64>,
    transaction_id: Option<String>,
    time_expire_ms: i64,
    paid_at_ms: Option<i64>,
    closed_at_ms: Option<i64>,
    refunded_fen: i64,
    next_check_at_ms: Option<i64>,
    check_attempts: i64,
    version: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
}

const COLUMNS: &str = "id, out_trade_no, user_id, payer_openid, product_id, quantity, amount_fen, description, status, \
    prepay_id, prepay_at_ms, transaction_id, time_expire_ms, paid_at_ms, closed_at_ms, refunded_fen, next_check_at_ms, \
    check_attempts, version, created_at_ms, updated_at_ms";

impl TryFrom<OrderRow> for Order {
    type Error = StorageError;
    fn try_from(r: OrderRow) -> Result<Self, StorageError> {
        Ok(Order {
            id: r.id,
            out_trade_no: OutTradeNo::parse(&r.out_trade_no).map_err(corrupt)?,
            user_id: r.user_id,
            payer_openid: r.payer_openid,
            product_id: r.product_id,
            quantity: r.quantity,
            amount: Fen(r.amount_fen),
            description: r.description,
            status: r.status.parse().map_err(corrupt)?,
            prepay_id: r.prepay_id,
            prepay_at_ms: r.prepay_at_ms,
            // Older versions could store an empty text for "none yet".
            transaction_id: r
                .transaction_id
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(TransactionId::parse)
                .transpose()
                .map_err(corrupt)?,
            time_expire_ms: r.time_expire_ms,
            paid_at_ms: r.paid_at_ms,
            closed_at_ms: r.closed_at_ms,
            refunded: Fen(r.refunded_fen),
            next_check_at_ms: r.next_check_at_ms,
            check_attempts: r.check_attempts,
            version: r.version,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        })
    }
}

fn order(row: Option<OrderRow>) -> Result<Option<Order>, StorageError> {
    row.map(Order::try_from).transpose()
}

/// An order about to be created (status NOTPAY).
#[derive(Debug, Clone)]
pub struct NewOrder<'a> {
    pub out_trade_no: &'a OutTradeNo,
    pub user_id: i64,
    pub payer_openid: &'a str,
    pub product_id: &'a str,
    pub quantity: i64,
    pub amount: Fen,
    pub description: &'a str,
    pub time_expire_ms: i64,
    /// When the poller should first ask WeChat if nothing arrives before.
    pub first_check_at_ms: i64,
    pub now_ms: i64,
}

/// A status change to attempt, with its evidence.
#[derive(Debug, Clone)]
pub struct TransitionRequest<'a> {
    pub out_trade_no: &'a OutTradeNo,
    pub to: OrderStatus,
    pub evidence: &'a Evidence,
    pub transaction_id: Option<&'a TransactionId>,
    pub paid_at_ms: Option<i64>,
    pub note: Option<&'a str>,
    pub now_ms: i64,
}

/// One order a batch moves to SUCCESS (see [`Db::record_payments`]).
#[derive(Debug, Clone)]
pub struct PaidTransition {
    pub order_id: i64,
    pub transaction_id: Option<TransactionId>,
    pub paid_at_ms: i64,
}

/// Orders per statement at most in the batch statements, well under both backends' limits.
const BATCH_ROWS: usize = 256;

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
    pub async fn insert_order(&self, new: &NewOrder<'_>) -> Result<Order, StorageError> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO orders (out_trade_no, user_id, payer_openid, product_id, quantity, amount_fen, description,
                 status, time_expire_ms, next_check_at_ms, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
             RETURNING {COLUMNS}"
        );
        let row: OrderRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(new.out_trade_no.as_str())
            .bind(new.user_id)
            .bind(new.payer_openid)
            .bind(new.product_id)
            .bind(new.quantity)
            .bind(new.amount.0)
            .bind(new.description)
            .bind(OrderStatus::Notpay.as_str())
            .bind(new.time_expire_ms)
            .bind(new.first_check_at_ms)
            .bind(new.now_ms)
            .fetch_one(&mut *tx)
            .await?;
        let order = Order::try_from(row)?;
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

    /// Records the prepay_id WeChat answered and returns the order as it now stands (`None` if
    /// it is gone), so ordering needs no second read.
    /// Records a prepay_id, only on an order still NOTPAY: `None` if it is not (closed or paid
    /// while the prepay was in flight), and then its payment parameters must not be handed out.
    pub async fn set_prepay(&self, order_id: i64, prepay_id: &str, now_ms: i64) -> Result<Option<Order>, StorageError> {
        let sql = format!(
            "UPDATE orders SET prepay_id = $2, prepay_at_ms = $3, updated_at_ms = $3
             WHERE id = $1 AND status = '{}' RETURNING {COLUMNS}",
            crate::domain::OrderStatus::Notpay
        );
        let row = sqlx::query_as(AssertSqlSafe(sql))
            .bind(order_id)
            .bind(prepay_id)
            .bind(now_ms)
            .fetch_optional(self.writer())
            .await?;
        order(row)
    }

    pub async fn order_by_no(&self, out_trade_no: &OutTradeNo) -> Result<Option<Order>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE out_trade_no = $1");
        order(sqlx::query_as(AssertSqlSafe(sql)).bind(out_trade_no.as_str()).fetch_optional(self.reader()).await?)
    }

    /// The order, re-read inside `tx` under a row lock (PostgreSQL) or the write lock (SQLite).
    pub async fn lock_order(&self, tx: &mut Tx, out_trade_no: &OutTradeNo) -> Result<Option<Order>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE out_trade_no = $1{}", self.dialect().for_update());
        order(sqlx::query_as(AssertSqlSafe(sql)).bind(out_trade_no.as_str()).fetch_optional(&mut **tx).await?)
    }

    /// Every order named in `nos` that exists, re-read inside `tx` under row locks taken in id
    /// order (PostgreSQL; SQLite's write lock covers them): two batches naming the same orders
    /// wait for each other instead of deadlocking.
    pub async fn lock_orders(&self, tx: &mut Tx, nos: &[&OutTradeNo]) -> Result<Vec<Order>, StorageError> {
        let mut locked = Vec::with_capacity(nos.len());
        // One statement for any batch the settings allow: locks taken by two statements would
        // not be in one id order.
        for chunk in nos.chunks(crate::config::ApplySettings::MAX_BATCH) {
            let params = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT {COLUMNS} FROM orders WHERE out_trade_no IN ({params}) ORDER BY id{}",
                self.dialect().for_update()
            );
            let mut query = sqlx::query_as::<_, OrderRow>(AssertSqlSafe(sql));
            for no in chunk {
                query = query.bind(no.as_str());
            }
            for row in query.fetch_all(&mut **tx).await? {
                locked.push(Order::try_from(row)?);
            }
        }
        Ok(locked)
    }

    /// Moves a batch of locked orders to SUCCESS in one statement per [`BATCH_ROWS`], each
    /// guarded as [`Self::transition`] guards it. The caller decided every move from the rows it
    /// locked and appends the events ([`NewEvent::insert_many`]); a count below `paid.len()`
    /// means the books changed under it, and it rolls back.
    pub async fn record_payments(
        &self,
        tx: &mut Tx,
        paid: &[PaidTransition],
        now_ms: i64,
    ) -> Result<u64, StorageError> {
        let guard = in_list(OrderStatus::Success.allowed_from());
        let mut moved = 0;
        for chunk in paid.chunks(BATCH_ROWS) {
            let rows = values_list(chunk.len(), 3, 2);
            let sql = format!(
                "WITH paid (id, transaction_id, paid_at_ms) AS (VALUES {rows})
                 UPDATE orders SET status = '{success}',
                     transaction_id = COALESCE(paid.transaction_id, orders.transaction_id),
                     paid_at_ms = paid.paid_at_ms,
                     next_check_at_ms = NULL,
                     version = orders.version + 1,
                     updated_at_ms = $1
                 FROM paid WHERE orders.id = paid.id AND orders.status IN ({guard})",
                success = OrderStatus::Success.as_str(),
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now_ms);
            for p in chunk {
                query = query
                    .bind(p.order_id)
                    .bind(p.transaction_id.as_ref().map(TransactionId::as_str))
                    .bind(p.paid_at_ms);
            }
            moved += query.execute(&mut **tx).await?.rows_affected();
        }
        Ok(moved)
    }

    /// The one way an order's status changes. Inside `tx`: lock the row, check the move is
    /// allowed from its current status (the domain's rule), update guarded by that status, and
    /// append an event (applied or not). A duplicate or late message is therefore a recorded
    /// no-op.
    pub async fn transition(
        &self,
        tx: &mut Tx,
        req: &TransitionRequest<'_>,
    ) -> Result<TransitionOutcome, StorageError> {
        let Some(order) = self.lock_order(tx, req.out_trade_no).await? else {
            return Ok(TransitionOutcome::NotFound);
        };
        let current = order.status;
        let applied = if current.can_move_to(req.to) {
            let guard = in_list(req.to.allowed_from());
            let closing = req.to == OrderStatus::Closed;
            let sql = format!(
                "UPDATE orders SET status = $1,
                     transaction_id = COALESCE($2, transaction_id),
                     paid_at_ms = COALESCE($3, paid_at_ms),
                     closed_at_ms = CASE WHEN $6 = 1 THEN $4 ELSE closed_at_ms END,
                     next_check_at_ms = NULL,
                     version = version + 1,
                     updated_at_ms = $4
                 WHERE id = $5 AND status IN ({guard})"
            );
            let done = sqlx::query(AssertSqlSafe(sql))
                .bind(req.to.as_str())
                .bind(req.transaction_id.map(TransactionId::as_str))
                .bind(req.paid_at_ms)
                .bind(req.now_ms)
                .bind(order.id)
                .bind(i64::from(closing))
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
            source: req.evidence.source,
            evidence: Some(&req.evidence.reference),
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

    /// Adds a confirmed refund's amount to the order (inside the refund's transaction).
    pub async fn add_refunded(&self, tx: &mut Tx, order_id: i64, amount: Fen) -> Result<(), StorageError> {
        sqlx::query("UPDATE orders SET refunded_fen = refunded_fen + $2 WHERE id = $1")
            .bind(order_id)
            .bind(amount.0)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Orders by status, for the `wxpay_orders` gauge.
    pub async fn order_counts(&self) -> Result<Vec<(OrderStatus, i64)>, StorageError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM orders GROUP BY status").fetch_all(self.reader()).await?;
        rows.into_iter().map(|(status, n)| Ok((status.parse().map_err(corrupt)?, n))).collect()
    }

    /// The user's orders still open for payment (NOTPAY, not yet past `time_expire`) that
    /// were handed out for payment (they have a prepay_id): what the cap on open orders per user
    /// counts. An expired one stops counting before the poller closes it, and one whose prepay
    /// failed (WeChat away, our budget busy) never counts, so neither a slow poller nor a busy
    /// WeChat can lock a user out; order creation's own rate bounds those.
    pub async fn open_orders_of(&self, user_id: i64, now_ms: i64) -> Result<i64, StorageError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM orders WHERE user_id = $1 AND status = 'NOTPAY' AND time_expire_ms > $2 \
             AND prepay_id IS NOT NULL",
        )
        .bind(user_id)
        .bind(now_ms)
        .fetch_one(self.reader())
        .await?;
        Ok(n)
    }
}
