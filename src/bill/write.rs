//! Writes an `ALL` trade bill byte for byte as WeChat does (protocol §9.1): UTF-8 BOM, CRLF
//! line ends, header lines bare, every value prefixed with a backtick. The simulator serves
//! what this writes, and tests feed it to the reader, so both sides share one definition.

use std::io::{self, Write};

use super::row::{BillRow, HEADER};
use super::summary::{BillSummary, SUMMARY_HEADER};

/// The UTF-8 byte-order mark WeChat puts at the start of bill files.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Streams a bill into `W`: [`BillWriter::new`] writes the header, [`BillWriter::write_row`]
/// one line per row, and [`BillWriter::finish`] the summary, so a large day never sits in
/// memory as rows.
#[derive(Debug)]
pub struct BillWriter<W: Write> {
    out: W,
    summary: BillSummary,
}

impl<W: Write> BillWriter<W> {
    /// Writes the BOM and the column header.
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(BOM)?;
        write_line(&mut out, HEADER.iter().copied(), "")?;
        Ok(Self { out, summary: BillSummary::default() })
    }

    /// Writes one detail line and counts it into the summary.
    pub fn write_row(&mut self, row: &BillRow) -> io::Result<()> {
        let values = row.to_values();
        // Totals that cannot be stated (an overflow) are refused before the line is written.
        self.summary.add(row).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        write_line(&mut self.out, values.iter().map(String::as_str), "`")?;
        Ok(())
    }

    /// The summary of the rows written so far.
    pub fn summary(&self) -> &BillSummary {
        &self.summary
    }

    /// Writes the summary of the rows written and returns the sink.
    pub fn finish(self) -> io::Result<W> {
        let summary = self.summary;
        self.finish_with(&summary)
    }

    /// Writes `summary` instead of the computed one: how a simulated WeChat states totals that
    /// disagree with its rows.
    pub fn finish_with(mut self, summary: &BillSummary) -> io::Result<W> {
        write_line(&mut self.out, SUMMARY_HEADER.iter().copied(), "")?;
        let values = summary.to_values();
        write_line(&mut self.out, values.iter().map(String::as_str), "`")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One line: values joined by `,`, each after `prefix` and sanitised, ended by CRLF.
fn write_line<'a>(out: &mut impl Write, values: impl Iterator<Item = &'a str>, prefix: &str) -> io::Result<()> {
    let mut line = String::new();
    for (index, value) in values.enumerate() {
        if index > 0 {
            line.push(',');
        }
        line.push_str(prefix);
        line.extend(value.chars().map(sanitize_char));
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes())
}

/// The file has no quoting, so a separator inside a value (a product name with a comma, an
/// attach with a newline) would shift every later column; WeChat blanks them, and so do we.
pub fn sanitize(value: &str) -> String {
    value.chars().map(sanitize_char).collect()
}

fn sanitize_char(c: char) -> char {
    if matches!(c, ',' | '\r' | '\n') { ' ' } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_bom_crlf_backticks() {
        let row = BillRow {
            trade_time: "2026-11-24 10:00:00".into(),
            trade_state: "SUCCESS".into(),
            product_name: "咖啡, 大杯\r\n".into(),
            settlement_total_fen: 1,
            order_total_fen: 1,
            ..BillRow::default()
        };
        let mut writer = BillWriter::new(Vec::new()).expect("header");
        writer.write_row(&row).expect("row");
        let bytes = writer.finish().expect("finish");
        let text = std::str::from_utf8(&bytes).expect("utf8");
        let text = text.strip_prefix('\u{feff}').expect("bom");
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines[0].starts_with("交易时间,公众账号ID,") && !lines[0].contains('`'));
        assert!(lines[1].starts_with("`2026-11-24 10:00:00,`,`,"));
        assert!(lines[1].contains(",`咖啡  大杯  ,"), "{}", lines[1]);
        assert!(lines[1].ends_with(",`0.01,`0.00,`"), "{}", lines[1]);
        assert_eq!(lines[1].split(',').count(), 27);
        assert_eq!(lines[2], SUMMARY_HEADER.join(","));
        assert_eq!(lines[3], "`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00");
        assert_eq!(lines[4], "");
    }
}
