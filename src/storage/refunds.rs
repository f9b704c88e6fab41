//! `refunds`: what we applied for, and the one place a refund's success moves money on the
//! order (`refunded_fen`, status REFUND) together with the refund row, in one transaction.

use sqlx::{AssertSqlSafe, FromRow};

use crate::domain::{EventSource, OrderStatus};

use super::orders::{TransitionOutcome, TransitionRequest};
use super::{Db, StorageError, Tx};

#[derive(Debug, Clone, PartialEq, Eq, FromRow, serde::Serialize)]
pub struct RefundRow {
    pub id: i64,
    pub out_refund_no: String,
    pub order_id: i64,
    pub out_trade_no: String,
    pub amount_fen: i64,
    pub reason: Option<String>,
    pub status: String,
    pub refund_id: Option<String>,
    pub requested_at_ms: i64,
    pub success_at_ms: Option<i64>,
    pub next_check_at_ms: Option<i64>,
    pub check_attempts: i64,
    pub updated_at_ms: i64,
}

const COLUMNS: &str = "id, out_refund_no, order_id, out_trade_no, amount_fen, reason, status, refund_id, \
    requested_at_ms, success_at_ms, next_check_at_ms, check_attempts, updated_at_ms";

/// Why a refund could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundRefusal {
    NoOrder,
    NotPaid(String),
    /// More than what is left: (asked, left).
    TooMuch(i64, i64),
}

/// What applying a refund's success did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Applied,
    /// Already SUCCESS: a recorded no-op.
    Duplicate,
    /// Evidence that contradicts our refund (amount, order); not applied.
    Mismatch(String),
    Unknown,
}

