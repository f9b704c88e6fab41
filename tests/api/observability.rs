//! The SRE material in `dashboards/` against the service as it really is: every `wxpay_*`
//! metric the Grafana dashboard or the alert rules reference must be in the `/metrics`
//! exposition, every dashboard panel must query through the `${datasource}` variable, and every
//! alert's runbook link must lead to a section of the runbook.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

pub const DASHBOARD: &str = include_str!("../../dashboards/wxpay-recon.json");
const ALERTS: &str = include_str!("../../dashboards/alerts.yml");
const RUNBOOK: &str = include_str!("../../dashboards/RUNBOOK.md");

/// Suffixes Prometheus derives from one histogram (or summary) family.
const DERIVED_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// Every panel of the dashboard, rows and panels nested in collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(items: &'a [Value], out: &mut Vec<&'a Value>) {
        for panel in items {
            out.push(panel);
            if let Some(nested) = panel["panels"].as_array() {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("dashboard has panels"), &mut out);
    out
}

/// (where, PromQL) for every target of every dashboard panel.
pub fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("panel {:?}", panel["title"].as_str().unwrap_or("?")), expr.to_owned()));
            }
        }
    }
    out
}

/// (alert name, PromQL) for every rule of the alerts file: `expr:` inline or as a `|`/`>` block.
fn alert_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::from("?");
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            name.trim().clone_into(&mut alert);
        } else if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = Vec::new();
                while let Some(next) = lines.get(i + 1) {
                    let content = next.trim_start();
                    if !content.is_empty() && next.len() - content.len() <= indent {
                        break;
                    }
                    block.push(content);
                    i += 1;
                }
                out.push((format!("alert {alert}"), block.join("\n")));
            } else {
                out.push((format!("alert {alert}"), rest.trim_matches(['"', '\'']).to_owned()));
            }
        }
        i += 1;
    }
    out
}

/// The `wxpay_*` metric names an expression mentions (label values such as `wxpay-recon` are
/// not names).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (start, _) in expr.match_indices("wxpay_") {
        if expr[..start].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let name: String =
            expr[start..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        names.insert(name);
    }
    names
}

/// Every referenced metric name with the places that reference it.
fn referenced_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let alerts = alert_exprs(ALERTS);
    assert_eq!(
        alerts.len(),
        ALERTS.lines().filter(|l| l.trim_start().starts_with("- alert:")).count(),
        "one expr per alert in dashboards/alerts.yml: {alerts:?}"
    );
    let mut referenced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (place, expr) in dashboard_exprs(&dashboard).into_iter().chain(alerts) {
        for name in metric_names(&expr) {
            referenced.entry(name).or_default().insert(place.clone());
        }
    }
    referenced
}

/// `# TYPE name kind` of every family in a text exposition.
fn exported_families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Referenced names the exposition does not have. `x_bucket`, `x_sum` and `x_count` count as
/// present when `x` is exported as a histogram (or summary).
fn missing_metrics(referenced: &BTreeMap<String, BTreeSet<String>>, exposition: &str) -> Vec<String> {
    let families = exported_families(exposition);
    let mut missing = Vec::new();
    for (name, places) in referenced {
        if families.contains_key(name) {
            continue;
        }
        let base = DERIVED_SUFFIXES.iter().find_map(|suffix| name.strip_suffix(suffix));
        let via_histogram =
            base.and_then(|b| families.get(b)).is_some_and(|kind| kind == "histogram" || kind == "summary");
        if via_histogram {
            continue;
        }
        let shown = match base {
            Some(b) => format!("{name} (histogram {b} not exported)"),
            None => name.clone(),
        };
        let places: Vec<&str> = places.iter().map(String::as_str).collect();
        missing.push(format!("{shown}  <- {}", places.join(", ")));
    }
    missing
}

/// A user logs in, pays one order and leaves another unpaid: (their openid, the paid order).
pub async fn a_paid_and_an_unpaid_order(env: &TestEnv, app: &TestApp) -> (String, String) {
    let (client, openid) = env.client(app).await;
    let paid = client.create_order("coffee", 1).await.unwrap();
    client.pay(&paid.out_trade_no).await.unwrap();
    client.wait_for_status(&paid.out_trade_no, "SUCCESS", Duration::from_secs(20)).await.unwrap();
    let unpaid = client.create_order("mug", 1).await.unwrap();
    assert_eq!(client.order(&unpaid.out_trade_no).await.unwrap()["status"], "NOTPAY");
    (openid, paid.out_trade_no)
}

