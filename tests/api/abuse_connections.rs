//! Abuse at the connection level, against the real binary over real sockets: slowloris, slow
//! bodies, idle keep-alive connections filling the cap, made-up HTTP methods and paths, API floods
//! past the in-flight cap, and which listener shows what.
//! Each test prints its wall time (`--nocapture` shows it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wxpay_recon::demo::MiniProgram;

use crate::helpers::*;

/// WeChat gives up on a notification answer after 5 s.
const WECHAT_PATIENCE: Duration = Duration::from_secs(5);

/// The value of one series (`name{labels}`) in a scrape; 0 when absent.
fn series(exposition: &str, name_and_labels: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn scrape(ops: &str) -> String {
    let response = reqwest::get(format!("{ops}/metrics")).await.expect("GET /metrics on the ops listener");
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.expect("metrics body")
}

/// A logged-in user with an unpaid order, and the signed notification WeChat would send for it.
async fn order_and_notification(
    env: &TestEnv,
    base: &str,
    openid: &str,
) -> (String, Vec<(&'static str, String)>, String) {
    let mut client = MiniProgram::new(base, &env.sim.base_url());
    client.login(Some(openid)).await.expect("login");
    let order = client.create_order("coffee", 1).await.expect("order");
    let resource = env.transaction_json(&order.out_trade_no, order.amount_fen, openid, "4200000000202612020000000777");
    let (headers, body) = env.notification(&format!("n-{openid}"), &resource);
    (order.out_trade_no, headers, body)
}

/// Posts the notification and asserts WeChat would have been satisfied: 204 within 5 s.
async fn notify_within_patience(base: &str, headers: &[(&'static str, String)], body: String) -> Duration {
    let started = Instant::now();
    let (status, answer) = tokio::time::timeout(WECHAT_PATIENCE, post_notify(base, headers, body))
        .await
        .expect("the notification was not answered within WeChat's 5 s");
    assert_eq!(status, 204, "{answer}");
    started.elapsed()
}

/// A slowloris client: sends a request line, then one header byte every `every`, never ending
/// the head. Returns when the server closes the connection (or it could not connect).
async fn slow_client(addr: String, every: Duration, closed: Arc<AtomicUsize>) {
    if let Ok(mut stream) = TcpStream::connect(&addr).await
        && stream.write_all(b"POST /api/pay/notify HTTP/1.1\r\nHost: shop\r\nX-Slow: ").await.is_ok()
    {
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(every) => {
                    if stream.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

/// The soft open-file limit of this process (Linux), to know whether 2,000 sockets fit.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Makes sure this process may open `needed` files, raising its soft limit towards the hard one
/// if it must (no privilege needed; the server process started next inherits it). Fails loudly
/// rather than letting a test pass without running.
fn ensure_open_file_limit(needed: u64) {
    if open_file_limit().unwrap_or(0) >= needed {
        return;
    }
    let pid = std::process::id().to_string();
    let raised = std::process::Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={needed}:")]).status();
    let limit = open_file_limit().unwrap_or(0);
    assert!(
        limit >= needed,
        "this test needs {needed} open files and ulimit -n is {limit} (raising it with prlimit: {raised:?}); \
         run `ulimit -n {needed}` (or raise the hard limit) first, as scripts/test.sh does"
    );
}

async fn slowloris_does_not_stop_a_valid_notification(backend: Backend) {
    const SLOW: usize = 2000;
    ensure_open_file_limit((SLOW as u64) + 512);
    let wall = Instant::now();
    let env = TestEnv::new(backend).await;
    // A cap below the attack, so both defences work: eviction of connections without a request
    // head, and the header timeout cutting every slow one.
    let overrides =
        [("SERVER__HEADER_READ_TIMEOUT_MS", "2000".to_owned()), ("SERVER__MAX_CONNECTIONS", "1000".to_owned())];
    let process = env.spawn_process_with(&["serve"], &overrides).await;
    let (no, headers, body) = order_and_notification(&env, &process.base, "o-slowloris-victim").await;

    let addr = process.base.trim_start_matches("http://").to_owned();
    let closed = Arc::new(AtomicUsize::new(0));
    let attack = Instant::now();
    let clients: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slow_client(addr.clone(), Duration::from_millis(300), Arc::clone(&closed))))
        .collect();
    // Let the attack fill the cap before the notification arrives.
    eventually("the slow connections fill the cap", Duration::from_secs(30), || async {
        let open = series(&scrape(&process.ops).await, "wxpay_http_connections_open{listener=\"public\"}");
        open >= 900.0
    })
    .await;
    let answered_in = notify_within_patience(&process.base, &headers, body).await;

    // The header timeout (2 s) cuts every slow connection; give the loaded machine some margin.
    eventually("every slow connection was closed by the server", Duration::from_secs(30), || async {
        closed.load(Ordering::Relaxed) == SLOW
    })
    .await;
    let all_closed_after = attack.elapsed();
    let metrics = scrape(&process.ops).await;
    let timed_out = series(&metrics, "wxpay_http_connections_total{listener=\"public\",outcome=\"header_timeout\"}");
    let evicted = series(&metrics, "wxpay_http_connections_total{listener=\"public\",outcome=\"evicted\"}");
    assert!(timed_out > 0.0, "no header timeout counted:\n{metrics}");
    assert!(evicted > 0.0, "no eviction counted at the cap:\n{metrics}");
    assert_eq!(timed_out + evicted, SLOW as f64, "every slow connection ended by timeout or eviction");
    for client in clients {
        client.await.unwrap();
    }
    // And the notification was applied.
    let client = MiniProgram::new(&process.base, &env.sim.base_url());
    let mut client = client;
    client.login(Some("o-slowloris-victim")).await.expect("login");
    client.wait_for_status(&no, "SUCCESS", Duration::from_secs(30)).await.expect("applied");
    eprintln!(
        "slowloris ({backend:?}): {SLOW} slow connections, notification answered in {answered_in:?}, \
         all cut after {all_closed_after:?} ({timed_out} header timeouts, {evicted} evictions); wall {:?}",
        wall.elapsed()
    );
}

/// `n` [`slow_body_client`]s (a body byte every 300 ms) against the public listener at `base`,
/// returned once every one has sent its head.
async fn start_slow_body_clients(
    base: &str,
    n: usize,
    patience: Duration,
) -> Vec<tokio::task::JoinHandle<(String, Duration)>> {
    let addr = base.trim_start_matches("http://").to_owned();
    let started = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..n)
        .map(|_| tokio::spawn(slow_body_client(addr.clone(), Duration::from_millis(300), Arc::clone(&started))))
        .collect();
    eventually("every slow client sent its head", patience, || async { started.load(Ordering::Relaxed) == n }).await;
    clients
}

/// A client that sends a complete notify head announcing a 1,000-byte body, then one body byte
/// every `every`. Returns the status line of the answer (empty if none) and how long after the
/// head the server closed the connection.
async fn slow_body_client(addr: String, every: Duration, started: Arc<AtomicUsize>) -> (String, Duration) {
    let head = "POST /api/pay/notify HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
    let Ok(mut stream) = TcpStream::connect(&addr).await else { return (String::new(), Duration::ZERO) };
    if stream.write_all(head.as_bytes()).await.is_err() {
        return (String::new(), Duration::ZERO);
    }
    started.fetch_add(1, Ordering::Relaxed);
    let since_head = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(every) => {
                // The server may answer before reading the rest: keep reading until it closes.
                let _ = stream.write_all(b"a").await;
            }
        }
    }
    let status = String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned();
    (status, since_head.elapsed())
}

/// Clients trickling notify *bodies* (their heads complete, so the header timeout does not apply)
/// must not hold the notify share: the body is read under its own deadline before the share is
/// taken, so a genuine notification is still answered, and each slow one is cut with 408.
async fn slow_bodies_do_not_hold_the_notify_share(backend: Backend) {
    const SLOW: usize = 300;
    const BODY_DEADLINE: Duration = Duration::from_millis(2000);
    let wall = Instant::now();
    let env = TestEnv::new(backend).await;
    // A notify share far below the attack, as if a few hundred clients were enough to fill it.
    let overrides = [
        ("SERVER__NOTIFY_MAX_IN_FLIGHT", "20".to_owned()),
        ("SERVER__BODY_READ_TIMEOUT_MS", BODY_DEADLINE.as_millis().to_string()),
    ];
    let process = env.spawn_process_with(&["serve"], &overrides).await;
    let (no, headers, body) = order_and_notification(&env, &process.base, "o-slow-body-victim").await;

    let clients = start_slow_body_clients(&process.base, SLOW, Duration::from_secs(10)).await;
    let answered_in = notify_within_patience(&process.base, &headers, body).await;

    let mut slowest = Duration::ZERO;
    for client in clients {
        let (status, cut_after) = client.await.unwrap();
        assert!(status.starts_with("HTTP/1.1 408"), "a slow body was answered {status:?}");
        slowest = slowest.max(cut_after);
    }
    // Cut at the deadline; the margin is for 300 clients on a loaded 2-core machine.
    assert!(slowest < BODY_DEADLINE + Duration::from_secs(3), "the last slow body was cut after {slowest:?}");
    let metrics = scrape(&process.ops).await;
    assert_eq!(series(&metrics, "wxpay_http_requests_shed_total{share=\"notify\"}"), 0.0, "{metrics}");
    let mut client = MiniProgram::new(&process.base, &env.sim.base_url());
    client.login(Some("o-slow-body-victim")).await.expect("login");
    client.wait_for_status(&no, "SUCCESS", Duration::from_secs(30)).await.expect("applied");
    eprintln!(
        "slow bodies ({backend:?}): {SLOW} slow bodies all 408, the last cut {slowest:?} after its head; \
         notification answered in {answered_in:?}; wall {:?}",
        wall.elapsed()
    );
}

/// Clients that send a complete head and then trickle its body fill the connection cap: while a
/// connection is still reading its body it is evictable (after header-less ones, oldest first),
/// so WeChat's new connection takes a slot and its notification is answered. Before, such a
/// connection counted as busy from its head on, and every new connection was refused until the
/// body deadline.
async fn slow_bodies_at_the_connection_cap_do_not_lock_out_a_notification(backend: Backend) {
    const CAP: usize = 200;
    const SLOW: usize = 400;
    ensure_open_file_limit((SLOW as u64) + 512);
    let wall = Instant::now();
    let env = TestEnv::new(backend).await;
    // Body and header deadlines longer than the test, so only eviction can make room.
    let overrides = [
        ("SERVER__MAX_CONNECTIONS", CAP.to_string()),
        ("SERVER__BODY_READ_TIMEOUT_MS", "30000".to_owned()),
        ("SERVER__REQUEST_TIMEOUT_MS", "60000".to_owned()),
        ("SERVER__HEADER_READ_TIMEOUT_MS", "60000".to_owned()),
    ];
    let process = env.spawn_process_with(&["serve"], &overrides).await;
    let (no, headers, body) = order_and_notification(&env, &process.base, "o-slow-body-cap-victim").await;

    let clients = start_slow_body_clients(&process.base, SLOW, Duration::from_secs(20)).await;
    eventually("the slow bodies fill the cap", Duration::from_secs(20), || async {
        series(&scrape(&process.ops).await, "wxpay_http_connections_open{listener=\"public\"}") >= CAP as f64
    })
    .await;
    let answered_in = notify_within_patience(&process.base, &headers, body).await;
    let metrics = scrape(&process.ops).await;
    let evicted = series(&metrics, "wxpay_http_connections_total{listener=\"public\",outcome=\"evicted\"}");
    let refused = series(&metrics, "wxpay_http_connections_total{listener=\"public\",outcome=\"refused\"}");
    assert!(evicted >= (SLOW - CAP) as f64, "slow bodies were not evicted:\n{metrics}");
    assert_eq!(refused, 0.0, "a connection was refused:\n{metrics}");
    for client in clients {
        client.abort();
    }
    let mut client = MiniProgram::new(&process.base, &env.sim.base_url());
    client.login(Some("o-slow-body-cap-victim")).await.expect("login");
    client.wait_for_status(&no, "SUCCESS", Duration::from_secs(30)).await.expect("applied");
    eprintln!(
        "slow bodies at the cap ({backend:?}): {SLOW} slow bodies, cap {CAP}, {evicted} evicted, notification \
         answered in {answered_in:?}; wall {:?}",
        wall.elapsed()
    );
}

/// A client that sends one quick request, reads the answer, then keeps the connection open and
/// silent (keep-alive). Returns when the server closes it.
async fn one_request_then_idle(addr: String, answered: Arc<AtomicUsize>) {
    let Ok(mut stream) = TcpStream::connect(&addr).await else { return };
    if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: shop\r\n\r\n").await.is_err() {
        return;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answered.fetch_add(1, Ordering::Relaxed);
    while let Ok(n) = stream.read(&mut buf).await
        && n > 0
    {}
}

/// Connections that each made one request and now sit idle between requests fill the cap: once
/// idle for a second they are evictable (longest idle first), so a new connection, WeChat's, is
/// still served.
async fn idle_keep_alive_connections_do_not_lock_out_a_notification(backend: Backend) {
    const CAP: usize = 200;
    let wall = Instant::now();
    let env = TestEnv::new(backend).await;
    // A header timeout longer than the test, so only eviction can make room.
    let overrides =
        [("SERVER__MAX_CONNECTIONS", CAP.to_string()), ("SERVER__HEADER_READ_TIMEOUT_MS", "60000".to_owned())];
    let process = env.spawn_process_with(&["serve"], &overrides).await;
    let (no, headers, body) = order_and_notification(&env, &process.base, "o-idle-victim").await;
    // The set-up's own connections are gone first, so the cap holds only the idle clients.
    eventually("the set-up's connections are closed", Duration::from_secs(10), || async {
        series(&scrape(&process.ops).await, "wxpay_http_connections_open{listener=\"public\"}") == 0.0
    })
    .await;

    let addr = process.base.trim_start_matches("http://").to_owned();
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> =
        (0..CAP).map(|_| tokio::spawn(one_request_then_idle(addr.clone(), Arc::clone(&answered)))).collect();
    eventually("every idle client made its request", Duration::from_secs(10), || async {
        answered.load(Ordering::Relaxed) == CAP
    })
    .await;
    let open = series(&scrape(&process.ops).await, "wxpay_http_connections_open{listener=\"public\"}");
    assert_eq!(open, CAP as f64, "the idle connections fill the cap");
    // Only a connection idle for at least the floor (1 s) is evicted: one idle for less may be
    // about to carry the proxy's next request.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answered_in = notify_within_patience(&process.base, &headers, body).await;
    let metrics = scrape(&process.ops).await;
    let evicted = series(&metrics, "wxpay_http_connections_total{listener=\"public\",outcome=\"evicted\"}");
    let refused = series(&metrics, "wxpay_http_connections_total{listener=\"public\",outcome=\"refused\"}");
    assert!(evicted >= 1.0, "no idle connection was evicted:\n{metrics}");
    assert_eq!(refused, 0.0, "a connection was refused:\n{metrics}");
    let mut client = MiniProgram::new(&process.base, &env.sim.base_url());
    client.login(Some("o-idle-victim")).await.expect("login");
    client.wait_for_status(&no, "SUCCESS", Duration::from_secs(30)).await.expect("applied");
    for client in clients {
        client.abort();
    }
    eprintln!(
        "idle keep-alive ({backend:?}): {CAP} idle connections at the cap, {evicted} evicted, notification \
         answered in {answered_in:?}; wall {:?}",
        wall.elapsed()
    );
}

/// The body is read before the handlers, and they still answer as before: over the limit, 413
/// (declared or chunked); too slow, 408 in our error shape (`FAIL` on the notify route) and the
/// connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_or_too_slow_are_refused_in_our_shapes() {
    let wall = Instant::now();
    let env = TestEnv::new(Backend::Embedded).await;
    let process = env.spawn_process_with(&["serve"], &[("SERVER__BODY_READ_TIMEOUT_MS", "500".to_owned())]).await;
    let big = vec![b'x'; 100 * 1024];
    let (status, answer) = post_notify(&process.base, &[], big.clone()).await;
    assert_eq!((status, answer["code"].as_str()), (413, Some("FAIL")), "declared length: {answer}");
    let chunks = big.chunks(10 * 1024).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>();
    let chunked = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let (status, answer) = post_notify(&process.base, &[], chunked).await;
    assert_eq!((status, answer["code"].as_str()), (413, Some("FAIL")), "chunked: {answer}");

    let addr = process.base.trim_start_matches("http://").to_owned();
    for (path, code) in [("/api/pay/notify", "FAIL"), ("/api/login", "REQUEST_TIMEOUT")] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // Read to the end: the server closes the connection after its answer.
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{path}: {answer}");
    }
    let metrics = scrape(&process.ops).await;
    assert_eq!(series(&metrics, "wxpay_notify_rejected_total{reason=\"body_unreadable\"}"), 3.0, "{metrics}");
    eprintln!("body limit and deadline: 413, 413, 408, 408; wall {:?}", wall.elapsed());
}

