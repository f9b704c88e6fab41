//! Daily reconciliation against the simulator's bills: a clean day, a missed payment healed
//! from the bill, each injected discrepancy class found exactly once, identical re-runs, bills
//! that fail verification applying nothing, Shanghai midnight, the scheduler's retries, and
//! the CLI. "The next morning" comes from the shared clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate, TimeZone};
use chrono_tz::Asia::Shanghai;
use serde_json::{Value, json};
use wxpay_recon::domain::time::wechat_date;
use wxpay_recon::domain::{BillRun, Discrepancy, EventSource, Evidence, OrderStatus};
use wxpay_recon::services::reconcile::Quiet;
use wxpay_recon::storage::orders::{TransitionOutcome, TransitionRequest};

use crate::helpers::*;

/// The poller would also find missed payments once the clock jumps to the next day: these
/// tests are about the bill finding them.
fn no_polling(s: &mut wxpay_recon::config::Settings) {
    s.poll.sweep_interval_ms = 3_600_000;
}

/// Tests that pay and then reconcile "today" must not straddle Shanghai midnight: near it,
/// the shared clock first moves past it.
fn away_from_midnight(env: &TestEnv) -> NaiveDate {
    let local = env.clock.now().with_timezone(&Shanghai);
    if local.format("%H%M").to_string().as_str() >= "2345" {
        env.clock.advance(Duration::from_secs(20 * 60));
    }
    wechat_date(env.clock.now())
}

