//! The dashboards and alert rules against a real Prometheus (the Debian package `prometheus`,
//! which `scripts/check-dashboards.sh` installs with promtool) scraping a running instance:
//! after real traffic with failures in it, every dashboard query returns data and the alerts
//! those failures should raise go pending (or fire). Loopback only; bounded in time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::observability::{DASHBOARD, a_paid_and_an_unpaid_order, dashboard_exprs};

/// Alerts the traffic below must raise, with what raises them.
const EXPECTED_ALERTS: &[(&str, &str)] = &[
    ("NotifyVerificationFailuresSpike", "six notifications with an unknown serial in one burst"),
    ("Anomalies", "a valid notification for an order we do not have"),
    ("DeadJobs", "a job in the dead-letter table"),
    ("ProcessDown", "a second scrape target that does not answer"),
];

/// Long enough for Prometheus to start, scrape and evaluate on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(90);

fn prometheus_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("prometheus")).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates.into_iter().chain([PathBuf::from("/usr/bin/prometheus")]).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "the prometheus server is not installed: `apt-get install prometheus` (scripts/test.sh installs it \
             through scripts/check-dashboards.sh before the tests run)"
        )
    })
}

/// A Prometheus server in a temporary directory, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Prometheus {
    async fn start(dir: &Path, targets: &[String]) -> Self {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/alerts.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: wxpay-recon\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self { child, base: format!("http://127.0.0.1:{port}") };
        let ready = format!("{}/-/ready", prometheus.base);
        eventually("prometheus ready", DEADLINE, || async {
            reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        prometheus
    }

    /// The result vector of an instant query (panics on a query Prometheus refuses).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .expect("query prometheus");
        let body: Value = response.json().await.expect("prometheus answers JSON");
        assert_eq!(body["status"], "success", "{expr}: {body}");
        match &body["data"]["result"] {
            Value::Array(items) => items.clone(),
            // A scalar result is `[time, "value"]`, an array too; anything else is one value.
            other => vec![other.clone()],
        }
    }

    /// (alertname, state) of every active alert.
    async fn alerts(&self) -> Vec<(String, String)> {
        let body: Value = reqwest::get(format!("{}/api/v1/alerts", self.base)).await.unwrap().json().await.unwrap();
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

/// A dashboard expression with Grafana's variables made concrete, as Grafana would send it.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("${__rate_interval}", "30s")
        .replace("$__interval", "15s")
        .replace("$job", ".*")
        .replace("${job}", ".*")
        .replace("$instance", ".*")
        .replace("${instance}", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_every_dashboard_query_and_the_first_failures_alert() {
    let env = TestEnv::new(Backend::Embedded).await;
    let app = env.spawn_app_with(ALL_ROLES, |s| s.orders.poll_grace_secs = 1).await;
    let target = app.ops.trim_start_matches("http://").to_owned();
    // A target nobody answers on: the "Targets down" panel and ProcessDown have something to see.
    let down = format!("127.0.0.1:{}", free_port());
    let prometheus = Prometheus::start(env.dir.path(), &[target.clone(), down]).await;

    // The failures come after Prometheus has scraped the instance, as on a live shop: only a
    // series already exported at 0 lets `increase()` see the first burst.
    let up = format!(r#"up{{instance="{target}"}} == 1"#);
    eventually("prometheus scraped the instance", DEADLINE, || async { prometheus.query(&up).await.len() == 1 }).await;

    let (openid, paid) = a_paid_and_an_unpaid_order(&env, &app).await;

    // Six forged notifications in one burst (a rotated platform key we do not know).
    let resource = env.transaction_json(&paid, 100, &openid, "4200000000202612020000000001");
    let (headers, body) = env.notification("n-prometheus-forged", &resource);
    let forged: Vec<(&str, String)> = headers
        .into_iter()
        .map(
            |(name, value)| {
                if name == "Wechatpay-Serial" { (name, "FFFF0000UNKNOWN".to_owned()) } else { (name, value) }
            },
        )
        .collect();
    for _ in 0..6 {
        let (status, _) = app.post_notify(&forged, body.clone()).await;
        assert_eq!(status, 401, "a notification under an unknown serial is refused");
    }

    // A valid notification for an order we never created: an anomaly.
    let unknown = env.transaction_json("NOSUCHORDER000000000000002", 100, &openid, "4200000000202612020000000002");
    let (headers, body) = env.notification("n-prometheus-unknown-order", &unknown);
    assert_eq!(app.post_notify(&headers, body).await.0, 204);

    // A job that exhausted its attempts.
    bury_a_job(&env, &app).await;

    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 40, "too few dashboard expressions: {}", exprs.len());
    let started = Instant::now();
    loop {
        let mut empty = Vec::new();
        for (place, expr) in &exprs {
            if prometheus.query(&concrete(expr)).await.is_empty() {
                empty.push(format!("{place}: {expr}"));
            }
        }
        let alerts = prometheus.alerts().await;
        let not_raised: Vec<&(&str, &str)> = EXPECTED_ALERTS
            .iter()
            .filter(|(name, _)| !alerts.iter().any(|(n, state)| n == name && (state == "pending" || state == "firing")))
            .collect();
        if empty.is_empty() && not_raised.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "after {DEADLINE:?}: {} dashboard quer(ies) without data:\n  {}\nalerts not pending or firing: {not_raised:?} \
             (active: {alerts:?})",
            empty.len(),
            empty.join("\n  ")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
