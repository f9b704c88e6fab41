//! When to reconcile: every WeChat day once its bill is ready (`reconcile.run_at` the next
//! morning, Asia/Shanghai), retried while WeChat says the bill is not ready or a run fails, and
//! caught up for the last `reconcile.catch_up_days` days after downtime. The calendar is read
//! from our `Clock` (so tests reach "tomorrow 10:30" without waiting), and one replica runs it
//! at a time through a lease. (apalis-cron fires on the system clock and per replica, so it
//! cannot give either property; the schedule is a `run_at` time instead of a cron line.)

use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Asia::Shanghai;
use tokio_util::sync::CancellationToken;

use crate::domain::BillRun;
use crate::services::reconcile::{Quiet, Reconciler};

use super::context::SharedContext;

pub const LEASE: &str = "reconciler";

/// Whether a recorded run still needs another attempt at `now_ms`.
fn needs_run(run: Option<&BillRun>, now_ms: i64) -> bool {
    match run {
        None => true,
        // A day assumed empty (never compared with a bill) is asked again when its next attempt
        // is due; a compared day is done.
        Some(run) => {
            let open = !run.status.is_finished() || run.status == crate::domain::BillRunStatus::AssumedEmpty;
            open && run.next_attempt_at_ms.is_none_or(|t| t <= now_ms)
        }
    }
}

/// The days whose bill should be ready at `now_ms`, oldest first, within the catch-up window.
pub fn ready_days(now_ms: i64, run_at: NaiveTime, catch_up_days: u32) -> Vec<NaiveDate> {
    let now = crate::domain::time::from_ms(now_ms);
    let today = crate::domain::time::wechat_date(now);
    let mut days = Vec::new();
    for back in (1..=u64::from(catch_up_days.max(1))).rev() {
        let Some(day) = today.checked_sub_days(Days::new(back)) else { continue };
        let Some(next) = day.checked_add_days(Days::new(1)) else { continue };
        let ready_at = Shanghai.from_local_datetime(&next.and_time(run_at)).single();
        if ready_at.is_some_and(|t| t.with_timezone(&chrono::Utc) <= now) {
            days.push(day);
        }
    }
    days
}

pub async fn run(
    ctx: SharedContext,
    reconciler: Reconciler,
    holder: String,
    lease_ttl: Duration,
    stop: CancellationToken,
) {
    let settings = reconciler.settings().clone();
    let Some(run_at) = settings.run_at_time() else { return };
    crate::services::reconcile::fetch::clear_stale(&settings.work_dir);
    let ttl_ms = i64::try_from(lease_ttl.as_millis()).unwrap_or(30_000);
    let interval = Duration::from_millis(settings.tick_interval_ms.max(10));
    loop {
        if let Err(err) = tick(&ctx, &reconciler, &holder, run_at, settings.catch_up_days, ttl_ms).await {
            tracing::warn!(error = %err, "reconcile scheduling failed; will try again");
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    let _ = ctx.db.release_lease(LEASE, &holder).await;
}

async fn tick(
    ctx: &SharedContext,
    reconciler: &Reconciler,
    holder: &str,
    run_at: NaiveTime,
    catch_up_days: u32,
    ttl_ms: i64,
) -> Result<(), crate::storage::StorageError> {
    let now = ctx.clock.now_ms();
    if !ctx.db.try_lease(LEASE, holder, now, ttl_ms).await? {
        return Ok(());
    }
    for day in ready_days(now, run_at, catch_up_days) {
        let existing = reconciler.is_done(day).await?;
        if !needs_run(existing.as_ref(), ctx.clock.now_ms()) {
            continue;
        }
        // Renew before a long run so the lease outlives it.
        if !ctx.db.try_lease(LEASE, holder, ctx.clock.now_ms(), ttl_ms.saturating_mul(20)).await? {
            return Ok(());
        }
        if let Err(err) = reconciler.run(day, Arc::new(Quiet)).await {
            tracing::warn!(bill.date = %day, error = %err, "reconciliation did not finish; retried later");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BillRunStatus;
    use crate::domain::time::{parse_rfc3339, to_ms};

    fn at(s: &str) -> i64 {
        to_ms(parse_rfc3339(s).expect("time"))
    }

    #[test]
    fn a_day_is_ready_the_next_morning_at_run_at_shanghai() {
        let run_at = NaiveTime::from_hms_opt(10, 30, 0).expect("time");
        let before = ready_days(at("2026-11-25T10:29:00+08:00"), run_at, 1);
        assert!(before.is_empty(), "{before:?}");
        let after = ready_days(at("2026-11-25T10:30:00+08:00"), run_at, 1);
        assert_eq!(after, vec![NaiveDate::from_ymd_opt(2026, 11, 24).expect("date")]);
        let catch_up = ready_days(at("2026-11-25T09:00:00+08:00"), run_at, 3);
        let expected: Vec<NaiveDate> =
            [22, 23].iter().map(|d| NaiveDate::from_ymd_opt(2026, 11, *d).expect("date")).collect();
        assert_eq!(catch_up, expected, "oldest first; the 24th is not ready before 10:30");
    }

    #[test]
    fn unfinished_runs_are_retried_when_due() {
        let mut run = BillRun {
            bill_date: "2026-11-24".into(),
            status: BillRunStatus::NotReady,
            bill_rows: 0,
            orders_compared: 0,
            discrepancies: 0,
            unexplained: 0,
            healed: 0,
            bill_sha1: None,
            error: None,
            attempts: 1,
            started_at_ms: 0,
            finished_at_ms: 0,
            next_attempt_at_ms: Some(1000),
        };
        assert!(!needs_run(Some(&run), 999));
        assert!(needs_run(Some(&run), 1000));
        run.status = BillRunStatus::Clean;
        assert!(!needs_run(Some(&run), 5000));
        assert!(needs_run(None, 0));
    }
}