impl Db {
    /// Records a refund REQUESTED for `out_trade_no` if the amount fits what is left (paid
    /// minus every refund not CLOSED), checked under the order's lock.
    pub async fn insert_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
        amount_fen: i64,
        reason: Option<&str>,
        now_ms: i64,
        first_check_at_ms: i64,
    ) -> Result<Result<RefundRow, RefundRefusal>, StorageError> {
        let mut tx = self.begin().await?;
        let Some(order) = self.lock_order(&mut tx, out_trade_no).await? else {
            return Ok(Err(RefundRefusal::NoOrder));
        };
        if !matches!(order.status.as_str(), "SUCCESS" | "REFUND") {
            return Ok(Err(RefundRefusal::NotPaid(order.status)));
        }
        let (committed,): (Option<i64>,) = sqlx::query_as(
            "SELECT CAST(SUM(amount_fen) AS BIGINT) FROM refunds WHERE order_id = $1 AND status <> 'CLOSED'",
        )
        .bind(order.id)
        .fetch_one(&mut *tx)
        .await?;
        let left = order.amount_fen - committed.unwrap_or(0);
        if amount_fen > left {
            return Ok(Err(RefundRefusal::TooMuch(amount_fen, left)));
        }
        let sql = format!(
            "INSERT INTO refunds (out_refund_no, order_id, out_trade_no, amount_fen, reason, status, requested_at_ms,
                 next_check_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, 'REQUESTED', $6, $7, $6) RETURNING {COLUMNS}"
        );
        let row: RefundRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(out_refund_no)
            .bind(order.id)
            .bind(out_trade_no)
            .bind(amount_fen)
            .bind(reason)
            .bind(now_ms)
            .bind(first_check_at_ms)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(row))
    }

    pub async fn refund_by_no(&self, out_refund_no: &str) -> Result<Option<RefundRow>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM refunds WHERE out_refund_no = $1");
        Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(out_refund_no).fetch_optional(self.reader()).await?)
    }

    pub async fn refunds_of_order(&self, order_id: i64) -> Result<Vec<RefundRow>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM refunds WHERE order_id = $1 ORDER BY id");
        Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(order_id).fetch_all(self.reader()).await?)
    }

    /// Refunds applied for in `[from_ms, to_ms)`: the REFUND rows of that WeChat day's bill.
    pub async fn refunds_requested_between(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RefundRow>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM refunds WHERE requested_at_ms >= $1 AND requested_at_ms < $2");
        Ok(sqlx::query_as(AssertSqlSafe(sql)).bind(from_ms).bind(to_ms).fetch_all(self.reader()).await?)
    }

    /// A non-final status WeChat reported (PROCESSING), with the next check.
    pub async fn update_refund_pending(
        &self,
        out_refund_no: &str,
        status: &str,
        refund_id: Option<&str>,
        next_check_at_ms: Option<i64>,
        now_ms: i64,
        count_check: bool,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE refunds SET status = $2, refund_id = COALESCE($3, refund_id), next_check_at_ms = $4,
                 check_attempts = check_attempts + $6, updated_at_ms = $5
             WHERE out_refund_no = $1 AND status IN ('REQUESTED', 'PROCESSING')",
        )
        .bind(out_refund_no)
        .bind(status)
        .bind(refund_id)
        .bind(next_check_at_ms)
        .bind(now_ms)
        .bind(i64::from(count_check))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// CLOSED or ABNORMAL: final for polling (ABNORMAL needs an operator), no money moved.
    pub async fn finish_refund_unpaid(
        &self,
        tx: &mut Tx,
        out_refund_no: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "UPDATE refunds SET status = $2, next_check_at_ms = NULL, updated_at_ms = $3
             WHERE out_refund_no = $1 AND status IN ('REQUESTED', 'PROCESSING')",
        )
        .bind(out_refund_no)
        .bind(status)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The refund succeeded: in `tx`, the refund becomes SUCCESS, the order's refunded_fen
    /// grows by its amount and the order moves to REFUND (an event per refund).
    #[expect(clippy::too_many_arguments, reason = "every piece of the evidence is recorded")]
    pub async fn apply_refund_success(
        &self,
        tx: &mut Tx,
        out_refund_no: &str,
        refund_id: &str,
        amount_fen: i64,
        success_at_ms: i64,
        source: EventSource,
        evidence: &str,
        now_ms: i64,
    ) -> Result<RefundOutcome, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM refunds WHERE out_refund_no = $1{}", self.dialect().for_update());
        let Some(refund): Option<RefundRow> =
            sqlx::query_as(AssertSqlSafe(sql)).bind(out_refund_no).fetch_optional(&mut **tx).await?
        else {
            return Ok(RefundOutcome::Unknown);
        };
        if refund.status == "SUCCESS" {
            return Ok(RefundOutcome::Duplicate);
        }
        if refund.amount_fen != amount_fen {
            return Ok(RefundOutcome::Mismatch(format!(
                "refund amount: ours {}, WeChat {amount_fen}",
                refund.amount_fen
            )));
        }
        let Some(order) = self.lock_order(tx, &refund.out_trade_no).await? else {
            return Ok(RefundOutcome::Unknown);
        };
        if order.refunded_fen + amount_fen > order.amount_fen {
            return Ok(RefundOutcome::Mismatch(format!(
                "refunds would exceed the order: {} + {amount_fen} > {}",
                order.refunded_fen, order.amount_fen
            )));
        }
        sqlx::query(
            "UPDATE refunds SET status = 'SUCCESS', refund_id = $2, success_at_ms = $3, next_check_at_ms = NULL,
                 updated_at_ms = $4 WHERE id = $1",
        )
        .bind(refund.id)
        .bind(refund_id)
        .bind(success_at_ms)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE orders SET refunded_fen = refunded_fen + $2 WHERE id = $1")
            .bind(order.id)
            .bind(amount_fen)
            .execute(&mut **tx)
            .await?;
        let note = format!("refund {out_refund_no}: {amount_fen} fen");
        let request = TransitionRequest {
            out_trade_no: &order.out_trade_no,
            to: OrderStatus::Refund,
            source,
            evidence: Some(evidence),
            transaction_id: None,
            paid_at_ms: None,
            note: Some(&note),
            now_ms,
        };
        match self.transition(tx, &request).await? {
            TransitionOutcome::Applied { .. } => Ok(RefundOutcome::Applied),
            other => Ok(RefundOutcome::Mismatch(format!("order could not move to REFUND: {other:?}"))),
        }
    }

    /// Claims refunds due for a check (see `claim_due_orders`).
    pub async fn claim_due_refunds(
        &self,
        now_ms: i64,
        claim_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, StorageError> {
        let sql = format!(
            "UPDATE refunds SET next_check_at_ms = $2
             WHERE id IN (SELECT id FROM refunds
                          WHERE status IN ('REQUESTED', 'PROCESSING') AND next_check_at_ms IS NOT NULL
                            AND next_check_at_ms <= $1
                          ORDER BY next_check_at_ms LIMIT $3{})
             RETURNING out_refund_no",
            self.dialect().skip_locked()
        );
        self.run_claim(sql, now_ms, claim_until_ms, limit).await
    }
}
