//! What the real binary writes while it works: JSON lines on stderr carrying the `http` and
//! `job` spans with their identifiers, and never a secret. The whole loop (login, order, pay,
//! notification applied) runs with our crate at `debug`, then every line the process wrote is
//! searched for every secret it held.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use wxpay_recon::config::Secret;
use wxpay_recon::demo::MiniProgram;
use wxpay_recon::storage::Db;
use wxpay_recon::vault::Vault;

use crate::helpers::*;

const MARKER_ADMIN_TOKEN: &str = "admin-token-MARKER-3f9c1e7a5b2d4086";
/// 32 bytes, so it is a valid data key once base64-encoded.
const DATA_KEY_RAW: &[u8; 32] = b"data-key-MARKER-0123456789abcdef";

/// The names of the spans an event was recorded in, outermost first, with their fields.
fn spans(line: &Value) -> Vec<&Value> {
    line["spans"].as_array().map(|s| s.iter().collect()).unwrap_or_default()
}

fn find_span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    spans(line).into_iter().find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_json_lines_with_span_ids_and_no_secret() {
    let env = TestEnv::new(Backend::Embedded).await;
    let data_key = B64.encode(DATA_KEY_RAW);
    let overrides = [
        ("SERVER__ADMIN_TOKEN", MARKER_ADMIN_TOKEN.to_owned()),
        ("AUTH__DATA_KEY", data_key.clone()),
        ("LOG__FILTER", "info,wxpay_recon=debug".to_owned()),
        ("LOG__FORMAT", "json".to_owned()),
    ];
    let (mut process, output) = env.spawn_process_logged(&["serve", "--dev-keys"], &overrides).await;

    let mut client = MiniProgram::new(&process.base, &env.sim.base_url());
    let login = client.login(None).await.unwrap();
    let bearer = login["token"].as_str().unwrap().to_owned();
    let user_id = login["user"]["id"].as_i64().unwrap();
    let order = client.create_order("coffee", 1).await.unwrap();
    client.pay(&order.out_trade_no).await.unwrap();
    client.wait_for_status(&order.out_trade_no, "SUCCESS", Duration::from_secs(30)).await.unwrap();
    // The admin token travels in a request too (it must not be logged from the headers).
    let admin = reqwest::Client::new()
        .get(format!("{}/admin/jobs", process.base))
        .bearer_auth(MARKER_ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status().as_u16(), 200);

    // The session_key never leaves the server, so the test reads it where the service keeps
    // it: sealed in `users.session_key_enc`, opened with the data key we gave the process.
    let db = Db::connect(&env.settings().database).await.unwrap();
    let sealed = db.user_session_key(user_id).await.unwrap();
    let session_key = Vault::from_base64(&Secret::new(data_key.clone())).unwrap().open(&sealed).unwrap();
    let (inbox_id,): (i64,) = sqlx::query_as("SELECT id FROM notifications WHERE out_trade_no = $1")
        .bind(&order.out_trade_no)
        .fetch_one(db.reader())
        .await
        .unwrap();

    // A refused request carrying the caller's request id gets it back, and one forged
    // notification is refused (its log line must say who sent it).
    let refused = reqwest::Client::new()
        .get(format!("{}/api/orders/NOSUCHORDER0000000000000001", process.base))
        .bearer_auth(&bearer)
        .header("X-Request-Id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 404);
    assert_eq!(refused.headers()["x-request-id"], "trace-me-123", "the request id is echoed");
    let (status, _) = post_notify(&process.base, &[], "{}").await;
    assert_eq!(status, 401);

    // The last job's line is out (the order's status commits before the worker logs it), then
    // stop the process and read its output to the end.
    eventually("the worker logged the applied notification", Duration::from_secs(30), || async {
        output.lines().iter().any(|(stream, line)| {
            *stream == Stream::Stderr && line.contains("notification applied") && line.contains(&order.out_trade_no)
        })
    })
    .await;
    process.sigkill();
    process.wait_output().await;
    let lines = output.lines();

    // --- no secret, anywhere ---------------------------------------------------------------
    let keys_dir = env.path("dev-keys");
    let read = |name: &str| std::fs::read_to_string(keys_dir.join(name)).unwrap().trim().to_owned();
    let mut secrets: Vec<(String, String)> = vec![
        ("APIv3 key".into(), read("apiv3_key")),
        ("app secret".into(), read("app_secret")),
        ("dev data key".into(), read("data_key")),
        ("configured data key (base64)".into(), data_key.clone()),
        ("configured data key (raw)".into(), String::from_utf8(DATA_KEY_RAW.to_vec()).unwrap()),
        ("admin token".into(), MARKER_ADMIN_TOKEN.to_owned()),
        ("bearer token".into(), bearer.clone()),
        ("session_key".into(), session_key.expose().clone()),
    ];
    for pem in ["merchant_key.pem", "platform_key.pem"] {
        for (i, body_line) in read(pem).lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).enumerate() {
            secrets.push((format!("{pem} line {i}"), body_line.to_owned()));
        }
    }
    assert!(secrets.len() > 10, "PEM bodies were read: {}", secrets.len());
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is long enough to be searched for");
        let leaks: Vec<&String> = lines.iter().map(|(_, l)| l).filter(|l| l.contains(secret.as_str())).collect();
        assert!(leaks.is_empty(), "the {what} appears in the output:\n{leaks:#?}");
    }

    // --- JSON lines on stderr, stdout only for the listening line ----------------------------
    let stdout: Vec<&String> = lines.iter().filter(|(s, _)| *s == Stream::Stdout).map(|(_, l)| l).collect();
    assert!(stdout.iter().any(|l| l.starts_with("wxpay-recon listening on ")), "{stdout:?}");
    let events: Vec<Value> = lines
        .iter()
        .filter(|(s, l)| *s == Stream::Stderr && !l.trim().is_empty())
        .map(|(_, l)| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(events.len() >= 3, "{events:#?}");
    for event in &events {
        assert!(event["timestamp"].is_string() && event["level"].is_string(), "{event}");
        assert!(event["message"].is_string(), "{event}");
    }
    assert!(events.iter().any(|e| e["level"] == "DEBUG"), "the filter reached our crate at debug: {events:#?}");
    for event in &events {
        // Spans are listed once (`spans`), not repeated as `span`; SQL text never appears.
        assert!(event.get("span").is_none(), "the innermost span is repeated: {event}");
        assert!(event.get("db.statement").is_none(), "SQL text logged: {event}");
    }

    // The start-up line says what runs: version, profile, roles, address.
    let started = events
        .iter()
        .find(|e| e["message"] == "wxpay-recon started")
        .unwrap_or_else(|| panic!("no start-up line: {events:#?}"));
    assert_eq!(started["version"], env!("CARGO_PKG_VERSION"), "{started}");
    assert_eq!(started["profile"], "embedded", "{started}");
    assert_eq!((started["api"].as_bool(), started["worker"].as_bool()), (Some(true), Some(true)), "{started}");
    assert_eq!(format!("http://{}", started["listen"].as_str().unwrap_or("")), process.base, "{started}");

    // One line for the refused request, with its request id and a numeric latency.
    let refused_lines: Vec<&Value> = events
        .iter()
        .filter(|e| find_span(e, "http").is_some_and(|s| s["http.request_id"] == "trace-me-123"))
        .collect();
    assert_eq!(refused_lines.len(), 1, "one line for the 404: {refused_lines:#?}");
    let line = refused_lines[0];
    assert_eq!(line["message"], "request refused", "{line}");
    assert_eq!(line["http.status"], 404, "{line}");
    assert!(line["latency_ms"].is_f64(), "latency is a number: {line}");

    // The rejected notification names the client it came from.
    let rejected = events
        .iter()
        .find(|e| e["message"] == "notification rejected")
        .unwrap_or_else(|| panic!("no `notification rejected` line: {events:#?}"));
    let http = find_span(rejected, "http").unwrap_or_else(|| panic!("no http span: {rejected}"));
    assert_eq!(http["client.ip"], "127.0.0.1", "{rejected}");
    assert_eq!(http["http.route"], "/api/pay/notify", "{rejected}");

    // The request that created the order logged inside its `http` span.
    let created = events
        .iter()
        .find(|e| e["message"] == "order created" && e["order.out_trade_no"] == order.out_trade_no.as_str())
        .unwrap_or_else(|| panic!("no `order created` line: {events:#?}"));
    let http = find_span(created, "http").unwrap_or_else(|| panic!("no http span: {created}"));
    assert_eq!(http["http.method"], "POST", "{created}");
    assert_eq!(http["http.route"], "/api/orders", "{created}");

    // The worker applied the notification inside an `apply_batch` span, naming the inbox entry.
    let applied = events
        .iter()
        .find(|e| e["message"] == "notification applied" && e["order.out_trade_no"] == order.out_trade_no.as_str())
        .unwrap_or_else(|| panic!("no `notification applied` line: {events:#?}"));
    let batch = find_span(applied, "apply_batch").unwrap_or_else(|| panic!("no apply_batch span: {applied}"));
    assert!(batch["apply.claimer"].is_number(), "{applied}");
    assert_eq!(applied["notify.inbox_id"], inbox_id, "{applied}");
}