/// Waits for `n` SUCCESS orders; on timeout says where the payments are stuck (deliveries at the
/// simulator, rows in the inbox, applied), since this wait has timed out in loaded suite runs.
async fn wait_for_payments(env: &TestEnv, app: &TestApp, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while count_status(app, "SUCCESS").await != n {
        if std::time::Instant::now() > deadline {
            let stats: Value =
                reqwest::get(format!("{}/sim/stats", env.sim.base_url())).await.unwrap().json().await.unwrap();
            let (stored, processed): (i64, i64) =
                sqlx::query_as("SELECT COUNT(*), COUNT(processed_at_ms) FROM notifications")
                    .fetch_one(app.state.db.reader())
                    .await
                    .unwrap();
            let dead = app.state.db.dead_jobs().await.unwrap();
            let queues = app.state.operations.queues().await;
            panic!(
                "{} of {n} payments applied after 120 s; inbox {stored} stored, {processed} processed; simulator {stats}; \
                 {} dead job(s), first: {:?}; queues: {queues:?}",
                count_status(app, "SUCCESS").await,
                dead.len(),
                dead.first().map(|j| (&j.kind, &j.last_error)),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Moves the shared clock to `hh:mm` Shanghai on the day after `day`.
fn advance_to_next_morning(env: &TestEnv, day: NaiveDate, hh: u32, mm: u32) {
    let next = day.checked_add_days(Days::new(1)).unwrap();
    let target = Shanghai.from_local_datetime(&next.and_hms_opt(hh, mm, 0).unwrap()).unwrap();
    let delta = target.with_timezone(&chrono::Utc) - env.clock.now();
    env.clock.advance(delta.to_std().expect("target in the future"));
}

/// (class, resolution, out_trade_no) of a day's discrepancies, sorted.
fn classes(found: &[Discrepancy]) -> Vec<(String, String, Option<String>)> {
    let mut out: Vec<_> =
        found.iter().map(|d| (d.class.to_string(), d.resolution.to_string(), d.out_trade_no.clone())).collect();
    out.sort();
    out
}

/// A run without its timestamps and attempt counter, to compare two runs of one date.
fn stable(run: &BillRun) -> BillRun {
    BillRun { started_at_ms: 0, finished_at_ms: 0, attempts: 0, ..run.clone() }
}

fn work_dir_is_empty(env: &TestEnv) -> bool {
    std::fs::read_dir(env.path("bill-tmp")).map_or(true, |mut d| d.next().is_none())
}

async fn a_day_reconciles_and_every_injected_class_is_found_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, no_polling).await;
    let (client, _) = env.client(&app).await;
    let day = away_from_midnight(&env);

    // 502 orders: 448 paid and notified, 1 paid with its notification lost, 31 unpaid, 20
    // cancelled by the payer, and 2 paid then refunded (one in part, one in full).
    let numbers = create_orders(&client, 500).await;
    let (paid, rest) = numbers.split_at(448);
    let (missed, rest) = rest.split_at(1);
    let (cancelled, _unpaid) = rest.split_at(20);
    pay_all(&env, paid).await;
    wait_for_payments(&env, &app, 448).await;
    // Two more, then one refunded in part and one in full.
    let partly = client.create_order("coffee", 1).await.unwrap().out_trade_no;
    let fully = client.create_order("coffee", 1).await.unwrap().out_trade_no;
    pay_all(&env, &[partly.clone(), fully.clone()]).await;
    eventually("coffee paid", Duration::from_secs(30), || async { count_status(&app, "SUCCESS").await == 450 }).await;
    for (no, amount) in [(&partly, 1000), (&fully, 6800)] {
        let path = format!("/api/orders/{no}/refund");
        assert_eq!(admin_post(&app.base, &path, Some(ADMIN_TOKEN), json!({ "amount_fen": amount })).await.0, 201);
    }
    eventually("refunds succeeded", Duration::from_secs(30), || async { count_status(&app, "REFUND").await == 2 })
        .await;
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;
    pay_all(&env, missed).await;
    for no in cancelled {
        client.post("close", &format!("/api/orders/{no}/close"), json!({})).await.unwrap();
    }
    advance_to_next_morning(&env, day, 10, 0);

    let reconciler = &app.state.reconciler;
    let first = reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    let bill_date = day.to_string();
    let found = app.state.db.discrepancies_of(&bill_date).await.unwrap();
    assert_eq!(classes(&found), vec![("missing_here".into(), "healed".into(), Some(missed[0].clone()))]);
    assert_eq!(
        (first.bill_rows, first.orders_compared, first.healed, first.unexplained),
        (453, 451, 1, 0),
        "{first:?}"
    );
    assert!(first.bill_sha1.is_some());
    let healed = app.state.db.order_by_no(&trade_no(&missed[0])).await.unwrap().unwrap();
    assert_eq!(healed.status.as_str(), "SUCCESS");
    let events = app.state.db.order_events(healed.id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!((last.source.as_str(), last.to_status.as_str(), last.applied), ("bill", "SUCCESS", 1));
    assert_eq!(last.evidence.as_deref(), Some(format!("bill:{bill_date}").as_str()));
    assert!(work_dir_is_empty(&env), "the downloaded bill is deleted");

    // The same date again: identical results.
    let second = reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    assert_eq!(stable(&second), stable(&first));
    assert_eq!(classes(&app.state.db.discrepancies_of(&bill_date).await.unwrap()), classes(&found));
    assert_eq!(second.attempts, 2);

    // Each class injected into the bill once is reported once.
    let partly_id = app.state.db.order_by_no(&trade_no(&partly)).await.unwrap().unwrap().id;
    let partly_refund = app.state.db.refunds_of_order(partly_id).await.unwrap().remove(0).out_refund_no;
    set_chaos(
        &env,
        json!({ "bill": {
            "omit_rows": [paid[0]],
            "amount_delta_fen": { (paid[1].clone()): 1 },
            "duplicate_rows": [paid[2]],
            "status_override": { (paid[3].clone()): "REVOKED" },
            "summary_delta_fen": 7,
            "refund_delta_fen": { (partly_refund.clone()): -1 },
        }}),
    )
    .await;
    let third = reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    let found = app.state.db.discrepancies_of(&bill_date).await.unwrap();
    let mut expected = vec![
        ("amount_mismatch".to_owned(), "unexplained".to_owned(), Some(paid[1].clone())),
        ("duplicate_row".into(), "unexplained".into(), Some(paid[2].clone())),
        ("missing_at_wechat".into(), "unexplained".into(), Some(paid[0].clone())),
        ("missing_here".into(), "healed".into(), Some(missed[0].clone())),
        ("refund_mismatch".into(), "unexplained".into(), Some(partly.clone())),
        ("status_mismatch".into(), "unexplained".into(), Some(paid[3].clone())),
        ("summary_mismatch".into(), "unexplained".into(), None),
    ];
    expected.sort();
    assert_eq!(classes(&found), expected);
    assert_eq!((third.status.as_str(), third.unexplained, third.healed), ("discrepancies", 6, 1));
    let amount = found.iter().find(|d| d.class.as_str() == "amount_mismatch").unwrap();
    assert_eq!((amount.ours.as_deref(), amount.theirs.as_deref()), (Some("1"), Some("2")));
    assert!(amount.bill_line.is_some_and(|l| l >= 2));

    // Reports on disk, CSV and JSON, replaced by each run.
    let json: Value =
        serde_json::from_slice(&std::fs::read(env.path("reports").join(format!("{bill_date}.json"))).unwrap()).unwrap();
    assert_eq!(json["discrepancies"].as_array().unwrap().len(), 7);
    assert_eq!(json["run"]["status"], "discrepancies");
    let csv = std::fs::read_to_string(env.path("reports").join(format!("{bill_date}.csv"))).unwrap();
    assert_eq!(csv.lines().count(), 8, "header + one line per discrepancy:\n{csv}");
    assert!(app.metrics.reconcile_discrepancies.with_label_values(&["duplicate_row", "unexplained"]).get() == 1);
    assert_eq!(app.metrics.reconcile_healed.get(), 1, "healed once, reported again on re-runs");
}

async fn a_bill_that_fails_verification_applies_nothing(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, no_polling).await;
    let (client, _) = env.client(&app).await;
    let day = away_from_midnight(&env);
    let numbers = create_orders(&client, 6).await;
    pay_all(&env, &numbers[..5]).await;
    eventually("payments applied", Duration::from_secs(30), || async { count_status(&app, "SUCCESS").await == 5 })
        .await;
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;
    pay_all(&env, &numbers[5..]).await; // missed here: a good bill would heal it
    advance_to_next_morning(&env, day, 10, 0);

    let cases = [
        ("hash", json!({ "corrupt": "hash" }), "hash mismatch"),
        ("truncate", json!({ "corrupt": "truncate" }), "cannot read the bill"),
        ("malformed_row", json!({ "corrupt": "malformed_row" }), "line 2"),
        ("column_count", json!({ "corrupt": "column_count" }), "line 2"),
        ("unknown_status", json!({ "status_override": { (numbers[0].clone()): "PAID_MAYBE" } }), "line"),
    ];
    for (corruption, bill_chaos, expected) in cases {
        set_chaos(&env, json!({ "drop_rate": 1.0, "bill": bill_chaos })).await;
        let err = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{corruption}: {err}");
        assert_eq!(count_status(&app, "SUCCESS").await, 5, "{corruption}: nothing applied");
        assert!(work_dir_is_empty(&env), "{corruption}: the temporary bill is gone");
        let run = app.state.db.bill_run(&day.to_string()).await.unwrap().unwrap();
        assert_eq!(run.status.as_str(), "failed", "{corruption}");
        assert!(run.error.as_deref().is_some_and(|e| e.contains(expected)), "{run:?}");
        assert!(run.next_attempt_at_ms.is_some(), "a failed run is retried later");
    }
    // The fault is gone: the same date now heals the missed payment.
    set_chaos(&env, json!({ "drop_rate": 1.0 })).await;
    let run = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    assert_eq!((run.status.as_str(), run.healed, run.unexplained), ("discrepancies", 1, 0));
    assert_eq!(count_status(&app, "SUCCESS").await, 6);
}

async fn payments_around_shanghai_midnight_land_on_their_own_day(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, no_polling).await;
    let (client, _) = env.client(&app).await;
    // Move to 23:59:58 Shanghai (today, or tomorrow if that is already past).
    let today = wechat_date(env.clock.now());
    let mut target =
        Shanghai.from_local_datetime(&today.and_hms_opt(23, 59, 58).unwrap()).unwrap().with_timezone(&chrono::Utc);
    if target <= env.clock.now() {
        target += chrono::Duration::days(1);
    }
    env.clock.advance((target - env.clock.now()).to_std().unwrap());
    let numbers = create_orders(&client, 2).await;
    let before = wechat_date(env.clock.now());
    pay_all(&env, &numbers[..1]).await;
    env.clock.advance(Duration::from_secs(4));
    let after = wechat_date(env.clock.now());
    assert_eq!(after, before.checked_add_days(Days::new(1)).unwrap());
    pay_all(&env, &numbers[1..]).await;
    eventually("both paid", Duration::from_secs(30), || async { count_status(&app, "SUCCESS").await == 2 }).await;
    advance_to_next_morning(&env, after, 10, 0);

    for (day, no) in [(before, &numbers[0]), (after, &numbers[1])] {
        let run = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap();
        assert_eq!((run.status.as_str(), run.bill_rows, run.orders_compared), ("clean", 1, 1), "{day}: {run:?}");
        let order = app.state.db.order_by_no(&trade_no(no)).await.unwrap().unwrap();
        assert_eq!(wechat_date(wxpay_recon::domain::time::from_ms(order.paid_at_ms.unwrap())), day);
    }
}

async fn the_scheduler_waits_for_the_bill_and_catches_up(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            no_polling(s);
            s.reconcile.enabled = true;
            s.reconcile.run_at = "08:00".into(); // before WeChat has the bill (10:00)
            s.reconcile.retry_interval_secs = 600;
            s.reconcile.tick_interval_ms = 100;
            s.reconcile.catch_up_days = 3;
        })
        .await;
    let (client, _) = env.client(&app).await;
    let day = away_from_midnight(&env);
    let numbers = create_orders(&client, 3).await;
    pay_all(&env, &numbers).await;
    eventually("paid", Duration::from_secs(30), || async { count_status(&app, "SUCCESS").await == 3 }).await;
    let bill_date = day.to_string();

    // 08:30 the next morning: the run is attempted, WeChat is still creating the bill.
    advance_to_next_morning(&env, day, 8, 30);
    eventually("a not_ready run", Duration::from_secs(30), || async {
        app.state.db.bill_run(&bill_date).await.unwrap().is_some_and(|r| r.status.as_str() == "not_ready")
    })
    .await;
    // The days before had no trade: caught up as no_bill.
    for back in [2, 3] {
        let earlier = day.checked_sub_days(Days::new(back - 1)).unwrap().to_string();
        eventually("earlier days caught up", Duration::from_secs(30), || async {
            app.state.db.bill_run(&earlier).await.unwrap().is_some_and(|r| r.status.as_str() == "no_bill")
        })
        .await;
    }
    // Past the retry interval and 10:00 (10:10): the bill is there.
    env.clock.advance(Duration::from_secs(100 * 60));
    eventually("a clean run", Duration::from_secs(30), || async {
        app.state.db.bill_run(&bill_date).await.unwrap().is_some_and(|r| r.status.as_str() == "clean")
    })
    .await;
    let run = app.state.db.bill_run(&bill_date).await.unwrap().unwrap();
    assert_eq!((run.bill_rows, run.attempts), (3, 2), "{run:?}");
    // The gauge is refreshed in the background (gauges.refresh_interval_ms), not by the scrape.
    eventually("the scrape shows the last success", Duration::from_secs(10), || async {
        let scraped = reqwest::get(format!("{}/metrics", app.ops)).await.unwrap().text().await.unwrap();
        let last = scraped.lines().find(|l| l.starts_with("wxpay_reconcile_last_success_timestamp_seconds "));
        last.is_some_and(|last| !last.ends_with(" 0"))
    })
    .await;
}

