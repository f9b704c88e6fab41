//! Reads a trade bill line by line without holding the file: the reconciler streams a day of
//! rows (possibly hundreds of thousands) straight from the decompressor into comparisons.
//!
//! Leniency follows what WeChat has been seen to send: BOM optional, CRLF or LF, backtick
//! prefixes optional, both summary number styles, blank lines after the summary. Everything
//! that could mean a misread is refused with the line number: a missing header, a wrong column
//! count, an amount with hidden precision, an unknown trade state, a missing summary (a
//! truncated download) or content after it.

use std::io::{BufRead, Read};

use super::row::{BillRow, COLUMNS, HEADER};
use super::summary::{BillSummary, SUMMARY_HEADER};
use super::write::BOM;

/// Longest line accepted; a real row is well under 1 KiB, so a longer one is not a bill.
pub const MAX_LINE_BYTES: u64 = 64 * 1024;

/// What went wrong, and on which line (1 = the header line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bill line {line}: {message}")]
pub struct BillError {
    pub line: u64,
    pub message: String,
}

/// One item of a bill, in file order: every detail row, then the stated summary once.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every item is a row, moved once out of the iterator; boxing would only add an allocation per row"
)]
pub enum BillItem {
    /// A detail line.
    Row(BillRow),
    /// The totals WeChat states on the last line (compare with [`BillReader::rows_summary`]).
    Summary(BillSummary),
}

/// One line read: its text (or why it is not text) and whether a newline ended it.
struct Line {
    text: Result<String, BillError>,
    terminated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Rows,
    SummaryLine,
    AfterSummary,
    Done,
}

/// An iterator over a bill's items.
///
/// A bad detail row yields an `Err` and reading goes on with the next line, so one pass reports
/// every bad row; a structural error (no header, I/O, truncation, content after the summary)
/// yields an `Err` and ends the iteration. A file read to the end without error yielded
/// exactly one [`BillItem::Summary`].
#[derive(Debug)]
pub struct BillReader<R: BufRead> {
    input: R,
    /// Number of the last line read.
    line: u64,
    stage: Stage,
    buf: Vec<u8>,
    rows: BillSummary,
    stated: Option<BillSummary>,
}

impl<R: BufRead> BillReader<R> {
    /// A reader at the start of a bill; `input` is usually a gzip decoder over the download,
    /// so nothing is buffered beyond one line.
    pub fn new(input: R) -> Self {
        Self { input, line: 0, stage: Stage::Header, buf: Vec::new(), rows: BillSummary::default(), stated: None }
    }

    /// Totals of the rows yielded so far, to compare with the stated summary without keeping
    /// the rows.
    pub fn rows_summary(&self) -> &BillSummary {
        &self.rows
    }

    /// The line number (1 = header) of the last line read: for an item just yielded, its line.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The summary line, once it has been read.
    pub fn stated_summary(&self) -> Option<&BillSummary> {
        self.stated.as_ref()
    }

    fn error(&self, message: impl Into<String>) -> BillError {
        BillError { line: self.line, message: message.into() }
    }

