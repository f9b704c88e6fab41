//! `refunds`: the statements behind a refund's life. Rows become [`Refund`]s here. Which
//! refund may be recorded, and what a report from WeChat does to it, are decided by the
//! services (with `domain::refund`'s rules) inside the transactions these functions take.

use sqlx::{AssertSqlSafe, FromRow};

use crate::domain::{Fen, OutRefundNo, OutTradeNo, Refund, RefundStatus};

use super::{Db, StorageError, Tx, corrupt, in_list};

#[derive(Debug, Clone, FromRow)]
struct RefundRow {
    id: i64,
    out_refund_no: String,
    order_id: i64,
    out_trade_no: String,
    amount_fen: i64,
    reason: Option<String>,
    status: String,
    refund_id: Option<String>,
    requested_at_ms: i64,
    wechat_created_at_ms: Option<i64>,
    settled_fen: Option<i64>,
    success_at_ms: Option<i64>,
    next_check_at_ms: Option<i64>,
    check_attempts: i64,
    updated_at_ms: i64,
}

const COLUMNS: &str = "id, out_refund_no, order_id, out_trade_no, amount_fen, reason, status, refund_id, \
    requested_at_ms, wechat_created_at_ms, settled_fen, success_at_ms, next_check_at_ms, check_attempts, updated_at_ms";

/// A refund's bill day instant: WeChat's acceptance when an answer told it, else our request.
const BILL_INSTANT: &str = "COALESCE(wechat_created_at_ms, requested_at_ms)";

impl TryFrom<RefundRow> for Refund {
    type Error = StorageError;
    fn try_from(r: RefundRow) -> Result<Self, StorageError> {
        Ok(Refund {
            id: r.id,
            out_refund_no: OutRefundNo::parse(&r.out_refund_no).map_err(corrupt)?,
            order_id: r.order_id,
            out_trade_no: OutTradeNo::parse(&r.out_trade_no).map_err(corrupt)?,
            amount: Fen(r.amount_fen),
            reason: r.reason,
            status: r.status.parse().map_err(corrupt)?,
            refund_id: r.refund_id,
            requested_at_ms: r.requested_at_ms,
            wechat_created_at_ms: r.wechat_created_at_ms,
            settled: r.settled_fen.map(Fen),
            success_at_ms: r.success_at_ms,
            next_check_at_ms: r.next_check_at_ms,
            check_attempts: r.check_attempts,
            updated_at_ms: r.updated_at_ms,
        })
    }
}

fn refunds(rows: Vec<RefundRow>) -> Result<Vec<Refund>, StorageError> {
    rows.into_iter().map(Refund::try_from).collect()
}

/// A refund about to be recorded (status REQUESTED).
#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    pub out_refund_no: &'a OutRefundNo,
    pub order_id: i64,
    pub out_trade_no: &'a OutTradeNo,
    pub amount: Fen,
    pub reason: Option<&'a str>,
    pub first_check_at_ms: i64,
    pub now_ms: i64,
}

/// A non-final status WeChat reported, with the next check.
#[derive(Debug, Clone)]
pub struct RefundPending<'a> {
    pub out_refund_no: &'a OutRefundNo,
    pub refund_id: Option<&'a str>,
    pub next_check_at_ms: i64,
    /// The poller asked (a check is counted); an answer to the application is not.
    pub counted: bool,
    /// What the answer told about the refund besides its status.
    pub facts: RefundFacts,
    pub now_ms: i64,
}

/// Facts about a refund only WeChat's answers carry; each is kept once known.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefundFacts {
    /// WeChat's `create_time` (ms): the refund's bill day.
    pub wechat_created_at_ms: Option<i64>,
    /// `amount.settlement_refund`: what WeChat pays back.
    pub settled: Option<Fen>,
}

impl Db {
    /// The sum of the order's refunds that hold an amount (every one but CLOSED), in `tx`.
    pub async fn refunds_held(&self, tx: &mut Tx, order_id: i64) -> Result<Fen, StorageError> {
        let holding: Vec<RefundStatus> = RefundStatus::ALL.into_iter().filter(|s| s.holds_amount()).collect();
        let sql = format!(
            "SELECT CAST(SUM(amount_fen) AS BIGINT) FROM refunds WHERE order_id = $1 AND status IN ({})",
            in_list(&holding)
        );
        let (held,): (Option<i64>,) = sqlx::query_as(AssertSqlSafe(sql)).bind(order_id).fetch_one(&mut **tx).await?;
        Ok(Fen(held.unwrap_or(0)))
    }