/// The CLI on a past day the simulator has no bill for, while our books say we were paid then:
/// one unexplained discrepancy, exit code 3. And `bill parse` on good and broken files.
async fn the_cli_reports_and_exits_non_zero_on_unexplained(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, no_polling).await;
    let (client, _) = env.client(&app).await;
    let no = create_orders(&client, 1).await.remove(0);
    let yesterday = wechat_date(env.clock.now()).checked_sub_days(Days::new(1)).unwrap();
    let paid_at = Shanghai.from_local_datetime(&yesterday.and_hms_opt(12, 0, 0).unwrap()).unwrap().timestamp_millis();
    // Our books say it was paid (an operator's word, through the one guarded transition).
    let mut tx = app.state.db.begin().await.unwrap();
    let (order_no, evidence) = (trade_no(&no), Evidence::new(EventSource::Ops, "test: paid yesterday"));
    let txid = wxpay_recon::domain::TransactionId::parse("T1").unwrap();
    let request = TransitionRequest {
        out_trade_no: &order_no,
        to: OrderStatus::Success,
        evidence: &evidence,
        transaction_id: Some(&txid),
        paid_at_ms: Some(paid_at),
        note: None,
        now_ms: env.clock.now_ms(),
    };
    let outcome = app.state.db.transition(&mut tx, &request).await.unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(outcome, TransitionOutcome::Applied { .. }), "{outcome:?}");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpay-recon"))
        .args(["reconcile", "--date", &yesterday.to_string()])
        .envs(env.env_vars())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("missing_at_wechat") && stdout.contains(&no), "{stdout}");
    assert!(env.path("reports").join(format!("{yesterday}.csv")).exists());

    // bill parse: a bill the simulator wrote is fine; a truncated one names its line.
    let mut good = Vec::new();
    let mut writer = wxpay_recon::bill::BillWriter::new(&mut good).unwrap();
    let row = sample_row();
    writer.write_row(&row).unwrap();
    writer.finish().unwrap();
    let good_path = env.path("good.bill");
    std::fs::write(&good_path, &good).unwrap();
    let parsed = run_bill_parse(&env, &good_path).await;
    assert!(parsed.0 && parsed.1.contains("1 rows"), "{parsed:?}");
    let cut = env.path("cut.bill");
    std::fs::write(&cut, &good[..good.len() - 20]).unwrap();
    let parsed = run_bill_parse(&env, &cut).await;
    assert!(!parsed.0 && parsed.1.contains("line"), "{parsed:?}");
}

