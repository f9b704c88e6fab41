//! Platform-certificate mode end to end: a merchant with no WeChat key configured bootstraps
//! with `wechat fetch-certificates`, pays orders, WeChat rotates its certificate in the middle
//! of the run, and nothing is lost: no order creation fails, every notification is verified on
//! its first delivery, and a restart verifies the new certificate without asking WeChat.
//! Signature probes (`WECHATPAY/SIGNTEST/`) are refused and lose nothing either.

use std::time::Duration;

use serde_json::{Value, json};
use wxpay_recon::clock::Clock;
use wxpay_recon::config::Settings;
use wxpay_recon::sim::notifier::{PlainNotification, envelope_body};
use wxpay_recon::startup::{Application, StartupError};
use wxpay_recon::telemetry::metrics::Metrics;

use crate::helpers::*;

async fn sim_call(env: &TestEnv, method: reqwest::Method, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", env.sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

/// The settings of a merchant on platform certificates only: the dev merchant key and secrets,
/// no platform key configured (the dev keys' WeChat Pay public key is left out).
fn certificate_merchant(env: &TestEnv) -> Vec<(&'static str, String)> {
    let file = |name: &str| env.path("dev-keys").join(name).display().to_string();
    vec![
        ("WECHAT__USE_DEV_KEYS", "false".into()),
        ("WECHAT__APPID", env.keys.appid.clone()),
        ("WECHAT__MCHID", env.keys.mchid.clone()),
        ("WECHAT__MERCHANT_SERIAL", env.keys.merchant_serial.clone()),
        ("WECHAT__MERCHANT_KEY_FILE", file("merchant_key.pem")),
        ("WECHAT__APIV3_KEY_FILE", file("apiv3_key")),
        ("WECHAT__APP_SECRET_FILE", file("app_secret")),
        ("AUTH__DATA_KEY_FILE", file("data_key")),
        ("WECHAT__NOTIFY_URL", "https://merchant.invalid/api/pay/notify".into()),
    ]
}

fn apply_to(settings: &mut Settings, env: &TestEnv) {
    let file = |name: &str| Some(env.path("dev-keys").join(name));
    let w = &mut settings.wechat;
    w.use_dev_keys = false;
    w.appid.clone_from(&env.keys.appid);
    w.mchid.clone_from(&env.keys.mchid);
    w.merchant_serial.clone_from(&env.keys.merchant_serial);
    w.merchant_key_file = file("merchant_key.pem");
    w.apiv3_key_file = file("apiv3_key");
    w.app_secret_file = file("app_secret");
    w.platform_keys.clear();
    settings.auth.data_key_file = file("data_key");
    // Empty: the app calls itself back at its own address (the simulator is on this machine).
    w.notify_url.clear();
}

async fn run_cli(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    run_cli_as(env, args, &certificate_merchant(env)).await
}

async fn run_cli_as(env: &TestEnv, args: &[&str], overrides: &[(&str, String)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpay-recon"));
    command.args(args).envs(env.env_vars());
    for (key, value) in overrides {
        command.env(format!("WXPAY_RECON__{key}"), value);
    }
    let output = command.output().await.unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// The `Wechatpay-Serial` our last JSAPI prepay asked WeChat to sign with.
async fn last_prepay_serial(env: &TestEnv) -> String {
    let calls = sim_call(env, reqwest::Method::GET, "/sim/calls", json!({})).await;
    let last = calls.as_array().unwrap().iter().rev().find(|c| c["endpoint"] == "jsapi").expect("a prepay call");
    last["wechatpay_serial"].as_str().unwrap_or("").to_owned()
}

async fn certificate_calls(env: &TestEnv) -> usize {
    let calls = sim_call(env, reqwest::Method::GET, "/sim/calls", json!({})).await;
    calls.as_array().unwrap().iter().filter(|c| c["endpoint"] == "certificates" && c["status"] == 200).count()
}

async fn pay_and_wait(env: &TestEnv, app: &TestApp, numbers: &[String], expected_paid: i64) {
    pay_all(env, numbers).await;
    eventually("every paid order is SUCCESS", Duration::from_secs(30), || async {
        count_status(app, "SUCCESS").await == expected_paid
    })
    .await;
}

/// A notification carrying `resource`, signed as WeChat signs notifications right now (the
/// simulator's default key: after a rotation, the new certificate).
fn signed_by_wechat_now(env: &TestEnv, id: &str, resource: String) -> (Vec<(&'static str, String)>, String) {
    let (serial, signer) = env.sim.ctx.signing_key(None);
    signed_by(env, (serial, &signer), id, resource)
}

/// A notification carrying `resource`, signed with `key` (its serial and private key).
fn signed_by(
    env: &TestEnv,
    (serial, signer): (String, &wxpay_recon::wechat::sign::RsaSigner),
    id: &str,
    resource: String,
) -> (Vec<(&'static str, String)>, String) {
    let plain = PlainNotification::transaction_success(id.into(), resource, env.clock.now());
    let body = envelope_body(&env.sim_keys, &plain, "Fmwp04ry88f3");
    let (ts, nonce) = (env.clock.now().timestamp().to_string(), "c5ac7061fccab6bf3e254dcf98995b8c");
    let message = wxpay_recon::wechat::sign::response_message(&ts, nonce, body.as_bytes());
    let headers = vec![
        ("Wechatpay-Timestamp", ts),
        ("Wechatpay-Nonce", nonce.to_owned()),
        ("Wechatpay-Signature", signer.sign(&message).unwrap()),
        ("Wechatpay-Serial", serial),
        ("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048".to_owned()),
    ];
    (headers, body)
}

async fn a_rotation_mid_run_loses_nothing(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // The hard case: WeChat signs everything with its newest certificate, whatever our requests
    // name, so after the rotation even the certificate list comes signed with one we lack.
    let mode = json!({"mode": "certificates", "honour_requested_serial": false});
    let mode = sim_call(&env, reqwest::Method::PUT, "/sim/key-mode", mode).await;
    let first = mode["default_serial"].as_str().unwrap().to_owned();
    assert_eq!(first.len(), 40, "{mode}");

    // Without a key the service refuses to start, and says how to get one.
    let mut settings = env.settings();
    apply_to(&mut settings, &env);
    let refused = Application::build(settings, Clock::system(), ALL_ROLES, Metrics::new()).await;
    match refused {
        Err(StartupError::Config(err)) => assert!(err.to_string().contains("fetch-certificates"), "{err}"),
        other => panic!("started without any WeChat key: {:?}", other.map(|_| ())),
    }

    // Bootstrap with the real command: trust on first use, saved in the database.
    let (ok, stdout, stderr) = run_cli(&env, &["wechat", "fetch-certificates"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains(&first) && stdout.contains("trusted on first use"), "{stdout}");
    // A second run is checked against what was saved.
    let (ok, stdout, stderr) = run_cli(&env, &["wechat", "fetch-certificates"]).await;
    assert!(ok && stdout.contains("signed by a key already held"), "{stdout}\n{stderr}");

    let app = env.spawn_app_with(ALL_ROLES, |s| apply_to(s, &env)).await;
    let (client, _) = env.client(&app).await;
    let before = create_orders(&client, 10).await;
    assert_eq!(last_prepay_serial(&env).await, first, "we name the certificate we hold");
    pay_and_wait(&env, &app, &before, 10).await;
    let fetched_before_rotation = certificate_calls(&env).await;

    // WeChat rotates: the new certificate signs every notification from now on.
    let rotated = sim_call(&env, reqwest::Method::POST, "/sim/certificates/rotate", json!({})).await;
    let second = rotated["serial"].as_str().unwrap().to_owned();
    let after = create_orders(&client, 10).await;
    pay_and_wait(&env, &app, &after, 20).await;

    let rejected = |reason: &str| app.metrics.notify_rejected.with_label_values(&[reason]).get();
    assert_eq!(rejected("unknown_serial"), 0, "every notification verified on its first delivery");
    assert_eq!(
        certificate_calls(&env).await - fetched_before_rotation,
        1,
        "answers and ten notifications signed with an unknown certificate made one download"
    );
    // Saved by the keeper when it hears of the download (asynchronously).
    eventually("the new certificate is saved", Duration::from_secs(10), || async {
        app.state.db.platform_certificates().await.unwrap().iter().any(|c| c.serial == second)
    })
    .await;
    // Our next request names the newest certificate.
    create_orders(&client, 1).await;
    assert_eq!(last_prepay_serial(&env).await, second);
    let paid = app.state.db.order_by_no(&trade_no(&before[0])).await.unwrap().unwrap();
    let paid_id = paid.transaction_id.clone().unwrap();
    drop(app);

    // A restart with WeChat unreachable still verifies the new certificate (saved set).
    let restarted = env
        .spawn_app_with(ALL_ROLES, |s| {
            apply_to(s, &env);
            s.wechat.pay_base_url = format!("http://127.0.0.1:{}", free_port());
        })
        .await;
    assert_eq!(env.sim.ctx.signing_key(None).0, second);
    let resource = env.transaction_json(&before[0], paid.amount.0, &paid.payer_openid, paid_id.as_str());
    let (headers, body) = signed_by_wechat_now(&env, "restart-check", resource);
    let (status, answer) = restarted.post_notify(&headers, body).await;
    assert_eq!(status, 204, "acknowledged: {answer}");
}

async fn signature_probes_are_refused_and_nothing_is_lost(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    let numbers = create_orders(&client, 12).await;
    set_chaos(&env, json!({ "signature_probe_rate": 0.5, "seed": 11 })).await;
    pay_and_wait(&env, &app, &numbers, 12).await;
    let probes = app.metrics.notify_rejected.with_label_values(&["signature_probe"]).get();
    assert!(probes > 0, "half the deliveries carried a probe, none was refused");
    // The simulator marks a delivery done once it has read our answer, a moment after we applied it.
    eventually("every notification delivered in the end", Duration::from_secs(10), || async {
        sim_notifications(&env).await.iter().all(|n| n["delivered"] == true)
    })
    .await;
}

/// Two replicas; WeChat lists a certificate that takes effect in four hours. Once the refresh
/// interval (three hours) has passed, one replica (the lease holder) downloads the list, both load it from the
/// database, and when the new certificate starts signing, both verify it without downloading.
async fn one_replica_refreshes_on_schedule_and_every_replica_follows(backend: Backend) {
    let env = TestEnv::new(backend).await;
    sim_call(&env, reqwest::Method::PUT, "/sim/key-mode", json!({"mode": "certificates"})).await;
    let (ok, stdout, stderr) = run_cli(&env, &["wechat", "fetch-certificates"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    let replica = |s: &mut Settings| {
        apply_to(s, &env);
        s.platform_certificates.refresh_interval_secs = 10_800;
        s.platform_certificates.reload_interval_secs = 1;
    };
    let (a, b) = (env.spawn_app_with(ALL_ROLES, replica).await, env.spawn_app_with(ALL_ROLES, replica).await);
    for app in [&a, &b] {
        eventually("the keeper has ticked", Duration::from_secs(10), || async {
            app.metrics.certificates_in_use.get() == 1 && app.metrics.certificate_last_refresh.get() > 0
        })
        .await;
    }
    assert_eq!(certificate_calls(&env).await, 1, "only the command's download: nothing was due");

    let rotated =
        sim_call(&env, reqwest::Method::POST, "/sim/certificates/rotate", json!({"effective_in_secs": 14_400})).await;
    let next = rotated["serial"].as_str().unwrap().to_owned();
    let last_before = a.metrics.certificate_last_refresh.get();
    env.clock.advance(Duration::from_secs(10_801));
    for app in [&a, &b] {
        eventually("every replica sees the scheduled download", Duration::from_secs(15), || async {
            app.metrics.certificate_last_refresh.get() > last_before
        })
        .await;
    }
    assert_eq!(certificate_calls(&env).await, 2, "one download for both replicas (the lease)");
    let saved = a.state.db.platform_certificates().await.unwrap();
    assert!(saved.iter().any(|c| c.serial == next), "{saved:?}");

    // Two hours on (the next download not yet due), the new certificate signs; both replicas
    // already hold it.
    env.clock.advance(Duration::from_secs(7200));
    assert_eq!(env.sim.ctx.signing_key(None).0, next);
    for (i, app) in [&a, &b].into_iter().enumerate() {
        let resource = env.transaction_json("NOSUCHORDER0000000000000001", 100, "o-x", "4200000000202612020000000009");
        let (headers, body) = signed_by_wechat_now(&env, &format!("scheduled-{i}"), resource);
        assert_eq!(app.post_notify(&headers, body).await.0, 204, "replica {i} verifies the new certificate");
    }
    assert_eq!(certificate_calls(&env).await, 2, "no download was needed for it");
}

/// During a migration both kinds verify: the public key is named in our requests (it does not
/// expire), and a notification under either key is accepted.
async fn public_key_and_certificates_work_side_by_side(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let mode = sim_call(&env, reqwest::Method::PUT, "/sim/key-mode", json!({"mode": "both"})).await;
    let certificate = mode["certificates"][0]["serial"].as_str().unwrap().to_owned();
    // The dev keys configure the public key; the certificates are downloaded beside it.
    let (ok, stdout, stderr) = run_cli_as(&env, &["wechat", "fetch-certificates"], &[]).await;
    assert!(ok && stdout.contains(&certificate), "{stdout}\n{stderr}");
    let app = env.spawn_app(ALL_ROLES).await;
    let (client, _) = env.client(&app).await;
    let numbers = create_orders(&client, 3).await;
    assert_eq!(last_prepay_serial(&env).await, env.keys.platform_serial, "the public key is named first");
    pay_and_wait(&env, &app, &numbers, 3).await;

    let (serial, signer) = env.sim.ctx.signing_key(Some(&certificate));
    assert_eq!(serial, certificate);
    let resource = env.transaction_json("NOSUCHORDER0000000000000002", 100, "o-x", "4200000000202612020000000010");
    let (headers, body) = signed_by(&env, (serial, &signer), "under-certificate", resource);
    assert_eq!(app.post_notify(&headers, body).await.0, 204, "a notification under the certificate verifies");
    assert_eq!(app.metrics.notify_rejected.with_label_values(&["unknown_serial"]).get(), 0);
}

crate::both_profiles!(
    public_key_and_certificates_work_side_by_side,
    a_rotation_mid_run_loses_nothing,
    signature_probes_are_refused_and_nothing_is_lost,
    one_replica_refreshes_on_schedule_and_every_replica_follows
);
