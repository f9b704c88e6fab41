//! The bytes served for a bill: the day's rows with the bill chaos applied, written in WeChat's
//! format, then (on request) damaged, hashed and compressed.
//!
//! Row knobs run before the summary is computed, so each injected fault is exactly one
//! discrepancy for the reconciler to find; only `summary_delta_fen` touches the summary.

use std::io::{self, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha1::{Digest, Sha1};

use crate::bill::{BillRow, BillWriter, SUMMARY_HEADER};
use crate::sim::chaos::{BillChaos, BillCorruption};

/// The rows WeChat will print: `rows` minus omitted ones, with amounts and states overridden
/// and duplicated rows repeated right after their original.
pub fn apply_row_chaos(rows: Vec<BillRow>, chaos: &BillChaos) -> Vec<BillRow> {
    let mut out = Vec::with_capacity(rows.len());
    for mut row in rows {
        if chaos.omit_rows.contains(&row.out_trade_no) {
            continue;
        }
        if let Some(delta) = chaos.amount_delta_fen.get(&row.out_trade_no) {
            row.settlement_total_fen = row.settlement_total_fen.saturating_add(*delta);
            row.order_total_fen = row.order_total_fen.saturating_add(*delta);
        }
        if row.trade_state == "REFUND"
            && let Some(delta) = chaos.refund_delta_fen.get(&row.out_refund_no)
        {
            row.refund_fen = row.refund_fen.saturating_add(*delta);
            row.refund_request_fen = row.refund_request_fen.saturating_add(*delta);
        }
        if let Some(state) = chaos.status_override.get(&row.out_trade_no) {
            row.trade_state.clone_from(state);
        }
        let duplicate = chaos.duplicate_rows.contains(&row.out_trade_no).then(|| row.clone());
        out.push(row);
        out.extend(duplicate);
    }
    out
}

/// The uncompressed bill file for `rows` (already through [`apply_row_chaos`]), with the
/// summary shifted by `summary_delta_fen` and the first row damaged if asked.
pub fn render(rows: &[BillRow], chaos: &BillChaos) -> io::Result<Vec<u8>> {
    let mut writer = BillWriter::new(Vec::new())?;
    for row in rows {
        writer.write_row(row)?;
    }
    let mut summary = *writer.summary();
    summary.settlement_total_fen = summary.settlement_total_fen.saturating_add(chaos.summary_delta_fen);
    let bytes = writer.finish_with(&summary)?;
    Ok(match chaos.corrupt {
        Some(corruption @ (BillCorruption::MalformedRow | BillCorruption::ColumnCount)) => {
            damage_first_row(bytes, corruption)
        }
        _ => bytes,
    })
}

/// Rewrites the first detail line (line 2); a bill without rows is left alone.
fn damage_first_row(bytes: Vec<u8>, corruption: BillCorruption) -> Vec<u8> {
    let mut text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(not_text) => return not_text.into_bytes(), // the writer only writes UTF-8
    };
    let Some(start) = text.find("\r\n").map(|i| i + 2) else { return text.into_bytes() };
    let Some(len) = text.get(start..).and_then(|rest| rest.find("\r\n")) else { return text.into_bytes() };
    let line = text.get(start..start + len).unwrap_or_default();
    if line.starts_with(SUMMARY_HEADER[0]) {
        return text.into_bytes();
    }
    let mut values: Vec<&str> = line.split(',').collect();
    match corruption {
        BillCorruption::MalformedRow => {
            // Column 13, the settlement amount.
            if let Some(value) = values.get_mut(12) {
                *value = "`abc";
            }
        }
        BillCorruption::ColumnCount => {
            values.pop();
        }
        BillCorruption::Hash | BillCorruption::Truncate => {}
    }
    let damaged = values.join(",");
    text.replace_range(start..start + len, &damaged);
    text.into_bytes()
}

/// The `hash_value` advertised for `bill`: its SHA-1 in lower hex, or a wrong one under the
/// `hash` corruption.
pub fn advertised_hash(bill: &[u8], corrupt: Option<BillCorruption>) -> String {
    let mut hash = hex::encode(Sha1::digest(bill));
    if corrupt == Some(BillCorruption::Hash) {
        let first = if hash.starts_with('0') { "1" } else { "0" };
        hash.replace_range(0..1, first);
    }
    hash
}