/// `bill parse` on a file whose summary (108.00) is not the sum of its rows (107.00): the
/// totals are printed in yuan, the value that differs is named, and the exit code is 1.
async fn bill_parse_fails_on_a_summary_that_disagrees_with_its_rows(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let mut writer = wxpay_recon::bill::BillWriter::new(Vec::new()).unwrap();
    for fen in [10_000, 700] {
        writer
            .write_row(&wxpay_recon::bill::BillRow { settlement_total_fen: fen, order_total_fen: fen, ..sample_row() })
            .unwrap();
    }
    let added_up = *writer.summary();
    assert_eq!(added_up.settlement_total_fen, 10_700);
    let stated = wxpay_recon::bill::BillSummary { settlement_total_fen: 10_800, ..added_up };
    let path = env.path("disagrees.bill");
    std::fs::write(&path, writer.finish_with(&stated).unwrap()).unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpay-recon"))
        .args(["bill", "parse"])
        .arg(&path)
        .envs(env.env_vars())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 rows"), "{stdout}");
    let settlement = stdout.lines().find(|l| l.starts_with("settlement total")).unwrap_or_default();
    assert!(settlement.contains("108.00") && settlement.contains("107.00"), "{stdout}");
    assert!(settlement.contains("disagrees"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("fees") && l.contains("0.06000")), "{stdout}");
    assert!(!stdout.contains("BillSummary") && !stdout.contains("_fen"), "no Debug output: {stdout}");
    assert!(stderr.contains("settlement total (paid): stated 108.00, rows add up to 107.00"), "{stderr}");
}

