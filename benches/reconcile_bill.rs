//! Reconciliation benchmark: a generated 1,000,000-row ALL bill (gzipped) against 1,000,000
//! paid orders in the embedded (SQLite) database. Reports wall time, rows/s and peak RSS of the
//! reconciliation core (hash check of the uncompressed stream, loading our day's payments,
//! streaming parse and comparison), beside the raw ceiling measured in the same run: gunzip +
//! line split of the same file. The HTTP download is not included (the simulator would have to
//! hold a million orders in memory); it is a streamed copy to disk.
//!
//! Run: `cargo bench --bench reconcile_bill` (`BENCH_ROWS` overrides 1,000,000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::collections::HashSet;
use std::io::{BufRead, BufWriter};
use std::time::Instant;

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Asia::Shanghai;
use flate2::Compression;
use flate2::write::GzEncoder;
use wxpay_recon::bill::{BillItem, BillReader, BillRow, BillWriter};
use wxpay_recon::config::{CatalogItem, DatabaseSettings};
use wxpay_recon::services::reconcile::compare::Comparator;
use wxpay_recon::services::reconcile::fetch::{open_plain, sha1_of_plain};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

/// Peak resident set size of this process (KiB), from /proc.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS to the current RSS, so the next peak belongs to what follows.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn row(n: u64, day: NaiveDate) -> BillRow {
    let secs = n % 86_400;
    let time = format!("{} {:02}:{:02}:{:02}", day, secs / 3600, secs % 3600 / 60, secs % 60);
    let amount = 100 + (n % 1000) as i64;
    BillRow {
        trade_time: time,
        appid: "wxbench".into(),
        mchid: "1900000000".into(),
        sub_mchid: "0".into(),
        device_info: String::new(),
        transaction_id: format!("42{n:026}"),
        out_trade_no: format!("B{n:010}"),
        openid: format!("o{n:027}"),
        trade_type: "JSAPI".into(),
        trade_state: "SUCCESS".into(),
        bank_type: "OTHERS".into(),
        currency: "CNY".into(),
        settlement_total_fen: amount,
        coupon_fen: 0,
        refund_id: "0".into(),
        out_refund_no: "0".into(),
        refund_fen: 0,
        recharge_coupon_refund_fen: 0,
        refund_type: String::new(),
        refund_status: String::new(),
        product_name: "咖啡豆 250g".into(),
        attach: String::new(),
        fee_e5: amount * 600,
        rate: "0.60%".into(),
        order_total_fen: amount,
        refund_request_fen: 0,
        rate_note: String::new(),
    }
}

async fn run() {
    let rows: u64 = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let day = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
    let day_start = Shanghai.from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap()).unwrap().timestamp_millis();
    println!("reconcile benchmark: {rows} bill rows against {rows} paid orders (embedded SQLite)");

    let started = Instant::now();
    let db = wxpay_recon::deps::database(&DatabaseSettings {
        url: format!("sqlite://{}/data.sqlite", dir.path().display()),
        max_connections: 4,
        acquire_timeout_ms: 30_000,
    })
    .await
    .unwrap();
    db.seed_products(&[CatalogItem { id: "p".into(), name: "P".into(), price_fen: 100 }], 0).await.unwrap();
    let user = db.upsert_user("obench", None, "v1:x", 0).await.unwrap();
    let seed = format!(
        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {last})
         INSERT INTO orders (out_trade_no, user_id, payer_openid, product_id, quantity, amount_fen, description,
             status, transaction_id, time_expire_ms, paid_at_ms, created_at_ms, updated_at_ms)
         SELECT printf('B%010d', n), {uid}, 'o', 'p', 1, 100 + n % 1000, 'P', 'SUCCESS', printf('42%026d', n),
             0, {day_start} + (n % 86400) * 1000, 0, 0 FROM seq",
        last = rows - 1,
        uid = user.id,
    );
    sqlx::query(sqlx::AssertSqlSafe(seed)).execute(db.writer()).await.unwrap();
    let bill_path = dir.path().join("bill.gz");
    let file = std::fs::File::create(&bill_path).unwrap();
    let mut writer = BillWriter::new(GzEncoder::new(BufWriter::new(file), Compression::default())).unwrap();
    for n in 0..rows {
        writer.write_row(&row(n, day)).unwrap();
    }
    writer.finish().unwrap().finish().unwrap();
    let gz_bytes = std::fs::metadata(&bill_path).unwrap().len();
    println!(
        "  prepared in {:.1} s (bill: {:.1} MiB gzipped)",
        started.elapsed().as_secs_f64(),
        gz_bytes as f64 / 1048576.0
    );

    // Ceiling: gunzip + line split of the same file.
    let started = Instant::now();
    let mut reader = open_plain(&bill_path, u64::MAX).unwrap();
    let (mut lines, mut bytes, mut buf) = (0u64, 0u64, Vec::with_capacity(512));
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).unwrap();
        if n == 0 {
            break;
        }
        lines += 1;
        bytes += n as u64;
    }
    let ceiling = started.elapsed().as_secs_f64();
    println!(
        "  ceiling: gunzip + line split: {lines} lines, {:.0} MiB in {ceiling:.2} s = {:.0} rows/s",
        bytes as f64 / 1048576.0,
        rows as f64 / ceiling
    );

    // The reconciliation core, as `Reconciler::run` does it after the download.
    reset_peak_rss();
    let rss_before = peak_rss_kib();
    let started = Instant::now();
    let sha1 = {
        let path = bill_path.clone();
        tokio::task::spawn_blocking(move || sha1_of_plain(&path, u64::MAX).unwrap()).await.unwrap()
    };
    let hashed = started.elapsed().as_secs_f64();
    let mut comparator = Comparator::new(HashSet::new());
    db.for_each_paid_order(day_start, day_start + 86_400_000, |o| comparator.add_ours(o)).await.unwrap();
    let loaded = started.elapsed().as_secs_f64();
    let path = bill_path.clone();
    let comparison = tokio::task::spawn_blocking(move || {
        let mut reader = BillReader::new(open_plain(&path, u64::MAX).unwrap());
        while let Some(item) = reader.next() {
            let line = reader.line();
            match item.unwrap() {
                BillItem::Row(row) => comparator.row(line, &row).unwrap(),
                BillItem::Summary(summary) => comparator.summary(line, &summary, reader.rows_summary()),
            }
        }
        comparator.finish()
    })
    .await
    .unwrap();
    let total = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    assert_eq!(comparison.rows, rows);
    assert!(comparison.discrepancies.is_empty(), "{:?}", comparison.discrepancies.first());
    println!(
        "  reconcile: {total:.2} s = {:.0} rows/s (hash {hashed:.2} s, load ours {:.2} s, parse + compare {:.2} s), sha1 {sha1}",
        rows as f64 / total,
        loaded - hashed,
        total - loaded
    );
    println!(
        "  peak RSS during reconcile: {:.0} MiB (process before: {:.0} MiB)",
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    println!("  ratio: reconcile time / ceiling time = {:.1}", total / ceiling);
    println!("\n| rows | wall time | rows/s | peak RSS | ceiling (gunzip+split) | ratio |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {rows} | {total:.2} s | {:.0} | {:.0} MiB | {ceiling:.2} s | {:.1} |",
        rows as f64 / total,
        peak as f64 / 1024.0,
        total / ceiling
    );
}