/// No storage involved: the embedded profile only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_do_not_grow_metrics() {
    let backend = Backend::Embedded;
    let wall = Instant::now();
    let env = TestEnv::new(backend).await;
    let process = env.spawn_process(&["serve"]).await;
    let http = reqwest::Client::new();
    let round = |offset: usize| {
        let http = http.clone();
        let base = process.base.clone();
        async move {
            for i in offset..offset + 200 {
                let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
                let path = match i % 3 {
                    0 => "/healthz".to_owned(),
                    1 => format!("/nope-{i}/x"),
                    _ => "/api/orders".to_owned(),
                };
                let response = http.request(method, format!("{base}{path}")).send().await.unwrap();
                assert!(response.status().is_client_error(), "{path}: {}", response.status());
            }
        }
    };
    // The series of the request metrics, without their values.
    let series_of = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| l.starts_with("wxpay_http_request"))
            .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
            .collect()
    };
    // The scrape is itself a request: its own series exist from the second scrape on.
    scrape(&process.ops).await;
    round(0).await;
    let before = series_of(&scrape(&process.ops).await);
    round(1000).await;
    let after = series_of(&scrape(&process.ops).await);
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "new series appeared: {new:#?}");
    assert!(!after.iter().any(|s| s.contains("/nope")), "an unmatched path became a label: {after:#?}");
    assert!(!after.iter().any(|s| s.contains("method=\"M")), "a made-up method became a label: {after:#?}");
    eprintln!("made-up methods ({backend:?}): {} request series, stable; wall {:?}", after.len(), wall.elapsed());
}

