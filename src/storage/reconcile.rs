//! What reconciliation reads and writes: our paid orders of a WeChat day, the orders a bill
//! already healed, and the results (`bill_runs` + `discrepancies`), replaced per date in one
//! transaction so a re-run never leaves a mix of two runs.

use futures::TryStreamExt;
use sqlx::FromRow;

use crate::domain::{BillRun, BillRunStatus, Discrepancy, EventSource, Fen, PaidOrder};

use super::{Db, StorageError, corrupt, in_list};

#[derive(Debug, FromRow)]
struct PaidOrderRow {
    out_trade_no: String,
    amount_fen: i64,
    transaction_id: Option<String>,
    refunded_fen: i64,
}

#[derive(Debug, FromRow)]
struct DiscrepancyRow {
    class: String,
    out_trade_no: Option<String>,
    transaction_id: Option<String>,
    ours: Option<String>,
    theirs: Option<String>,
    bill_line: Option<i64>,
    resolution: String,
    detail: String,
}

impl TryFrom<DiscrepancyRow> for Discrepancy {
    type Error = StorageError;
    fn try_from(r: DiscrepancyRow) -> Result<Self, StorageError> {
        Ok(Discrepancy {
            class: r.class.parse().map_err(corrupt)?,
            out_trade_no: r.out_trade_no,
            transaction_id: r.transaction_id,
            ours: r.ours,
            theirs: r.theirs,
            bill_line: r.bill_line,
            resolution: r.resolution.parse().map_err(corrupt)?,
            detail: r.detail,
        })
    }
}

#[derive(Debug, FromRow)]
struct BillRunRow {
    bill_date: String,
    status: String,
    bill_rows: i64,
    orders_compared: i64,
    discrepancies: i64,
    unexplained: i64,
    healed: i64,
    bill_sha1: Option<String>,
    error: Option<String>,
    attempts: i64,
    started_at_ms: i64,
    finished_at_ms: i64,
    next_attempt_at_ms: Option<i64>,
}

impl TryFrom<BillRunRow> for BillRun {
    type Error = StorageError;
    fn try_from(r: BillRunRow) -> Result<Self, StorageError> {
        Ok(BillRun {
            bill_date: r.bill_date,
            status: r.status.parse().map_err(corrupt)?,
            bill_rows: r.bill_rows,
            orders_compared: r.orders_compared,
            discrepancies: r.discrepancies,
            unexplained: r.unexplained,
            healed: r.healed,
            bill_sha1: r.bill_sha1,
            error: r.error,
            attempts: r.attempts,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            next_attempt_at_ms: r.next_attempt_at_ms,
        })
    }
}

const RUN_COLUMNS: &str = "bill_date, status, bill_rows, orders_compared, discrepancies, unexplained, healed, \
    bill_sha1, error, attempts, started_at_ms, finished_at_ms, next_attempt_at_ms";

/// Rows per multi-row INSERT of discrepancies (well under both backends' parameter limits).
const INSERT_CHUNK: usize = 500;

impl Db {
    /// Calls `each` for every order paid in `[from_ms, to_ms)` (streamed, not collected).
    /// Whether any order (whatever its status) was created in `[from_ms, to_ms)`. Asked only
    /// when a day might be assumed empty (WeChat stuck on STATEMENT_CREATING): an unpaid order
    /// of the day may be a payment we missed, which only the bill can show. No index serves it
    /// (a scan that stops at the first row of the day); it runs at most a few times a day.
    pub async fn any_order_created_between(&self, from_ms: i64, to_ms: i64) -> Result<bool, StorageError> {
        let found: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM orders WHERE created_at_ms >= $1 AND created_at_ms < $2 LIMIT 1")
                .bind(from_ms)
                .bind(to_ms)
                .fetch_optional(self.reader())
                .await?;
        Ok(found.is_some())
    }

    pub async fn for_each_paid_order(
        &self,
        from_ms: i64,
        to_ms: i64,
        mut each: impl FnMut(PaidOrder),
    ) -> Result<u64, StorageError> {
        let mut rows = sqlx::query_as::<_, PaidOrderRow>(
            "SELECT out_trade_no, amount_fen, transaction_id, refunded_fen FROM orders
             WHERE paid_at_ms >= $1 AND paid_at_ms < $2",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch(self.reader());
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            each(PaidOrder {
                out_trade_no: row.out_trade_no,
                amount: Fen(row.amount_fen),
                transaction_id: row.transaction_id,
                refunded: Fen(row.refunded_fen),
            });
            n += 1;
        }
        Ok(n)
    }

    /// Orders this date's bill healed in an earlier run (so a re-run reports them again).
    pub async fn healed_by_bill(&self, evidence: &str) -> Result<Vec<String>, StorageError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT o.out_trade_no FROM order_events e JOIN orders o ON o.id = e.order_id
             WHERE e.source = $2 AND e.applied = 1 AND e.evidence = $1",
        )
        .bind(evidence)
        .bind(EventSource::Bill.as_str())
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
            .bind(run.status.as_str())
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
                    .bind(d.class.as_str())
                    .bind(&d.out_trade_no)
                    .bind(&d.transaction_id)
                    .bind(&d.ours)
                    .bind(&d.theirs)
                    .bind(d.bill_line)
                    .bind(d.resolution.as_str())
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
        let row: Option<BillRunRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(bill_date).fetch_optional(self.reader()).await?;
        row.map(BillRun::try_from).transpose()
    }

    /// Runs of dates on or after `from_date` (YYYY-MM-DD sorts as text).
    pub async fn bill_runs_since(&self, from_date: &str) -> Result<Vec<BillRun>, StorageError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM bill_runs WHERE bill_date >= $1 ORDER BY bill_date");
        let rows: Vec<BillRunRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(from_date).fetch_all(self.reader()).await?;
        rows.into_iter().map(BillRun::try_from).collect()
    }

    pub async fn discrepancies_of(&self, bill_date: &str) -> Result<Vec<Discrepancy>, StorageError> {
        let rows: Vec<DiscrepancyRow> = sqlx::query_as(
            "SELECT class, out_trade_no, transaction_id, ours, theirs, bill_line, resolution, detail
             FROM discrepancies WHERE bill_date = $1 ORDER BY id",
        )
        .bind(bill_date)
        .fetch_all(self.reader())
        .await?;
        rows.into_iter().map(Discrepancy::try_from).collect()
    }

    /// (finished_at of the latest successful run, unexplained discrepancies of runs since
    /// `from_date`), for the reconcile gauges.
    pub async fn reconcile_health(&self, from_date: &str) -> Result<(Option<i64>, i64), StorageError> {
        // A day assumed empty was never compared with a bill: not a success to measure from.
        let compared: Vec<BillRunStatus> =
            BillRunStatus::FINISHED.into_iter().filter(|s| *s != BillRunStatus::AssumedEmpty).collect();
        let sql = format!("SELECT MAX(finished_at_ms) FROM bill_runs WHERE status IN ({})", in_list(&compared));
        let (last,): (Option<i64>,) = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(self.reader()).await?;
        let (unexplained,): (Option<i64>,) =
            sqlx::query_as("SELECT CAST(SUM(unexplained) AS BIGINT) FROM bill_runs WHERE bill_date >= $1")
                .bind(from_date)
                .fetch_one(self.reader())
                .await?;
        Ok((last, unexplained.unwrap_or(0)))
    }
}
