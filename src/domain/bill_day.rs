//! Which WeChat days can have a trade bill to fetch, decided before anyone asks WeChat.
//!
//! Protocol §5.7 (`GET /v3/bill/tradebill`): `bill_date` may be "only last 3 months" [DOC], a
//! day's bill is generated from 09:00 the next day, and asking for today's date fails [OBS]. So
//! a day is fetchable when it is over (before today, Asia/Shanghai) and no older than today
//! minus 3 calendar months. A day outside that window is the caller's mistake: refusing it here
//! gives the reason instead of a failed run recorded after a pointless call. (Yesterday before
//! 09:00 is *not* refused: WeChat answers "not ready" and the run is retried.)

use chrono::{Months, NaiveDate};

/// How far back WeChat serves trade bills (protocol §5.7: "only last 3 months").
pub const RETENTION_MONTHS: u32 = 3;

/// The longest range accepted at once. Three calendar months span at most 92 days (e.g.
/// May 1 – July 31), so no range inside WeChat's window is longer; a longer one is a typo (a
/// wrong year) and is refused whole rather than cut to its first days.
pub const MAX_RANGE_DAYS: u64 = 92;

/// Why a day or range of days cannot be reconciled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillDayError {
    #[error("the range starts after it ends ({from} > {to})")]
    Reversed { from: NaiveDate, to: NaiveDate },
    #[error(
        "the range {from}..{to} is {days} days; at most {MAX_RANGE_DAYS} at once (WeChat keeps {RETENTION_MONTHS} months of bills)"
    )]
    TooLong { from: NaiveDate, to: NaiveDate, days: u64 },
    #[error(
        "{day} has no bill yet: WeChat writes a day's bill once the day is over, and today is {today} (Asia/Shanghai)"
    )]
    NotOver { day: NaiveDate, today: NaiveDate },
    #[error(
        "{day} is older than WeChat keeps bills (the last {RETENTION_MONTHS} months, protocol §5.7): the oldest day it serves today is {oldest}"
    )]
    Expired { day: NaiveDate, oldest: NaiveDate },
}

/// The oldest day whose bill WeChat still serves on `today` (Asia/Shanghai): the same date
/// three months back, or that month's last day when it has no such date (May 31 → Feb 28).
pub fn oldest_bill_day(today: NaiveDate) -> NaiveDate {
    today.checked_sub_months(Months::new(RETENTION_MONTHS)).unwrap_or(NaiveDate::MIN)
}

/// The days `from..=to` (one day when equal), oldest first, when every one of them can have a
/// bill on `today`; otherwise why not. Nothing is cut: the range is taken whole or refused.
pub fn bill_days(from: NaiveDate, to: NaiveDate, today: NaiveDate) -> Result<Vec<NaiveDate>, BillDayError> {
    if from > to {
        return Err(BillDayError::Reversed { from, to });
    }
    let days = u64::try_from((to - from).num_days()).unwrap_or(u64::MAX).saturating_add(1);
    if days > MAX_RANGE_DAYS {
        return Err(BillDayError::TooLong { from, to, days });
    }
    if to >= today {
        return Err(BillDayError::NotOver { day: to, today });
    }
    let oldest = oldest_bill_day(today);
    if from < oldest {
        return Err(BillDayError::Expired { day: from, oldest });
    }
    Ok(from.iter_days().take_while(|day| *day <= to).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    const TODAY: &str = "2026-12-02";

    #[test]
    fn a_finished_day_inside_the_window_is_one_day() {
        assert_eq!(bill_days(d("2026-12-01"), d("2026-12-01"), d(TODAY)), Ok(vec![d("2026-12-01")]));
        assert_eq!(
            bill_days(d("2026-11-29"), d("2026-12-01"), d(TODAY)),
            Ok(vec![d("2026-11-29"), d("2026-11-30"), d("2026-12-01")])
        );
    }

    #[test]
    fn today_and_later_have_no_bill_yet() {
        for day in ["2026-12-02", "2026-12-03", "2027-01-01"] {
            assert_eq!(
                bill_days(d(day), d(day), d(TODAY)),
                Err(BillDayError::NotOver { day: d(day), today: d(TODAY) }),
                "{day}"
            );
        }
        // A range reaching today is refused whole, not cut to its finished days.
        let err = bill_days(d("2026-11-30"), d("2026-12-02"), d(TODAY)).expect_err("reaches today");
        assert_eq!(err, BillDayError::NotOver { day: d("2026-12-02"), today: d(TODAY) });
        assert!(err.to_string().contains("no bill yet"), "{err}");
    }

    #[test]
    fn three_calendar_months_back_is_the_oldest_day() {
        assert_eq!(oldest_bill_day(d(TODAY)), d("2026-09-02"));
        // No May 31 minus three months: the end of February.
        assert_eq!(oldest_bill_day(d("2026-05-31")), d("2026-02-28"));
        assert_eq!(oldest_bill_day(d("2026-03-01")), d("2025-12-01"));
        assert_eq!(bill_days(d("2026-09-02"), d("2026-09-02"), d(TODAY)), Ok(vec![d("2026-09-02")]));
        let err = bill_days(d("2026-09-01"), d("2026-09-01"), d(TODAY)).expect_err("too old");
        assert_eq!(err, BillDayError::Expired { day: d("2026-09-01"), oldest: d("2026-09-02") });
        assert!(err.to_string().contains("2026-09-02") && err.to_string().contains("§5.7"), "{err}");
    }

    #[test]
    fn ranges_are_ordered_and_bounded() {
        assert_eq!(
            bill_days(d("2026-11-02"), d("2026-11-01"), d(TODAY)),
            Err(BillDayError::Reversed { from: d("2026-11-02"), to: d("2026-11-01") })
        );
        // The whole window WeChat serves is one range (91 days today)...
        assert_eq!(bill_days(d("2026-09-02"), d("2026-12-01"), d(TODAY)).map(|days| days.len()), Ok(91));
        // ...and the longest window of all (92 days, May 1 – July 31) too.
        assert_eq!(bill_days(d("2026-05-01"), d("2026-07-31"), d("2026-08-01")).map(|days| days.len()), Ok(92));
        // One day more is refused with its length, whatever else is wrong with it.
        assert_eq!(
            bill_days(d("2026-04-30"), d("2026-07-31"), d("2026-08-01")),
            Err(BillDayError::TooLong { from: d("2026-04-30"), to: d("2026-07-31"), days: 93 })
        );
        let years = bill_days(d("2025-01-01"), d("2026-12-01"), d(TODAY)).expect_err("two years");
        assert!(matches!(years, BillDayError::TooLong { days: 700, .. }), "{years}");
    }
}
