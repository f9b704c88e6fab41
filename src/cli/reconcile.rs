//! `wxpay-recon reconcile --date D` (or `--from D --to D`): reconcile in the foreground with a
//! progress bar and a summary table; exit 3 when unexplained discrepancies remain, 1 when a run
//! failed, 2 when a day cannot have a bill (not over yet, older than WeChat keeps, a range too
//! long: `domain::bill_day`). `wxpay-recon bill parse FILE`: check a bill file offline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressStyle};

use crate::bill::{BillReader, BillSummary, SUMMARY_LABELS};
use crate::clock::Clock;
use crate::config::Settings;
use crate::deps::Deps;
use crate::domain::bill_day::bill_days;
use crate::domain::time::wechat_date;
use crate::services::reconcile::{Progress, fetch};
use crate::telemetry::metrics::Metrics;

use super::CliError;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("days").required(true).args(["date", "from"])))]
pub struct Args {
    /// One WeChat day (Asia/Shanghai), YYYY-MM-DD: before today, within the last 3 months.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    date: Option<NaiveDate>,
    /// First day of a range (inclusive); a range is at most 92 days (WeChat keeps 3 months).
    #[arg(long, requires = "to")]
    from: Option<NaiveDate>,
    /// Last day of a range (inclusive).
    #[arg(long, requires = "from")]
    to: Option<NaiveDate>,
}

#[derive(Debug, clap::Subcommand)]
pub enum BillCommand {
    /// Parse a trade bill file (plain or gzip) and print its totals; exit 1 on the first error.
    Parse { file: PathBuf },
}

/// Exit code when the books do not match and nobody knows why yet.
const UNEXPLAINED: u8 = 3;

struct Bar(ProgressBar);

impl Progress for Bar {
    fn downloaded(&self, bytes: u64) {
        self.0.set_message(format!("downloaded {} KiB, comparing", bytes / 1024));
    }
    fn rows(&self, rows: u64) {
        self.0.set_position(rows);
    }
}

pub async fn run(settings: Settings, args: Args) -> Result<ExitCode, CliError> {
    let clock = Clock::system();
    let days = days_of(&args, wechat_date(clock.now()))?;
    let deps = Deps::build(&settings, clock, Metrics::new()).await.map_err(|e| CliError::new(e.to_string()))?;
    let reconciler = deps.reconciler(&settings);
    let db = deps.db;
    let mut failed = false;
    let mut unexplained = 0;
    println!(
        "{:<10}  {:<13} {:>9} {:>9} {:>13} {:>6} {:>11}",
        "date", "status", "rows", "orders", "discrepancies", "healed", "unexplained"
    );
    for day in days {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {pos} rows {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(day.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        let result = reconciler.run(day, Arc::new(Bar(bar.clone()))).await;
        bar.finish_and_clear();
        match result {
            Ok(run) => {
                unexplained += run.unexplained;
                println!(
                    "{:<10}  {:<13} {:>9} {:>9} {:>13} {:>6} {:>11}",
                    run.bill_date,
                    run.status.as_str(),
                    run.bill_rows,
                    run.orders_compared,
                    run.discrepancies,
                    run.healed,
                    run.unexplained
                );
                // Closed without a bill: say why, so it does not read as a clean day.
                if run.status == crate::domain::BillRunStatus::AssumedEmpty {
                    println!("    warning: {}", run.error.as_deref().unwrap_or("assumed empty"));
                }
                for d in db.discrepancies_of(&run.bill_date).await.map_err(|e| CliError::new(e.to_string()))? {
                    println!(
                        "    {:<20} {:<11} {:<28} line {:<8} {}",
                        d.class.as_str(),
                        d.resolution.as_str(),
                        d.out_trade_no.as_deref().unwrap_or("-"),
                        d.bill_line.map_or("-".to_owned(), |l| l.to_string()),
                        d.detail
                    );
                }
            }
            Err(err) => {
                failed = true;
                println!("{day}  failed: {err}");
            }
        }
    }
    println!("reports: {}", settings.reconcile.reports_dir.display());
    Ok(if failed {
        ExitCode::FAILURE
    } else if unexplained > 0 {
        ExitCode::from(UNEXPLAINED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The days asked for, checked against what WeChat can serve today (Asia/Shanghai): a day
/// without a bill is the operator's mistake (exit 2), refused before anything is built, so no
/// call to WeChat is made and no failed run is stored.
fn days_of(args: &Args, today: NaiveDate) -> Result<Vec<NaiveDate>, CliError> {
    let (from, to) = match (args.date, args.from, args.to) {
        (Some(day), None, None) => (day, day),
        (None, Some(from), Some(to)) => (from, to),
        _ => return Err(CliError::usage("give --date YYYY-MM-DD or --from YYYY-MM-DD --to YYYY-MM-DD")),
    };
    bill_days(from, to, today).map_err(|e| CliError::usage(e.to_string()))
}

/// Reads the whole file (exit 1 on the first bad line), prints its summary beside the sums of
/// its rows, and exits 1 when they disagree: such a file is corrupt whatever our books say
/// (the reconciler records the same check as a `summary_mismatch`).
pub fn bill(command: BillCommand) -> Result<ExitCode, CliError> {
    let BillCommand::Parse { file } = command;
    let mut reader = BillReader::new(
        fetch::open_plain(&file, fetch::LOCAL_MAX_PLAIN_BYTES).map_err(|e| CliError::new(e.to_string()))?,
    );
    for item in &mut reader {
        item.map_err(|e| CliError::new(format!("{}: {e}", file.display())))?;
    }
    let stated = *reader
        .stated_summary()
        .ok_or_else(|| CliError::new(format!("{}: no summary (truncated?)", file.display())))?;
    let rows = *reader.rows_summary();
    let sha1 = fetch::sha1_of_plain(&file, fetch::LOCAL_MAX_PLAIN_BYTES).map_err(|e| CliError::new(e.to_string()))?;
    println!("{}: {} rows, sha1 {sha1}", file.display(), rows.count);
    print!("{}", summary_table(&stated, &rows));
    let disagreements = stated.disagreements(&rows);
    if disagreements.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let list = disagreements.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    Err(CliError::new(format!("{}: the summary does not add up the rows: {list}", file.display())))
}

/// The summary line beside the sums of the rows, one value per line, amounts in yuan as the
/// bill prints them (fees to 0.00001 yuan); a value that differs is marked.
fn summary_table(stated: &BillSummary, rows: &BillSummary) -> String {
    let mut table = format!("{:<24} {:>16} {:>16}\n", "summary", "stated", "rows add up to");
    for (label, (stated, rows)) in SUMMARY_LABELS.iter().zip(stated.to_values().into_iter().zip(rows.to_values())) {
        let mark = if stated == rows { "" } else { "  <- disagrees" };
        table.push_str(&format!("{label:<24} {stated:>16} {rows:>16}{mark}\n"));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_table_reads_as_yuan_and_marks_what_differs() {
        let rows = BillSummary { count: 2, settlement_total_fen: 10_700, fee_e5: 64_200, ..BillSummary::default() };
        let stated = BillSummary { settlement_total_fen: 10_800, ..rows };
        let table = summary_table(&stated, &rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 8, "{table}");
        assert!(lines[1].starts_with("trades") && lines[1].ends_with(" 2"), "{table}");
        assert!(lines[2].contains("108.00") && lines[2].contains("107.00"), "{table}");
        assert!(lines[2].ends_with("<- disagrees"), "{table}");
        assert!(lines[5].contains("0.64200") && !lines[5].contains("disagrees"), "{table}");
        assert_eq!(table.matches("disagrees").count(), 1, "{table}");
    }
}