/// Days that cannot have a bill are the operator's mistake: exit 2 with the reason, refused
/// before WeChat is asked and without a run recorded. A range is refused whole, never cut.
async fn the_cli_refuses_days_that_cannot_have_a_bill(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let today = wechat_date(env.clock.now());
    let day = |back: u64| today.checked_sub_days(Days::new(back)).unwrap().to_string();
    let tomorrow = today.checked_add_days(Days::new(1)).unwrap().to_string();
    let (today, old, month_ago, long_ago, yesterday, before) = (day(0), day(200), day(30), day(400), day(1), day(2));
    let cases: [(Vec<&str>, &str); 7] = [
        (vec!["--date", &today], "no bill yet"),
        (vec!["--date", &tomorrow], "no bill yet"),
        (vec!["--date", &old], "older than WeChat keeps bills"),
        (vec!["--from", &month_ago, "--to", &today], "no bill yet"),
        (vec!["--from", &long_ago, "--to", &yesterday], "at most 92"),
        (vec!["--from", &yesterday, "--to", &before], "starts after it ends"),
        (vec![], "required"),
    ];
    for (args, reason) in cases {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpay-recon"))
            .arg("reconcile")
            .args(&args)
            .envs(env.env_vars())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    let calls: Vec<Value> =
        reqwest::get(format!("{}/sim/calls", env.sim.base_url())).await.unwrap().json().await.unwrap();
    assert!(calls.is_empty(), "WeChat was asked: {calls:?}");
    let db = wxpay_recon::storage::Db::connect(&env.settings().database).await.unwrap();
    db.migrate().await.unwrap();
    for date in [today, tomorrow, old, month_ago, yesterday] {
        assert_eq!(db.bill_run(&date).await.unwrap(), None, "{date}: no run recorded");
    }
}

fn sample_row() -> wxpay_recon::bill::BillRow {
    wxpay_recon::bill::BillRow {
        trade_time: "2026-11-24 12:00:00".into(),
        appid: "wx1".into(),
        mchid: "190000".into(),
        sub_mchid: "0".into(),
        device_info: String::new(),
        transaction_id: "4200000000202611240000000001".into(),
        out_trade_no: "NO1".into(),
        openid: "o1".into(),
        trade_type: "JSAPI".into(),
        trade_state: "SUCCESS".into(),
        bank_type: "OTHERS".into(),
        currency: "CNY".into(),
        settlement_total_fen: 500,
        coupon_fen: 0,
        refund_id: "0".into(),
        out_refund_no: "0".into(),
        refund_fen: 0,
        recharge_coupon_refund_fen: 0,
        refund_type: String::new(),
        refund_status: String::new(),
        product_name: "贴纸".into(),
        attach: String::new(),
        fee_e5: 3000,
        rate: "0.60%".into(),
        order_total_fen: 500,
        refund_request_fen: 0,
        rate_note: String::new(),
    }
}

async fn run_bill_parse(env: &TestEnv, path: &std::path::Path) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpay-recon"))
        .args(["bill", "parse"])
        .arg(path)
        .envs(env.env_vars())
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// (endpoint, status, token) of the simulator's bill calls, in arrival order.
async fn bill_calls(env: &TestEnv) -> Vec<(String, u64, String)> {
    let calls: Vec<Value> =
        reqwest::get(format!("{}/sim/calls", env.sim.base_url())).await.unwrap().json().await.unwrap();
    calls
        .iter()
        .filter(|c| c["endpoint"] == "tradebill" || c["endpoint"] == "billdownload")
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (text("endpoint"), c["status"].as_u64().unwrap_or(0), text("token"))
        })
        .collect()
}