async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("{base}/metrics")).await.expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.expect("metrics body")
}

/// Labelled series Prometheus must see at 0 before anything happens, so that `increase()` sees
/// the first failure (a series born at its first non-zero value reads as no increase).
const ZERO_AT_START: &[&str] = &[
    r#"wxpay_notify_rejected_total{reason="bad_signature"} 0"#,
    r#"wxpay_notify_rejected_total{reason="unknown_serial"} 0"#,
    r#"wxpay_notify_rejected_total{reason="decrypt_failed"} 0"#,
    r#"wxpay_notify_accepted_total{kind="duplicate"} 0"#,
    r#"wxpay_anomalies_total{kind="amount_mismatch"} 0"#,
    r#"wxpay_inbox_applied_total{outcome="anomaly"} 0"#,
    r#"wxpay_wechat_calls_total{endpoint="query_order",outcome="server_error"} 0"#,
    r#"wxpay_wechat_calls_total{endpoint="code2session",outcome="timeout"} 0"#,
    r#"wxpay_logins_total{outcome="unavailable"} 0"#,
    r#"wxpay_order_transitions_total{source="bill",to="SUCCESS"} 0"#,
    r#"wxpay_reconcile_runs_total{outcome="failed"} 0"#,
    r#"wxpay_jobs_dead{kind="check_refund"} 0"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_and_known_series_is_exported_before_anything_happens() {
    let env = TestEnv::new(Backend::Embedded).await;
    let app = env.spawn_app(ALL_ROLES).await;
    // The first scrape is itself the first request; the second one also shows its HTTP series.
    scrape(&app.ops).await;
    let exposition = scrape(&app.ops).await;
    let families = exported_families(&exposition);
    let missing: Vec<&String> =
        app.metrics.family_names().iter().filter(|name| !families.contains_key(*name)).collect();
    assert!(missing.is_empty(), "registered but not in the first scrape: {missing:?}\n{exposition}");
    for series in ZERO_AT_START {
        assert!(exposition.lines().any(|line| line == *series), "{series} not exported at start:\n{exposition}");
    }
    for family in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds"] {
        assert!(families.contains_key(family), "{family} missing");
    }

    // A made-up method is answered and counted, without a series of its own.
    let odd = reqwest::Client::new()
        .request(reqwest::Method::from_bytes(b"M123").unwrap(), format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status().as_u16(), 405);
    let exposition = scrape(&app.ops).await;
    assert!(!exposition.contains("M123"), "a made-up method became a label value");
    assert!(exposition.contains(r#"method="other""#), "the made-up method is counted as other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_dashboards_and_alerts_is_exported() {
    let referenced = referenced_metrics();
    assert!(referenced.len() >= 20, "too few metric names found, is the extraction broken? {referenced:?}");

    let env = TestEnv::new(Backend::Embedded).await;
    // A short poll grace, so the unpaid order below is due for a check at WeChat during the test.
    let app = env.spawn_app_with(ALL_ROLES, |s| s.orders.poll_grace_secs = 1).await;

    // Labelled families appear in the exposition only once a label set is used, so exercise
    // what an SRE would see on a live shop: a login, a paid order, an unpaid one, a refused and
    // a contradicting notification, and a job in the dead-letter table.
    let (openid, _paid) = a_paid_and_an_unpaid_order(&env, &app).await;

    let (status, _) = app.post_notify(&[], "{}").await;
    assert!((400..500).contains(&status), "unsigned notification refused, got {status}");

    let unknown = env.transaction_json("NOSUCHORDER000000000000001", 100, &openid, "4200000000202611240000000099");
    let (headers, body) = env.notification("n-observability-unknown-order", &unknown);
    assert_eq!(app.post_notify(&headers, body).await.0, 204, "a valid notification for an unknown order is stored");

    // What the worker writes when a job exhausts its attempts (`worker::jobs::bury`), so the
    // dead-jobs panels show a non-zero kind (the gauge itself is exported at 0 for every kind).
    bury_a_job(&env, &app).await;

    // Background work (apply, sweeper, poller) lands asynchronously: scrape until everything
    // is there or the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (missing, exposition) = loop {
        let exposition = scrape(&app.ops).await;
        let missing = missing_metrics(&referenced, &exposition);
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, exposition);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let exported: Vec<String> = exported_families(&exposition).into_keys().collect();
    assert!(
        missing.is_empty(),
        "{} metric(s) referenced by dashboards/wxpay-recon.json or dashboards/alerts.yml are not in /metrics \
         (after a login, a paid and an unpaid order, a refused and an unknown-order notification, and a dead job):\n  {}\n\
         exported families: {exported:?}",
        missing.len(),
        missing.join("\n  "),
    );
}

