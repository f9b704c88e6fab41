//! The poller's view of `orders`: which NOTPAY orders are due for a check at WeChat, and when
//! each is next due. Selection goes through the partial index `orders_due`
//! (`next_check_at_ms` of NOTPAY orders only), so a sweep costs what is due, not what is
//! pending; the tests check the plan.

use sqlx::AssertSqlSafe;

use super::{Db, StorageError};

/// The due-orders predicate, spelled exactly as the partial index `orders_due` is, so both
/// PostgreSQL and SQLite can use it.
const DUE: &str = "status = 'NOTPAY' AND next_check_at_ms IS NOT NULL AND next_check_at_ms <= $1";

impl Db {
    /// Claims up to `limit` orders due by `now_ms` for a check: their `next_check_at_ms` moves
    /// to `claim_until_ms` so no other sweep takes them while the check runs (and a lost check
    /// comes back by itself then). Concurrent sweepers take disjoint rows.
    pub async fn claim_due_orders(
        &self,
        now_ms: i64,
        claim_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, StorageError> {
        self.run_claim(claim_sql(self.dialect().skip_locked()), now_ms, claim_until_ms, limit).await
    }

    /// Runs a claim statement (`$1` now, `$2` claimed until, `$3` limit) returning one number
    /// per claimed row; shared by the order and refund pollers.
    pub(super) async fn run_claim(
        &self,
        sql: String,
        now_ms: i64,
        claim_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, StorageError> {
        let rows: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(claim_until_ms)
            .bind(limit)
            .fetch_all(self.writer())
            .await?;
        Ok(rows.into_iter().map(|(no,)| no).collect())
    }

    /// After a check that left the order NOTPAY: count it and set when it is next due.
    pub async fn reschedule_check(
        &self,
        order_id: i64,
        next_check_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE orders SET check_attempts = check_attempts + 1, next_check_at_ms = $2, updated_at_ms = $3
             WHERE id = $1 AND status = 'NOTPAY'",
        )
        .bind(order_id)
        .bind(next_check_at_ms)
        .bind(now_ms)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Stops polling an order that needs an operator (WeChat reports a payment that contradicts
    /// it: asking again would only record the same anomaly again).
    pub async fn stop_checks(&self, order_id: i64, now_ms: i64) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE orders SET next_check_at_ms = NULL, updated_at_ms = $2 WHERE id = $1 AND status = 'NOTPAY'",
        )
        .bind(order_id)
        .bind(now_ms)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// How many orders are due by `now_ms` (for tests and the `wxpay_poll_due_orders` view).
    pub async fn due_order_count(&self, now_ms: i64) -> Result<i64, StorageError> {
        let sql = format!("SELECT COUNT(*) FROM orders WHERE {DUE}");
        let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(sql)).bind(now_ms).fetch_one(self.reader()).await?;
        Ok(n)
    }

    /// (count, created_at of the oldest) of NOTPAY orders, for the pending gauges.
    pub async fn pending_orders(&self) -> Result<(i64, Option<i64>), StorageError> {
        Ok(sqlx::query_as("SELECT COUNT(*), MIN(created_at_ms) FROM orders WHERE status = 'NOTPAY'")
            .fetch_one(self.reader())
            .await?)
    }

    /// The query plan of the due-order selection, as the database prints it (the tests check
    /// it reads `orders_due` rather than scanning `orders`).
    pub async fn explain_due_selection(&self, now_ms: i64, limit: i64) -> Result<String, StorageError> {
        let select = select_due_sql("");
        let lines: Vec<String> = match self.dialect() {
            super::Dialect::Postgres => {
                let sql = format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {select}");
                let rows: Vec<(String,)> =
                    sqlx::query_as(AssertSqlSafe(sql)).bind(now_ms).bind(limit).fetch_all(self.reader()).await?;
                rows.into_iter().map(|(line,)| line).collect()
            }
            super::Dialect::Sqlite => {
                let sql = format!("EXPLAIN QUERY PLAN {select}");
                let rows: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(AssertSqlSafe(sql)).bind(now_ms).bind(limit).fetch_all(self.reader()).await?;
                rows.into_iter().map(|(_, _, _, detail)| detail).collect()
            }
        };
        Ok(lines.join("\n"))
    }
}

/// The selection of due orders alone (`$1` now, `$2` limit), as `explain_due_selection` shows it.
fn select_due_sql(lock: &str) -> String {
    format!("SELECT id FROM orders WHERE {DUE} ORDER BY next_check_at_ms LIMIT $2{lock}")
}

fn claim_sql(lock: &str) -> String {
    format!(
        "UPDATE orders SET next_check_at_ms = $2
         WHERE id IN (SELECT id FROM orders WHERE {DUE} ORDER BY next_check_at_ms LIMIT $3{lock})
         RETURNING out_trade_no"
    )
}