/// A download URL lives minutes: when the download fails, the bill is applied for again and the
/// new URL is used (the simulator's log shows the second tradebill call and its token used).
async fn a_failed_bill_download_is_retried_with_a_fresh_url(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, no_polling).await;
    let (client, _) = env.client(&app).await;
    let day = away_from_midnight(&env);
    let numbers = create_orders(&client, 2).await;
    pay_all(&env, &numbers).await;
    wait_for_payments(&env, &app, 2).await;
    advance_to_next_morning(&env, day, 10, 0);
    set_chaos(&env, json!({ "bill": { "fail_first_download": true } })).await;

    let run = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    assert_eq!((run.status.as_str(), run.bill_rows, run.orders_compared), ("clean", 2, 2), "{run:?}");
    let calls = bill_calls(&env).await;
    let shape: Vec<(&str, u64)> = calls.iter().map(|(e, s, _)| (e.as_str(), *s)).collect();
    assert_eq!(shape, vec![("tradebill", 200), ("billdownload", 502), ("tradebill", 200), ("billdownload", 200)]);
    let (first, second) = (&calls[0].2, &calls[2].2);
    assert!(!first.is_empty() && first != second, "a fresh token: {calls:?}");
    assert_eq!(&calls[1].2, first, "the failed download used the first token");
    assert_eq!(&calls[3].2, second, "the retry used the second token");
    assert!(work_dir_is_empty(&env));
}

