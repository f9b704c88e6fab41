//! Time is UTC inside; Asia/Shanghai only where WeChat defines a date or a wall-clock string.
//! The database stores instants as Unix milliseconds so both backends compare them the same way.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;

/// Unix milliseconds of an instant, the database representation.
pub fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant of a stored Unix-milliseconds value.
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}

/// RFC 3339 with WeChat's `+08:00` offset, e.g. `2026-11-24T10:34:56+08:00`.
pub fn to_wechat_rfc3339(t: DateTime<Utc>) -> String {
    t.with_timezone(&Shanghai).format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Parses any RFC 3339 time WeChat sends (offset or `Z`, with or without fractions).
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// The WeChat business day (Asia/Shanghai calendar date) an instant falls on.
pub fn wechat_date(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&Shanghai).date_naive()
}

/// The UTC instant at which a WeChat business day starts (00:00 Asia/Shanghai).
pub fn wechat_day_start(date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    Shanghai
        .from_local_datetime(&midnight)
        .single()
        .map_or_else(|| Utc.from_utc_datetime(&midnight), |t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_wechat() {
        let t = parse_rfc3339("2021-03-03T10:34:56+08:00").expect("parse");
        assert_eq!(to_wechat_rfc3339(t), "2021-03-03T10:34:56+08:00");
        assert_eq!(t, parse_rfc3339("2021-03-03T02:34:56Z").expect("parse"));
    }

    #[test]
    fn wechat_day_boundaries_are_shanghai_midnight() {
        let late = parse_rfc3339("2026-11-23T15:59:59Z").expect("parse");
        let next = parse_rfc3339("2026-11-23T16:00:00Z").expect("parse");
        assert_eq!(wechat_date(late).to_string(), "2026-11-23");
        assert_eq!(wechat_date(next).to_string(), "2026-11-24");
        let day = NaiveDate::from_ymd_opt(2026, 11, 24).expect("date");
        assert_eq!(wechat_day_start(day), next);
        assert_eq!(to_ms(from_ms(1_700_000_000_123)), 1_700_000_000_123);
    }
}
