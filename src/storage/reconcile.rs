//! What reconciliation reads and writes: our paid orders of a WeChat day, the orders a bill
//! already healed, and the results (`bill_runs` + `discrepancies`), replaced per date in one
//! transaction so a re-run never leaves a mix of two runs.

use futures::TryStreamExt;
use sqlx::FromRow;

use super::{Db, StorageError};

/// Our side of one paid order, as compact as comparison of a million rows needs.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct PaidOrder {
    pub out_trade_no: String,
    pub amount_fen: i64,
    pub status: String,
    pub transaction_id: Option<String>,
    pub refunded_fen: i64,
}

/// One difference found, and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, FromRow)]
pub struct Discrepancy {
    pub class: String,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub ours: Option<String>,
    pub theirs: Option<String>,
    pub bill_line: Option<i64>,
    /// `healed` or `unexplained`.
    pub resolution: String,
    pub detail: String,
}

/// The outcome of one run of a date.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, FromRow)]
pub struct BillRun {
    pub bill_date: String,
    /// clean | discrepancies | no_bill | not_ready | failed
    pub status: String,
    pub bill_rows: i64,
    pub orders_compared: i64,
    pub discrepancies: i64,
    pub unexplained: i64,
    pub healed: i64,
    pub bill_sha1: Option<String>,
    pub error: Option<String>,
    pub attempts: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub next_attempt_at_ms: Option<i64>,
}

const RUN_COLUMNS: &str = "bill_date, status, bill_rows, orders_compared, discrepancies, unexplained, healed, \
    bill_sha1, error, attempts, started_at_ms, finished_at_ms, next_attempt_at_ms";

/// Rows per multi-row INSERT of discrepancies (well under both backends' parameter limits).
const INSERT_CHUNK: usize = 500;

impl Db {
    /// Calls `each` for every order paid in `[from_ms, to_ms)` (streamed, not collected).
    pub async fn for_each_paid_order(
        &self,
        from_ms: i64,
        to_ms: i64,
        mut each: impl FnMut(PaidOrder),
    ) -> Result<u64, StorageError> {
        let mut rows = sqlx::query_as::<_, PaidOrder>(
            "SELECT out_trade_no, amount_fen, status, transaction_id, refunded_fen FROM orders
             WHERE paid_at_ms >= $1 AND paid_at_ms < $2",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch(self.reader());
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            each(row);
            n += 1;
        }
        Ok(n)
    }

    /// Orders this date's bill healed in an earlier run (so a re-run reports them again).
    pub async fn healed_by_bill(&self, evidence: &str) -> Result<Vec<String>, StorageError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT o.out_trade_no FROM order_events e JOIN orders o ON o.id = e.order_id
             WHERE e.source = 'bill' AND e.applied = 1 AND e.evidence = $1",
        )
        .bind(evidence)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(no,)| no).collect())
    }

    /// Replaces the results of `run.bill_date` (its row and all its discrepancies).
    pub async fn save_bill_run(&self, run: &BillRun, found: &[Discrepancy]) -> Result<(), StorageError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM discrepancies WHERE bill_date = $1").bind(&run.bill_date).execute(&mut *tx).await?;
        let upsert = format!(
            "INSERT INTO bill_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $11, $12)
             ON CONFLICT (bill_date) DO UPDATE SET status = $2, bill_rows = $3, orders_compared = $4,
                 discrepancies = $5, unexplained = $6, healed = $7, bill_sha1 = $8, error = $9,
                 attempts = bill_runs.attempts + 1, started_at_ms = $10, finished_at_ms = $11,
                 next_attempt_at_ms = $12"
        );
        sqlx::query(sqlx::AssertSqlSafe(upsert))
            .bind(&run.bill_date)
            .bind(&run.status)
            .bind(run.bill_rows)
            .bind(run.orders_compared)
            .bind(run.discrepancies)
            .bind(run.unexplained)
            .bind(run.healed)
            .bind(&run.bill_sha1)
            .bind(&run.error)
            .bind(run.started_at_ms)
            .bind(run.finished_at_ms)
            .bind(run.next_attempt_at_ms)
            .execute(&mut *tx)
            .await?;
        for chunk in found.chunks(INSERT_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = i * 10;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6,
                        p + 7,
                        p + 8,
                        p + 9,
                        p + 10
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO discrepancies (bill_date, class, out_trade_no, transaction_id, ours, theirs, bill_line,
                     resolution, detail, created_at_ms) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for d in chunk {
                query = query
                    .bind(&run.bill_date)
                    .bind(&d.class)
                    .bind(&d.out_trade_no)
                    .bind(&d.transaction_id)
                    .bind(&d.ours)
                    .bind(&d.theirs)
                    .bind(d.bill_line)
                    .bind(&d.resolution)
                    .bind(&d.detail)
                    .bind(run.finished_at_ms);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn bill_run(&self, bill_date: &str) -> Result<Option<BillRun>, StorageError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM bill_runs WHERE bill_date = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(bill_date).fetch_optional(self.reader()).await?)
    }

    /// Runs of dates on or after `from_date` (YYYY-MM-DD sorts as text).
    pub async fn bill_runs_since(&self, from_date: &str) -> Result<Vec<BillRun>, StorageError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM bill_runs WHERE bill_date >= $1 ORDER BY bill_date");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(from_date).fetch_all(self.reader()).await?)
    }

    pub async fn discrepancies_of(&self, bill_date: &str) -> Result<Vec<Discrepancy>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT class, out_trade_no, transaction_id, ours, theirs, bill_line, resolution, detail
             FROM discrepancies WHERE bill_date = $1 ORDER BY id",
        )
        .bind(bill_date)
        .fetch_all(self.reader())
        .await?)
    }

    /// (finished_at of the latest successful run, unexplained discrepancies of runs since
    /// `from_date`), for the reconcile gauges.
    pub async fn reconcile_health(&self, from_date: &str) -> Result<(Option<i64>, i64), StorageError> {
        let (last,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(finished_at_ms) FROM bill_runs WHERE status IN ('clean', 'discrepancies', 'no_bill')",
        )
        .fetch_one(self.reader())
        .await?;
        let (unexplained,): (Option<i64>,) =
            sqlx::query_as("SELECT CAST(SUM(unexplained) AS BIGINT) FROM bill_runs WHERE bill_date >= $1")
                .bind(from_date)
                .fetch_one(self.reader())
                .await?;
        Ok((last, unexplained.unwrap_or(0)))
    }
}