#[test]
fn dashboard_panels_use_the_datasource_variable_and_have_targets() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_i64().is_some_and(|v| v >= 36), "schemaVersion");
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty()), "a stable uid");

    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let datasource = variables.iter().find(|v| v["name"] == "datasource").expect("a `datasource` variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");

    let references_variable = |ds: &Value| {
        let uid = ds.as_str().or_else(|| ds["uid"].as_str()).unwrap_or("");
        (uid == "${datasource}" || uid == "$datasource") && (ds.is_string() || ds["type"] == "prometheus")
    };
    let mut problems = Vec::new();
    let mut checked = 0;
    for panel in panels(&dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        checked += 1;
        let title = panel["title"].as_str().unwrap_or("?");
        if !references_variable(&panel["datasource"]) {
            problems.push(format!("panel {title:?}: datasource {} is not ${{datasource}}", panel["datasource"]));
        }
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no targets"));
        }
        for target in targets {
            let refid = target["refId"].as_str().unwrap_or("?");
            if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("panel {title:?} target {refid}: no expr"));
            }
            if !target["datasource"].is_null() && !references_variable(&target["datasource"]) {
                problems.push(format!("panel {title:?} target {refid}: datasource {}", target["datasource"]));
            }
        }
    }
    assert!(checked >= 10, "only {checked} panels");
    assert!(problems.is_empty(), "dashboard problems:\n  {}", problems.join("\n  "));
}

#[test]
fn every_alert_links_to_its_runbook_section() {
    let anchors: BTreeSet<String> = RUNBOOK
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|heading| {
            heading
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let alerts: Vec<&str> =
        ALERTS.lines().filter_map(|l| l.trim_start().strip_prefix("- alert:")).map(str::trim).collect();
    let links: Vec<&str> = ALERTS
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("runbook_url:"))
        .map(|url| url.trim().trim_matches('"'))
        .collect();
    assert_eq!(alerts.len(), links.len(), "one runbook_url per alert");
    for (alert, link) in alerts.iter().zip(&links) {
        let anchor = link.strip_prefix("dashboards/RUNBOOK.md#").unwrap_or_else(|| panic!("{alert}: {link}"));
        assert_eq!(anchor, alert.to_lowercase(), "{alert} links to its own section");
        assert!(
            anchors.contains(anchor),
            "{alert}: no `## ` heading in dashboards/RUNBOOK.md for #{anchor}: {anchors:?}"
        );
    }
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        r#"sum(rate(wxpay_a_total{job=~"wxpay-recon.*"}[5m])) / on() x:wxpay_not_a_name + wxpay_b_bucket"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["wxpay_a_total", "wxpay_b_bucket"]);
    let exprs = alert_exprs(
        "      - alert: A\n        expr: |\n          up\n          == 0\n        for: 1m\n      - alert: B\n        expr: wxpay_x > 1\n",
    );
    assert_eq!(
        exprs,
        [("alert A".to_owned(), "up\n== 0".to_owned()), ("alert B".to_owned(), "wxpay_x > 1".to_owned())]
    );
    let exposition = "# TYPE wxpay_h histogram\nwxpay_h_bucket{le=\"1\"} 0\n";
    let referenced = BTreeMap::from([
        ("wxpay_h_bucket".to_owned(), BTreeSet::from(["p".to_owned()])),
        ("wxpay_g".to_owned(), BTreeSet::from(["q".to_owned()])),
    ]);
    assert_eq!(missing_metrics(&referenced, exposition), ["wxpay_g  <- q"]);
}
