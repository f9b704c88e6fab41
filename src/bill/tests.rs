//! Whole-file tests: the real row from protocol §9.1, every rejection the reader promises, and
//! the round-trip property `read(write(rows)) == rows`.

use proptest::prelude::*;

use super::*;

/// A real payment row quoted in public code (protocol §9.1).
const REAL_ROW: &str = "`2020-03-02 14:17:55,`wx8c4f683438292e27,`1562960801,`0,`,`4200000480202003022581846288,`2020030213120001,`o0bRy0_kzrcz3ug_eXNjp5VZrE6E,`JSAPI,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`自己来,`98880001::我自己来测试,`0.00000,`0.30%,`0.01,`0.00,`";

fn header() -> String {
    HEADER.join(",")
}

/// A file from lines, joined with `eol` and ended with it.
fn file(lines: &[&str], eol: &str) -> Vec<u8> {
    lines.iter().flat_map(|l| [*l, eol]).collect::<String>().into_bytes()
}

fn summary_header() -> String {
    SUMMARY_HEADER.join(",")
}

fn errors(bytes: &[u8]) -> Vec<BillError> {
    BillReader::new(bytes).filter_map(Result::err).collect()
}

#[test]
fn real_row_is_read() {
    let (h, s) = (header(), summary_header());
    let bytes = file(&[&h, REAL_ROW, &s, "`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00"], "\n");
    let (rows, summary) = read_bill(bytes.as_slice()).expect("bill");
    let row = &rows[0];
    assert_eq!(row.trade_time, "2020-03-02 14:17:55");
    assert_eq!(row.transaction_id, "4200000480202003022581846288");
    assert_eq!(row.out_trade_no, "2020030213120001");
    assert_eq!(row.sub_mchid, "0");
    assert_eq!(row.device_info, "");
    assert_eq!((row.settlement_total_fen, row.order_total_fen, row.fee_e5), (1, 1, 0));
    assert_eq!((row.refund_id.as_str(), row.refund_fen, row.refund_type.as_str()), ("0", 0, ""));
    assert_eq!(row.product_name, "自己来");
    assert_eq!(row.attach, "98880001::我自己来测试");
    assert_eq!(row.rate, "0.30%");
    assert_eq!(row.rate_note, "");
    assert_eq!(summary, BillSummary::from_rows(&rows).expect("sums"));
}

#[test]
fn writer_reproduces_the_real_row_bytes() {
    let (rows, _) =
        read_bill(file(&[&header(), REAL_ROW, &summary_header(), "`1,`0,`0,`0,`0,`0,`0"], "\r\n").as_slice())
            .expect("bill");
    let mut writer = BillWriter::new(Vec::new()).expect("header");
    writer.write_row(&rows[0]).expect("row");
    let written = writer.finish().expect("finish");
    let expected = [BOM, &file(&[&header(), REAL_ROW, &summary_header()], "\r\n")].concat();
    assert!(written.starts_with(&expected));
    assert!(written.ends_with(b"\r\n`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00\r\n"));
}

#[test]
fn sdk_fixture_summary_style_with_bom_and_crlf() {
    let bytes =
        [BOM, &file(&[&header(), REAL_ROW, &summary_header(), "`45.0,`0.47,`0.14,`0.0,`0.08,`0.47,`0.14"], "\r\n")]
            .concat();
    let mut reader = BillReader::new(bytes.as_slice());
    let items: Vec<_> = (&mut reader).collect::<Result<_, _>>().expect("bill");
    assert!(matches!(items[0], BillItem::Row(_)));
    let BillItem::Summary(summary) = &items[1] else { panic!("summary expected: {items:?}") };
    assert_eq!((summary.count, summary.settlement_total_fen, summary.fee_e5), (45, 47, 8000));
    assert_eq!(reader.rows_summary().count, 1);
    assert_eq!(reader.stated_summary(), Some(summary));
}

#[test]
fn bad_rows_are_reported_with_their_line_and_reading_goes_on() {
    let short = REAL_ROW.rsplit_once(',').expect("comma").0.to_owned();
    let precise = REAL_ROW.replacen("`0.01,", "`0.011,", 1);
    let unknown = REAL_ROW.replace("`SUCCESS", "`PAID");
    let abc = REAL_ROW.replacen("`0.01,", "`abc,", 1);
    let (h, s) = (header(), summary_header());
    let lines = [&h, &short, &precise, REAL_ROW, &unknown, &abc, &s, "`1,`0.01,`0,`0,`0,`0.01,`0"];
    let items: Vec<_> = BillReader::new(file(&lines, "\r\n").as_slice()).collect();
    assert_eq!(items.len(), 6, "{items:?}");
    let messages: Vec<String> = items.iter().filter_map(|i| i.as_ref().err()).map(ToString::to_string).collect();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[0], "bill line 2: expected 27 columns, found 26");
    assert!(
        messages[1].starts_with("bill line 3: column 13 (应结订单金额): `0.011` has more than 2"),
        "{}",
        messages[1]
    );
    assert_eq!(messages[2], "bill line 5: column 10 (交易状态): unknown trade_state `PAID`");
    assert!(messages[3].starts_with("bill line 6: column 13"), "{}", messages[3]);
    assert!(matches!(items[5], Ok(BillItem::Summary(_))));
}