    /// The next line without its terminator, or `None` at the end of input. The inner `Err`
    /// (not UTF-8) concerns this line only; the outer one ends the file.
    fn read_line(&mut self) -> Result<Option<Line>, BillError> {
        self.buf.clear();
        let read = (&mut self.input).take(MAX_LINE_BYTES + 1).read_until(b'\n', &mut self.buf);
        self.line += 1;
        match read {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(self.error(format!("read failed: {e}"))),
        }
        if self.buf.len() as u64 > MAX_LINE_BYTES {
            return Err(self.error(format!("line longer than {MAX_LINE_BYTES} bytes")));
        }
        let mut bytes = self.buf.as_slice();
        if self.line == 1 {
            bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
        }
        let (bytes, terminated) = match bytes.strip_suffix(b"\n") {
            Some(rest) => (rest, true),
            None => (bytes, false),
        };
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| self.error(format!("not UTF-8: {e}")));
        Ok(Some(Line { text, terminated }))
    }

    /// Advances by one line: `Ok(None)` when the line yields nothing (a header), `Ok(Some(Err))`
    /// for a bad detail row (reading may go on), `Err` when the file cannot be read further.
    fn step(&mut self) -> Result<Option<Result<BillItem, BillError>>, BillError> {
        let Some(Line { text, terminated }) = self.read_line()? else {
            let message = match self.stage {
                Stage::Header => "empty file: the header line is missing",
                Stage::Rows => "file ends before the summary (truncated download?)",
                Stage::SummaryLine => "file ends after the summary header: the summary line is missing",
                Stage::AfterSummary | Stage::Done => {
                    self.stage = Stage::Done;
                    return Ok(None);
                }
            };
            return Err(self.error(message));
        };
        // WeChat ends every line with CRLF; a detail row without one is where a download stopped.
        if !terminated && self.stage == Stage::Rows {
            return Err(self.error("file ends in the middle of a line (truncated download?)"));
        }
        let line = match text {
            Ok(line) => line,
            Err(e) if self.stage == Stage::Rows => return Ok(Some(Err(e))),
            Err(e) => return Err(e),
        };
        let values = split_values(&line);
        match self.stage {
            Stage::Header => {
                if values.len() != COLUMNS || values.first() != HEADER.first() {
                    let first = values.first().copied().unwrap_or_default();
                    return Err(self.error(format!(
                        "missing header: expected {COLUMNS} columns starting `{}`, found {} starting `{first}`",
                        HEADER[0],
                        values.len(),
                    )));
                }
                self.stage = Stage::Rows;
                Ok(None)
            }
            Stage::Rows if values.first() == SUMMARY_HEADER.first() => {
                self.stage = Stage::SummaryLine;
                Ok(None)
            }
            Stage::Rows => match BillRow::from_values(&values) {
                Ok(row) => {
                    // An overflowing total ends the file: every later comparison would be wrong.
                    self.rows.add(&row).map_err(|e| self.error(e.to_string()))?;
                    Ok(Some(Ok(BillItem::Row(row))))
                }
                Err(e) => Ok(Some(Err(self.error(e.to_string())))),
            },
            Stage::SummaryLine => {
                let summary = BillSummary::from_values(&values).map_err(|e| self.error(e.to_string()))?;
                self.stated = Some(summary);
                self.stage = Stage::AfterSummary;
                Ok(Some(Ok(BillItem::Summary(summary))))
            }
            Stage::AfterSummary if line.is_empty() => Ok(None),
            Stage::AfterSummary | Stage::Done => Err(self.error("unexpected content after the summary line")),
        }
    }
}

impl<R: BufRead> Iterator for BillReader<R> {
    type Item = Result<BillItem, BillError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.stage != Stage::Done {
            match self.step() {
                Ok(Some(item)) => return Some(item),
                Ok(None) => {}
                Err(e) => {
                    self.stage = Stage::Done;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// Reads a whole bill into memory, stopping at the first error: for tests and small files.
/// The reconciler should iterate a [`BillReader`] instead.
pub fn read_bill(input: impl BufRead) -> Result<(Vec<BillRow>, BillSummary), BillError> {
    let mut reader = BillReader::new(input);
    let mut rows = Vec::new();
    for item in &mut reader {
        if let BillItem::Row(row) = item? {
            rows.push(row);
        }
    }
    match reader.stated_summary() {
        Some(summary) => Ok((rows, *summary)),
        None => Err(reader.error("no summary line")),
    }
}

/// The values of one line. WeChat does not quote, but prefixes every value with a backtick, so
/// a line that starts with one is split on ",`": a comma inside a product name or an attach
/// stays in its value. Lines without backticks (headers, hand-made files) split on commas.
fn split_values(line: &str) -> Vec<&str> {
    match line.strip_prefix('`') {
        Some(rest) => rest.split(",`").collect(),
        None => line.split(',').map(|v| v.strip_prefix('`').unwrap_or(v)).collect(),
    }
}

#[cfg(test)]
mod split_tests {
    use super::split_values;

    #[test]
    fn commas_inside_backticked_values_stay_in_them() {
        assert_eq!(split_values("`a,`b, c,`"), vec!["a", "b, c", ""]);
        assert_eq!(split_values("交易时间,公众账号ID"), vec!["交易时间", "公众账号ID"]);
        assert_eq!(split_values("a,`b"), vec!["a", "b"]);
    }
}