    /// Records a refund REQUESTED, in `tx` (the caller checked it under the order's lock).
    pub async fn insert_refund(&self, tx: &mut Tx, new: &NewRefund<'_>) -> Result<Refund, StorageError> {
        let sql = format!(
            "INSERT INTO refunds (out_refund_no, order_id, out_trade_no, amount_fen, reason, status, requested_at_ms,
                 next_check_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7) RETURNING {COLUMNS}"
        );
        let row: RefundRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(new.out_refund_no.as_str())
            .bind(new.order_id)
            .bind(new.out_trade_no.as_str())
            .bind(new.amount.0)
            .bind(new.reason)
            .bind(RefundStatus::Requested.as_str())
            .bind(new.now_ms)
            .bind(new.first_check_at_ms)
            .fetch_one(&mut **tx)
            .await?;
        Refund::try_from(row)
    }

    pub async fn refund_by_no(&self, out_refund_no: &OutRefundNo) -> Result<Option<Refund>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM refunds WHERE out_refund_no = $1");
        let row: Option<RefundRow> =
            sqlx::query_as(AssertSqlSafe(sql)).bind(out_refund_no.as_str()).fetch_optional(self.reader()).await?;
        row.map(Refund::try_from).transpose()
    }

    /// The refund, re-read inside `tx` under a row lock (PostgreSQL) or the write lock (SQLite).
    pub async fn lock_refund(&self, tx: &mut Tx, out_refund_no: &OutRefundNo) -> Result<Option<Refund>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM refunds WHERE out_refund_no = $1{}", self.dialect().for_update());
        let row: Option<RefundRow> =
            sqlx::query_as(AssertSqlSafe(sql)).bind(out_refund_no.as_str()).fetch_optional(&mut **tx).await?;
        row.map(Refund::try_from).transpose()
    }

    pub async fn refunds_of_order(&self, order_id: i64) -> Result<Vec<Refund>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM refunds WHERE order_id = $1 ORDER BY id");
        refunds(sqlx::query_as(AssertSqlSafe(sql)).bind(order_id).fetch_all(self.reader()).await?)
    }

    /// Refunds WeChat accepted in `[from_ms, to_ms)`: the REFUND rows of that WeChat day's bill.
    /// WeChat prints a refund on the day it accepted it (its `create_time`); a refund whose
    /// acceptance time we never learnt counts on the day we applied for it.
    pub async fn refunds_of_bill_window(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Refund>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM refunds WHERE {BILL_INSTANT} >= $1 AND {BILL_INSTANT} < $2");
        refunds(sqlx::query_as(AssertSqlSafe(sql)).bind(from_ms).bind(to_ms).fetch_all(self.reader()).await?)
    }

    /// Keeps what WeChat's answer told about the refund (values already known stay), in `tx`.
    pub async fn record_refund_facts(
        &self,
        tx: &mut Tx,
        out_refund_no: &OutRefundNo,
        facts: RefundFacts,
    ) -> Result<(), StorageError> {
        if facts.wechat_created_at_ms.is_none() && facts.settled.is_none() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE refunds SET wechat_created_at_ms = COALESCE(wechat_created_at_ms, $2),
                 settled_fen = COALESCE($3, settled_fen)
             WHERE out_refund_no = $1",
        )
        .bind(out_refund_no.as_str())
        .bind(facts.wechat_created_at_ms)
        .bind(facts.settled.map(|f| f.0))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The next slow check of an ABNORMAL refund (an operator may resolve it at WeChat).
    pub async fn reschedule_abnormal_refund(
        &self,
        out_refund_no: &OutRefundNo,
        next_check_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE refunds SET next_check_at_ms = $2, check_attempts = check_attempts + 1, updated_at_ms = $3
             WHERE out_refund_no = $1 AND status = 'ABNORMAL'",
        )
        .bind(out_refund_no.as_str())
        .bind(next_check_at_ms)
        .bind(now_ms)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// How many refunds are ABNORMAL now (the `wxpay_refunds_abnormal` gauge).
    pub async fn abnormal_refund_count(&self) -> Result<i64, StorageError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM refunds WHERE status = 'ABNORMAL'").fetch_one(self.reader()).await?;
        Ok(n)
    }

    /// WeChat is still processing the refund: PROCESSING, with the next check.
    pub async fn update_refund_pending(&self, pending: &RefundPending<'_>) -> Result<(), StorageError> {
        let sql = format!(
            "UPDATE refunds SET status = $2, refund_id = COALESCE($3, refund_id), next_check_at_ms = $4,
                 check_attempts = check_attempts + $6, updated_at_ms = $5,
                 wechat_created_at_ms = COALESCE(wechat_created_at_ms, $7), settled_fen = COALESCE($8, settled_fen)
             WHERE out_refund_no = $1 AND status IN ({})",
            in_list(&RefundStatus::OPEN)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(pending.out_refund_no.as_str())
            .bind(RefundStatus::Processing.as_str())
            .bind(pending.refund_id)
            .bind(pending.next_check_at_ms)
            .bind(pending.now_ms)
            .bind(i64::from(pending.counted))
            .bind(pending.facts.wechat_created_at_ms)
            .bind(pending.facts.settled.map(|f| f.0))
            .execute(self.writer())
            .await?;
        let facts = &pending.facts;
        if done.rows_affected() == 0 && (facts.wechat_created_at_ms.is_some() || facts.settled.is_some()) {
            // The refund moved on first (its REFUND.SUCCESS notification was applied before this
            // answer was read back); the answer's facts still belong to it, and notifications
            // carry neither: without them the refund would fall in the wrong bill day.
            sqlx::query(
                "UPDATE refunds SET wechat_created_at_ms = COALESCE(wechat_created_at_ms, $2),
                     settled_fen = COALESCE($3, settled_fen)
                 WHERE out_refund_no = $1",
            )
            .bind(pending.out_refund_no.as_str())
            .bind(facts.wechat_created_at_ms)
            .bind(facts.settled.map(|f| f.0))
            .execute(self.writer())
            .await?;
        }
        Ok(())
    }

    /// Moves a refund to `status` from any status allowed to move there (the domain's table),
    /// in `tx`; false when it was not in one. SUCCESS also records WeChat's number and time.
    /// `next_check_at_ms` keeps it on the poll (ABNORMAL's slow check); `None` takes it off.
    pub async fn finish_refund(
        &self,
        tx: &mut Tx,
        out_refund_no: &OutRefundNo,
        status: RefundStatus,
        success: Option<(&str, i64)>,
        next_check_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let sql = format!(
            "UPDATE refunds SET status = $2, refund_id = COALESCE($3, refund_id), success_at_ms = $4,
                 next_check_at_ms = $6, updated_at_ms = $5
             WHERE out_refund_no = $1 AND status IN ({})",
            in_list(&status.allowed_from())
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(out_refund_no.as_str())
            .bind(status.as_str())
            .bind(success.map(|s| s.0))
            .bind(success.map(|s| s.1))
            .bind(now_ms)
            .bind(next_check_at_ms)
            .execute(&mut **tx)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes a refund off the poll (WeChat's answer contradicts it: an operator's case).
    pub async fn stop_refund_checks(&self, out_refund_no: &OutRefundNo, now_ms: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE refunds SET next_check_at_ms = NULL, updated_at_ms = $2 WHERE out_refund_no = $1")
            .bind(out_refund_no.as_str())
            .bind(now_ms)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Claims refunds due for a check (see `claim_due_orders`): open ones and ABNORMAL ones
    /// (`RefundStatus::POLLED`, the statuses of the partial index `refunds_due`).
    pub async fn claim_due_refunds(
        &self,
        now_ms: i64,
        claim_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, StorageError> {
        let sql = format!(
            "UPDATE refunds SET next_check_at_ms = $2
             WHERE id IN (SELECT id FROM refunds
                          WHERE status IN ({}) AND next_check_at_ms IS NOT NULL
                            AND next_check_at_ms <= $1
                          ORDER BY next_check_at_ms LIMIT $3{})
             RETURNING out_refund_no",
            in_list(&RefundStatus::POLLED),
            self.dialect().skip_locked()
        );
        self.run_claim(sql, now_ms, claim_until_ms, limit).await
    }
}