async fn an_api_flood_is_shed_while_notify_gets_through(backend: Backend) {
    let wall = Instant::now();
    let env = TestEnv::new(backend).await;
    let process = env.spawn_process_with(&["serve"], &[("SERVER__MAX_IN_FLIGHT", "2".to_owned())]).await;
    let (_, headers, body) = order_and_notification(&env, &process.base, "o-flood-notified").await;
    let mut flooder = MiniProgram::new(&process.base, &env.sim.base_url());
    flooder.login(Some("o-flooder")).await.expect("login");
    let token = flooder.token().expect("token").to_owned();
    // Every prepay now hangs 1.5 s at "WeChat": each order creation holds its slot that long.
    set_chaos(
        &env,
        json!({ "fault_rate": 1.0, "fault_modes": ["hang"], "fault_endpoints": ["jsapi"], "hang_ms": 1500 }),
    )
    .await;
    let http = reqwest::Client::new();
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let request = http
                .post(format!("{}/api/orders", process.base))
                .bearer_auth(&token)
                .json(&json!({ "product_id": "coffee", "quantity": 1 }));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, retry_after, body)
            })
        })
        .collect();
    // While the API is saturated, WeChat's notification has its own share.
    eventually("the API share is saturated", Duration::from_secs(10), || async {
        series(&scrape(&process.ops).await, "wxpay_http_requests_shed_total{share=\"api\"}") > 0.0
    })
    .await;
    let answered_in = notify_within_patience(&process.base, &headers, body).await;
    let mut shed = 0;
    for handle in flood {
        let (status, retry_after, body) = handle.await.unwrap();
        // Admitted creations end 201 or, their prepay hanging, 503 PAYMENT_UNAVAILABLE with the
        // out_trade_no; the shed ones never reached a handler.
        if body["code"] == "SERVICE_UNAVAILABLE" {
            assert_eq!(status, 503, "{body}");
            assert_eq!(retry_after.as_deref(), Some("1"));
            shed += 1;
        } else {
            assert!(status == 201 || body["code"] == "PAYMENT_UNAVAILABLE", "{status} {body}");
        }
    }
    assert!(shed >= 10, "only {shed} of 20 requests were shed with 2 slots and 1.5 s each");
    let metrics = scrape(&process.ops).await;
    assert_eq!(series(&metrics, "wxpay_http_requests_shed_total{share=\"api\"}"), f64::from(shed));
    assert_eq!(series(&metrics, "wxpay_http_requests_shed_total{share=\"notify\"}"), 0.0);
    eprintln!(
        "API flood ({backend:?}): {shed} of 20 shed (503 + Retry-After), notification answered in {answered_in:?}; wall {:?}",
        wall.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_are_on_the_ops_listener_or_behind_the_token() {
    let wall = Instant::now();
    let env = TestEnv::new(Backend::Embedded).await;
    let process = env.spawn_process(&["serve"]).await;
    let get = |url: String, token: Option<&'static str>| async move {
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(get(format!("{}/healthz", process.base), None).await, (200, "ok".to_owned()));
    for path in ["/metrics", "/readyz"] {
        assert_eq!(get(format!("{}{path}", process.base), None).await.0, 404, "{path} on the public listener");
        assert_eq!(get(format!("{}{path}", process.ops), None).await.0, 200, "{path} on the ops listener");
    }
    assert!(get(format!("{}/metrics", process.ops), None).await.1.contains("wxpay_orders"));
    assert_eq!(get(format!("{}/healthz", process.ops), None).await.0, 200);
    assert_eq!(get(format!("{}/api/orders", process.ops), None).await.0, 404, "the ops listener serves no API");
    drop(process);

    // With a token, the public listener also serves them, to its holder only.
    const TOKEN: &str = "ops-token-3f9a1c77e2b4";
    let process = env.spawn_process_with(&["serve"], &[("SERVER__OPS_TOKEN", TOKEN.to_owned())]).await;
    for path in ["/metrics", "/readyz"] {
        assert_eq!(get(format!("{}{path}", process.base), None).await.0, 401, "{path} without the token");
        assert_eq!(get(format!("{}{path}", process.base), Some("ops-token-3f9a1c77e2b5")).await.0, 401);
        assert_eq!(get(format!("{}{path}", process.base), Some(TOKEN)).await.0, 200, "{path} with the token");
    }
    drop(process);

    // A worker-only process serves its ops routes on its ops listener, only /healthz publicly.
    let worker = env.spawn_process(&["serve", "--worker-only"]).await;
    assert_eq!(get(format!("{}/healthz", worker.base), None).await.0, 200);
    assert_eq!(get(format!("{}/readyz", worker.base), None).await.0, 404);
    assert_eq!(get(format!("{}/api/orders", worker.base), None).await.0, 404);
    assert_eq!(get(format!("{}/readyz", worker.ops), None).await.0, 200);
    assert_eq!(get(format!("{}/metrics", worker.ops), None).await.0, 200);
    eprintln!("ops listener: wall {:?}", wall.elapsed());
}

/// hyper would read ~400 KiB of request head; ours stops at `server.max_header_bytes`, before any
/// handler (or log line, or database row) sees the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused_before_the_app() {
    let wall = Instant::now();
    let env = TestEnv::new(Backend::Embedded).await;
    let process = env.spawn_process(&["serve"]).await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/pay/notify", process.base))
        .header("Wechatpay-Serial", "A".repeat(64 * 1024))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 431);
    let metrics = scrape(&process.ops).await;
    assert_eq!(series(&metrics, "wxpay_http_connections_total{listener=\"public\",outcome=\"header_too_large\"}"), 1.0);
    assert_eq!(series(&metrics, "wxpay_notify_received_total"), 0.0, "the notify handler never ran:\n{metrics}");
    eprintln!("oversized head: 431; wall {:?}", wall.elapsed());
}