#[test]
fn structural_errors_end_the_file() {
    let (h, s) = (header(), summary_header());
    let sum = "`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00";
    let cases: [(&[&str], &str); 6] = [
        (&[], "bill line 1: empty file"),
        (&[REAL_ROW, &s, sum], "bill line 1: missing header"),
        (&[&h, REAL_ROW], "bill line 3: file ends before the summary"),
        (&[&h, REAL_ROW, &s], "bill line 4: file ends after the summary header"),
        (&[&h, REAL_ROW, &s, sum, REAL_ROW], "bill line 5: unexpected content after the summary"),
        (&[&h, REAL_ROW, &s, "`1,`0.01"], "bill line 4: summary line: expected 7 values, found 2"),
    ];
    for (lines, expected) in cases {
        let errors = errors(&file(lines, "\r\n"));
        assert_eq!(errors.len(), 1, "{lines:?}: {errors:?}");
        assert!(errors[0].to_string().starts_with(expected), "{expected}: {}", errors[0]);
    }
    // A download cut anywhere in a row (even inside a character) says so, once.
    let whole = file(&[&h, REAL_ROW, REAL_ROW], "\r\n");
    let third_line_start = whole.len() - REAL_ROW.len() - 2;
    for cut in third_line_start + 1..whole.len() - 1 {
        let messages: Vec<String> = errors(&whole[..cut]).iter().map(ToString::to_string).collect();
        assert_eq!(messages, ["bill line 3: file ends in the middle of a line (truncated download?)"], "cut {cut}");
    }
    // Blank lines after the summary are tolerated (a trailing newline, an editor).
    assert!(errors(&file(&[&h, &s, "`0,`0,`0,`0,`0,`0,`0", "", ""], "\n")).is_empty());
}

#[test]
fn overlong_lines_and_invalid_utf8_are_refused() {
    let long = format!("{}\n{}\n", header(), "x".repeat(70_000));
    assert!(errors(long.as_bytes())[0].message.starts_with("line longer than"));
    let mut bad = format!("{}\n", header()).into_bytes();
    bad.extend_from_slice(b"\xff\xfe\n");
    assert!(errors(&bad)[0].message.starts_with("not UTF-8"));
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_:|*-]{1,32}",
        "[咖啡奶茶拿铁套餐大杯小份（）自己来测试 ]{1,12}",
        "[^,\r\n]{1,16}",
    ]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0_i64), 0_i64..100_000_000, any::<i64>()]
}

fn trade_time() -> impl Strategy<Value = String> {
    (2000_u32..2100, 1_u32..=12, 1_u32..=28, 0_u32..24, 0_u32..60, 0_u32..60)
        .prop_map(|(y, mo, d, h, mi, s)| format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"))
}

fn row() -> impl Strategy<Value = BillRow> {
    let state = prop::sample::select(TRADE_STATES.to_vec()).prop_map(str::to_owned);
    (
        (trade_time(), text(), text(), text(), text(), text(), text(), text(), text(), state, text(), text()),
        (amount(), amount(), text(), text(), amount(), amount(), text(), text(), text(), text()),
        (amount(), text(), amount(), amount(), text()),
    )
        .prop_map(|(a, b, c)| BillRow {
            trade_time: a.0,
            appid: a.1,
            mchid: a.2,
            sub_mchid: a.3,
            device_info: a.4,
            transaction_id: a.5,
            out_trade_no: a.6,
            openid: a.7,
            trade_type: a.8,
            trade_state: a.9,
            bank_type: a.10,
            currency: a.11,
            settlement_total_fen: b.0,
            coupon_fen: b.1,
            refund_id: b.2,
            out_refund_no: b.3,
            refund_fen: b.4,
            recharge_coupon_refund_fen: b.5,
            refund_type: b.6,
            refund_status: b.7,
            product_name: b.8,
            attach: b.9,
            fee_e5: c.0,
            rate: c.1,
            order_total_fen: c.2,
            refund_request_fen: c.3,
            rate_note: c.4,
        })
}

proptest! {
    #[test]
    fn read_of_written_rows_is_the_rows(rows in prop::collection::vec(row(), 0..20)) {
        let mut writer = BillWriter::new(Vec::new()).expect("header");
        let Ok(expected) = BillSummary::from_rows(&rows) else {
            // Totals past i64 cannot be stated: the writer refuses the row that overflows.
            prop_assert!(rows.iter().any(|row| writer.write_row(row).is_err()));
            return Ok(());
        };
        for row in &rows {
            writer.write_row(row).expect("row");
        }
        let bytes = writer.finish().expect("finish");
        let (read, summary) = read_bill(bytes.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&read, &rows);
        prop_assert_eq!(summary, expected);
    }
}