/// WeChat prints a refund on the day it accepted it. Here our request leaves at 23:58 Shanghai
/// and fails (a SYSTEM_ERROR), and the poller applies again after midnight: WeChat's day for the
/// refund is the next one, and both days reconcile clean only if the refund is counted there.
async fn a_refund_accepted_after_midnight_is_in_wechat_s_day(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env
        .spawn_app_with(ALL_ROLES, |s| {
            s.orders.poll_grace_secs = 60;
            s.poll.sweep_interval_ms = 100;
        })
        .await;
    let (client, _) = env.client(&app).await;
    // 23:58:00 Shanghai, today or tomorrow.
    let today = wechat_date(env.clock.now());
    let mut target =
        Shanghai.from_local_datetime(&today.and_hms_opt(23, 58, 0).unwrap()).unwrap().with_timezone(&chrono::Utc);
    if target <= env.clock.now() {
        target += chrono::Duration::days(1);
    }
    env.clock.advance((target - env.clock.now()).to_std().unwrap());
    let day = wechat_date(env.clock.now());
    let no = paid_coffee(&client).await;

    set_chaos(&env, json!({ "fault_rate": 1.0, "fault_modes": ["system_error"], "fault_endpoints": ["refund"] })).await;
    let (status, body) = admin_post(
        &app.base,
        &format!("/api/orders/{no}/refund"),
        Some(ADMIN_TOKEN),
        json!({"amount_fen": 1200, "out_refund_no": "LATE-REFUND-1"}),
    )
    .await;
    assert_eq!(status, 202, "WeChat failed: the poller follows up: {body}");
    set_chaos(&env, json!({})).await;
    env.clock.advance(Duration::from_secs(3 * 60)); // 00:01 the next day: the refund is due
    let next_day = day.checked_add_days(Days::new(1)).unwrap();
    assert_eq!(wechat_date(env.clock.now()), next_day);
    eventually("the poller applies again and the refund succeeds", Duration::from_secs(30), || async {
        let order = app.state.db.order_by_no(&trade_no(&no)).await.unwrap().unwrap();
        order.refunded.0 == 1200
    })
    .await;
    let refund = app
        .state
        .db
        .refund_by_no(&wxpay_recon::domain::OutRefundNo::parse("LATE-REFUND-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    let from_ms = wxpay_recon::domain::time::from_ms;
    assert_eq!(wechat_date(from_ms(refund.requested_at_ms)), day, "we asked before midnight");
    let accepted = refund.wechat_created_at_ms.expect("WeChat's create_time is kept");
    assert_eq!(wechat_date(from_ms(accepted)), next_day, "WeChat accepted after midnight");
    assert_eq!(refund.settled.map(|f| f.0), Some(1200));

    advance_to_next_morning(&env, next_day, 10, 0);
    let first = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    assert_eq!((first.status.as_str(), first.bill_rows), ("clean", 1), "the payment only: {first:?}");
    let second = app.state.reconciler.run(next_day, Arc::new(Quiet)).await.unwrap();
    let found = app.state.db.discrepancies_of(&next_day.to_string()).await.unwrap();
    assert_eq!((second.status.as_str(), second.bill_rows), ("clean", 1), "the refund row: {second:?} {found:?}");
}

/// A trade-less day WeChat keeps "creating": retried while it may still come, then, past noon
/// of the next day and with nothing in our books, recorded as assumed empty (not clean, not
/// no_bill), with the reason, a warning outcome in the metrics and the report.
async fn a_trade_less_day_stuck_creating_is_assumed_empty_after_noon(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, no_polling).await;
    let day = away_from_midnight(&env);
    set_chaos(&env, json!({ "bill": { "empty_day_creating": true } })).await;

    advance_to_next_morning(&env, day, 11, 0);
    let early = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    assert_eq!(early.status.as_str(), "not_ready", "before noon the bill may still come: {early:?}");
    assert!(early.next_attempt_at_ms.is_some());

    env.clock.advance(Duration::from_secs(60 * 60)); // 12:00
    let run = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    assert_eq!(run.status.as_str(), "assumed_empty", "{run:?}");
    assert!(run.status.is_finished(), "{run:?}");
    let recheck = run.next_attempt_at_ms.expect("an assumption is checked again later");
    assert!(run.error.as_deref().is_some_and(|e| e.contains("STATEMENT_CREATING")), "{run:?}");
    assert_eq!(app.metrics.reconcile_runs.with_label_values(&["assumed_empty"]).get(), 1);
    let json: Value =
        serde_json::from_slice(&std::fs::read(env.path("reports").join(format!("{day}.json"))).unwrap()).unwrap();
    assert_eq!(json["run"]["status"], "assumed_empty");
    let tradebills = bill_calls(&env).await.iter().filter(|(e, s, _)| e == "tradebill" && *s == 400).count();
    assert_eq!(tradebills, 2, "WeChat was asked each time");
    // Not a success to measure from: ReconcileMissing still sees no compared day.
    assert_eq!(app.state.db.reconcile_health("2000-01-01").await.unwrap().0, None);

    // WeChat answers later (here: no bill for a trade-less day): the answer replaces the assumption.
    set_chaos(&env, json!({})).await;
    env.clock.advance(Duration::from_millis(u64::try_from(recheck - env.clock.now_ms()).unwrap_or(0) + 1));
    let later = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    assert_eq!(later.status.as_str(), "no_bill", "{later:?}");
}

/// An unpaid order of the day may be a payment we missed: that day is never assumed empty.
async fn a_day_with_an_unpaid_order_is_not_assumed_empty(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, no_polling).await;
    let day = away_from_midnight(&env);
    let (client, _) = env.client(&app).await;
    create_orders(&client, 1).await;
    set_chaos(&env, json!({ "bill": { "empty_day_creating": true } })).await;
    advance_to_next_morning(&env, day, 13, 0);
    let run = app.state.reconciler.run(day, Arc::new(Quiet)).await.unwrap();
    assert_eq!(run.status.as_str(), "not_ready", "{run:?}");
    assert!(run.next_attempt_at_ms.is_some());
}

crate::both_profiles!(
    a_failed_bill_download_is_retried_with_a_fresh_url,
    a_refund_accepted_after_midnight_is_in_wechat_s_day,
    a_trade_less_day_stuck_creating_is_assumed_empty_after_noon,
    a_day_with_an_unpaid_order_is_not_assumed_empty,
    a_day_reconciles_and_every_injected_class_is_found_once,
    a_bill_that_fails_verification_applies_nothing,
    payments_around_shanghai_midnight_land_on_their_own_day,
    the_scheduler_waits_for_the_bill_and_catches_up,
    the_cli_reports_and_exits_non_zero_on_unexplained,
    bill_parse_fails_on_a_summary_that_disagrees_with_its_rows,
    the_cli_refuses_days_that_cannot_have_a_bill,
);
