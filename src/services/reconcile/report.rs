//! The per-day report files an accountant opens: `<date>.json` (the run and every
//! discrepancy) and `<date>.csv` (one discrepancy per line), written atomically (temp + rename)
//! so a reader never sees half a report.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::domain::{BillRun, Discrepancy};

pub fn write(dir: &Path, run: &BillRun, found: &[Discrepancy]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = json!({ "run": run, "discrepancies": found });
    let body = serde_json::to_vec_pretty(&json).map_err(std::io::Error::other)?;
    atomic_write(&dir.join(format!("{}.json", run.bill_date)), &body)?;
    let mut csv = Vec::new();
    writeln!(csv, "bill_date,class,resolution,out_trade_no,transaction_id,ours,theirs,bill_line,detail")?;
    for d in found {
        let fields = [
            run.bill_date.as_str(),
            d.class.as_str(),
            d.resolution.as_str(),
            d.out_trade_no.as_deref().unwrap_or(""),
            d.transaction_id.as_deref().unwrap_or(""),
            d.ours.as_deref().unwrap_or(""),
            d.theirs.as_deref().unwrap_or(""),
            &d.bill_line.map(|l| l.to_string()).unwrap_or_default(),
            d.detail.as_str(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(csv, "{}", line.join(","))?;
    }
    atomic_write(&dir.join(format!("{}.csv", run.bill_date)), &csv)
}

/// One CSV cell: neutralised against formula injection, then quoted when needed.
fn csv_field(value: &str) -> String {
    let value = neutralise(value);
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.into_owned()
    }
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Text that reaches the report from outside (order numbers, WeChat's words, bill values,
/// details quoting them) is opened by an accountant in a spreadsheet, where `=HYPERLINK(...)`
/// or `@SUM(...)` would run. Such a cell gets a leading `'` (OWASP's advice: shown, not
/// evaluated). A plain decimal number is left alone, so the amounts we format keep their
/// sign (`-12.34` is a number to the spreadsheet too, never a formula).
fn neutralise(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(FORMULA_STARTS) && !is_plain_number(value) {
        std::borrow::Cow::Owned(format!("'{value}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// `-?digits(.digits)?`: the only shape our own amounts and counts take.
fn is_plain_number(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && all_digits(fraction)
}

fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn hostile_cells_are_neutralised_and_our_amounts_keep_their_sign() {
        for (hostile, written) in [
            ("=HYPERLINK(\"http://evil\",\"x\")", "\"'=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\""),
            ("=1+2", "'=1+2"),
            ("+1-2", "'+1-2"),
            ("-1+cmd|' /C calc'!A0", "'-1+cmd|' /C calc'!A0"),
            ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "\"'\r=1\""),
            ("-", "'-"),
            ("-1.", "'-1."),
            ("--1", "'--1"),
            ("-1e9", "'-1e9"),
        ] {
            assert_eq!(csv_field(hostile), written, "{hostile:?}");
        }
        for number in ["-12.34", "-6800", "0", "12.34", "-0.01"] {
            assert_eq!(csv_field(number), number);
        }
        // Formula characters inside a value are harmless; only the first one counts.
        assert_eq!(csv_field("ORDER=1"), "ORDER=1");
    }

    #[test]
    fn a_report_with_hostile_values_neutralises_every_outside_cell() {
        use crate::domain::{BillRunStatus, DiscrepancyClass};

        let dir = tempfile::tempdir().expect("dir");
        let run = BillRun {
            bill_date: "2026-11-24".into(),
            status: BillRunStatus::Discrepancies,
            bill_rows: 1,
            orders_compared: 1,
            discrepancies: 1,
            unexplained: 1,
            healed: 0,
            bill_sha1: None,
            error: None,
            attempts: 1,
            started_at_ms: 0,
            finished_at_ms: 0,
            next_attempt_at_ms: None,
        };
        let found = [Discrepancy {
            transaction_id: Some("@evil".into()),
            ours: Some("-6800".into()),
            theirs: Some("+SUM(1)".into()),
            ..Discrepancy::unexplained(DiscrepancyClass::AmountMismatch, Some("=cmd|' /C calc'!A0"), "-2+3")
        }];
        write(dir.path(), &run, &found).expect("write");
        let csv = std::fs::read_to_string(dir.path().join("2026-11-24.csv")).expect("csv");
        let line = csv.lines().nth(1).expect("one discrepancy");
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[3], "'=cmd|' /C calc'!A0");
        assert_eq!(cells[4], "'@evil");
        assert_eq!(cells[5], "-6800", "our amount keeps its sign");
        assert_eq!(cells[6], "'+SUM(1)");
        assert_eq!(cells[8], "'-2+3");
        for cell in cells {
            assert!(!cell.starts_with(['=', '+', '@', '\t', '\r']), "{cell:?}");
        }
    }
}