/// The download body: `bill` gzipped if asked, cut in half under the `truncate` corruption.
pub fn download_body(bill: &[u8], gzip: bool, truncate: bool) -> io::Result<Vec<u8>> {
    let mut body = if gzip {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bill)?;
        encoder.finish()?
    } else {
        bill.to_vec()
    };
    if truncate {
        body.truncate(body.len() / 2);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;
    use crate::bill::{BillItem, BillReader, BillSummary, read_bill};
    use crate::sim::chaos::Chaos;

    fn row(no: &str, total: i64) -> BillRow {
        BillRow {
            trade_time: "2026-11-24 10:00:00".into(),
            out_trade_no: no.into(),
            trade_state: "SUCCESS".into(),
            settlement_total_fen: total,
            order_total_fen: total,
            fee_e5: 1000,
            ..BillRow::default()
        }
    }

    fn rows() -> Vec<BillRow> {
        vec![row("A1", 100), row("A2", 200), row("A3", 300)]
    }

    fn read(bytes: &[u8]) -> (Vec<BillRow>, BillSummary) {
        read_bill(bytes).expect("bill")
    }

    #[test]
    fn no_chaos_serves_the_rows_and_their_summary() {
        let chaos = BillChaos::default();
        let rows = apply_row_chaos(rows(), &chaos);
        let (read_rows, summary) = read(&render(&rows, &chaos).expect("render"));
        assert_eq!(read_rows, rows);
        assert_eq!(summary, BillSummary::from_rows(&rows).expect("sums"));
    }

    #[test]
    fn each_row_knob_is_one_discrepancy_and_the_summary_follows_the_rows() {
        let chaos = BillChaos {
            omit_rows: vec!["A1".into()],
            amount_delta_fen: HashMap::from([("A2".into(), -5)]),
            duplicate_rows: vec!["A3".into()],
            status_override: HashMap::from([("A3".into(), "REVOKED".into())]),
            ..BillChaos::default()
        };
        let rows = apply_row_chaos(rows(), &chaos);
        let nos: Vec<&str> = rows.iter().map(|r| r.out_trade_no.as_str()).collect();
        assert_eq!(nos, ["A2", "A3", "A3"]);
        assert_eq!((rows[0].settlement_total_fen, rows[0].order_total_fen), (195, 195));
        assert!(rows[1..].iter().all(|r| r.trade_state == "REVOKED"));
        let (_, summary) = read(&render(&rows, &chaos).expect("render"));
        assert_eq!((summary.count, summary.settlement_total_fen), (3, 795));
    }

    #[test]
    fn summary_delta_touches_the_summary_only() {
        let chaos = BillChaos { summary_delta_fen: 7, ..BillChaos::default() };
        let (read_rows, summary) = read(&render(&rows(), &chaos).expect("render"));
        assert_eq!(read_rows, rows());
        assert_eq!(summary.settlement_total_fen, 607);
        assert_eq!(summary.order_total_fen, 600);
    }

    #[test]
    fn damaged_first_row_is_reported_by_the_reader_on_line_2() {
        for (corruption, expected) in [
            (BillCorruption::MalformedRow, "bill line 2: column 13 (应结订单金额): `abc`"),
            (BillCorruption::ColumnCount, "bill line 2: expected 27 columns, found 26"),
        ] {
            let chaos = BillChaos { corrupt: Some(corruption), ..BillChaos::default() };
            let bytes = render(&rows(), &chaos).expect("render");
            let items: Vec<_> = BillReader::new(bytes.as_slice()).collect();
            let errors: Vec<String> = items.iter().filter_map(|i| i.as_ref().err()).map(ToString::to_string).collect();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with(expected), "{}", errors[0]);
            assert!(matches!(items.last(), Some(Ok(BillItem::Summary(s))) if s.count == 3));
        }
        // Without rows there is nothing to damage.
        let chaos = BillChaos { corrupt: Some(BillCorruption::ColumnCount), ..BillChaos::default() };
        assert_eq!(read(&render(&[], &chaos).expect("render")).1.count, 0);
    }

    #[test]
    fn hash_is_of_the_uncompressed_file_unless_corrupted() {
        let bill = render(&rows(), &BillChaos::default()).expect("render");
        let hash = advertised_hash(&bill, None);
        assert_eq!(hash.len(), 40);
        assert_eq!(hash, hex::encode(Sha1::digest(&bill)));
        assert_ne!(advertised_hash(&bill, Some(BillCorruption::Hash)), hash);
        assert_eq!(advertised_hash(&bill, Some(BillCorruption::Truncate)), hash);
    }

    #[test]
    fn gzip_body_round_trips_and_truncation_breaks_it() {
        let bill = render(&rows(), &BillChaos::default()).expect("render");
        let gz = download_body(&bill, true, false).expect("gzip");
        let mut plain = Vec::new();
        GzDecoder::new(gz.as_slice()).read_to_end(&mut plain).expect("gunzip");
        assert_eq!(plain, bill);
        let cut = download_body(&bill, true, true).expect("gzip");
        assert_eq!(cut.len(), gz.len() / 2);
        assert!(GzDecoder::new(cut.as_slice()).read_to_end(&mut Vec::new()).is_err());
        assert_eq!(download_body(&bill, false, false).expect("plain"), bill);
        assert_eq!(download_body(&bill, false, true).expect("plain").len(), bill.len() / 2);
    }

    #[test]
    fn bill_chaos_is_off_by_default_and_settable_through_chaos() {
        assert_eq!(serde_json::from_str::<Chaos>("{}").expect("parse").bill, BillChaos::default());
        let parsed: Chaos = serde_json::from_str(
            r#"{"bill":{"omit_rows":["A1"],"amount_delta_fen":{"A2":-1},"corrupt":"malformed_row"}}"#,
        )
        .expect("parse");
        assert_eq!(parsed.bill.omit_rows, ["A1"]);
        assert_eq!(parsed.bill.amount_delta_fen.get("A2"), Some(&-1));
        assert_eq!(parsed.bill.corrupt, Some(BillCorruption::MalformedRow));
        assert!(serde_json::from_str::<Chaos>(r#"{"bill":{"omit":["A1"]}}"#).is_err());
        for name in ["hash", "truncate", "column_count"] {
            assert!(serde_json::from_str::<BillCorruption>(&format!("\"{name}\"")).is_ok());
        }
    }
}
