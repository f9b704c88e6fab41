//! WeChat Pay's `ALL` trade bill (protocol §9.1) as data, with streaming I/O.
//!
//! The bill is the day's record of money as WeChat sees it; reconciliation compares it with our
//! orders. Its text format is fixed by WeChat (BOM, CRLF, backtick-prefixed values, yuan
//! decimals), so it lives here once, shared by the simulator that writes it and the reconciler
//! that reads it. Amounts become integer fen at this boundary and never pass through a float.
//!
//! - `amount`: yuan/fee text ⇄ integer fen.
//! - `row`: the 27 columns as [`BillRow`].
//! - `summary`: the closing totals as [`BillSummary`].
//! - `write`: [`BillWriter`], byte-exact output.
//! - `read`: [`BillReader`], line-by-line parsing with line-numbered errors.
//! - `plain`: the uncompressed bytes (gzip or not) under a size ceiling, for the reader.
//!
//! This module does no I/O of its own beyond the reader/writer it is handed, and knows nothing
//! of our orders, storage or HTTP.

mod amount;
mod plain;
mod read;
mod row;
mod summary;
mod write;

pub use amount::{
    AmountError, FEE_SCALE, YUAN_SCALE, parse_count, parse_fee_e5, parse_yuan, render_fee_e5, render_yuan,
};
pub use plain::{Limited, plain_reader};
pub use read::{BillError, BillItem, BillReader, MAX_LINE_BYTES, read_bill};
pub use row::{BillRow, COLUMNS, HEADER, RowError, TRADE_STATES, TRADE_TIME_FORMAT, format_trade_time};
pub use summary::{BillSummary, SUMMARY_COLUMNS, SUMMARY_HEADER, SUMMARY_LABELS, SummaryDisagreement, SummaryError};
pub use write::{BOM, BillWriter, sanitize};

#[cfg(test)]
mod tests;