/// On SIGTERM the public listener stops taking connections at once, a request in flight still
/// gets its answer, and meanwhile the ops listener answers `/readyz` 503 `draining` (a probe
/// sees the shutdown rather than a refused connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drains_open_requests_while_readyz_says_draining() {
    let env = TestEnv::new(Backend::Embedded).await;
    let mut process = env.spawn_process(&["serve"]).await;
    let mut client = MiniProgram::new(&process.base, &env.sim.base_url());
    client.login(None).await.expect("login");
    let readyz = format!("{}/readyz", process.ops);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status().as_u16(), 200);
    // Every prepay hangs 3 s at "WeChat": the order creation below is in flight that long.
    set_chaos(&env, json!({"fault_rate": 1.0, "fault_modes": ["hang"], "fault_endpoints": ["jsapi"], "hang_ms": 3000}))
        .await;
    let (base, token) = (process.base.clone(), client.token().expect("token").to_owned());
    let in_flight = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("{base}/api/orders"))
            .bearer_auth(token)
            .json(&json!({ "product_id": "coffee", "quantity": 1 }))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok::<_, reqwest::Error>((status, response.json::<Value>().await.unwrap_or(Value::Null)))
    });
    let db = wxpay_recon::storage::Db::connect(&env.settings().database).await.unwrap();
    eventually("the order is stored and its prepay under way", Duration::from_secs(10), || async {
        orders_with_status(&db, "NOTPAY").await == 1
    })
    .await;

    let pid = process.child.id().expect("pid").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    eventually("readyz answers 503 draining", Duration::from_secs(5), || async {
        let Ok(response) = reqwest::get(&readyz).await else { return false };
        let status = response.status().as_u16();
        status == 503 && response.json::<Value>().await.is_ok_and(|body| body["draining"] == true)
    })
    .await;
    assert!(
        reqwest::get(format!("{}/healthz", process.base)).await.is_err(),
        "the public listener takes no new connection while draining"
    );
    let (status, body) = in_flight.await.unwrap().expect("the request in flight gets its answer");
    // Its prepay never succeeded: the answer names the order to retry.
    assert_eq!((status, body["code"].as_str()), (503, Some("PAYMENT_UNAVAILABLE")), "{body}");
    assert!(body["out_trade_no"].is_string(), "{body}");
    let exit = tokio::time::timeout(Duration::from_secs(20), process.child.wait()).await.expect("exits").unwrap();
    assert!(exit.success(), "{exit:?}");
}

crate::both_profiles!(
    slowloris_does_not_stop_a_valid_notification,
    slow_bodies_do_not_hold_the_notify_share,
    slow_bodies_at_the_connection_cap_do_not_lock_out_a_notification,
    idle_keep_alive_connections_do_not_lock_out_a_notification,
    an_api_flood_is_shed_while_notify_gets_through,
);
