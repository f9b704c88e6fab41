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

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
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
}
