//! What an operator sees when the binary cannot start: every configuration problem at once
//! (not one per restart), and an unreachable database or Redis named with the cause, never its
//! password. The real binary, run as an operator would.

use std::process::Output;

use tokio::process::Command;

use crate::helpers::*;

/// Runs the binary with only `vars` (plus PATH) in its environment, from `dir`.
async fn run(dir: &std::path::Path, args: &[&str], vars: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wxpay-recon"));
    command.args(args).current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in vars {
        command.env(format!("WXPAY_RECON__{key}"), value);
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .expect("the binary gave up within a minute")
        .expect("run wxpay-recon")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_install_hears_every_missing_setting_and_secret_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("data.sqlite").display());
    // Validation problems: the merchant identity is missing and two settings are wrong.
    let out =
        run(dir.path(), &["serve"], &[("NOTIFY__MAX_BATCH", "0".into()), ("DATABASE__URL", database.clone())]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a configuration error exits 2: {stderr}");
    for setting in ["wechat.appid", "wechat.mchid", "wechat.merchant_serial", "wechat.notify_url", "notify.max_batch"] {
        assert!(stderr.contains(setting), "{setting} not reported:\n{stderr}");
    }

    // Identity given, secrets missing: every secret is named in the same run.
    let identity = [
        ("WECHAT__APPID", "wx0000000000000001".to_owned()),
        ("WECHAT__MCHID", "1230000109".to_owned()),
        ("WECHAT__MERCHANT_SERIAL", "0123456789ABCDEF".to_owned()),
        ("WECHAT__NOTIFY_URL", "https://shop.example/api/pay/notify".to_owned()),
        ("AUTH__DATA_KEY", "dG9vIHNob3J0".to_owned()),
        ("SERVER__ADMIN_TOKEN", "short".to_owned()),
        ("SERVER__PORT", "0".to_owned()),
        ("DATABASE__URL", database),
    ];
    let out = run(dir.path(), &["serve"], &identity).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for setting in [
        "wechat.merchant_key",
        "wechat.apiv3_key",
        "wechat.app_secret",
        "wechat.platform_keys",
        "auth.data_key",
        "server.admin_token",
    ] {
        assert!(stderr.contains(setting), "{setting} not reported:\n{stderr}");
    }
    assert!(stderr.contains("configuration problems:"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_or_redis_is_named_with_the_cause_and_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("postgres://wxpay:hunter2secret@127.0.0.1:{port}/shop");
    let out = run(dir.path(), &["migrate"], &[("DATABASE__URL", url)]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("PostgreSQL at 127.0.0.1:{port}/shop")), "host not named:\n{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "cause not given:\n{stderr}");
    assert!(!stderr.contains("hunter2secret"), "password printed:\n{stderr}");

    // Redis: the database is fine, the queue is not.
    let env = TestEnv::new(Backend::Cluster).await;
    let redis_port = free_port();
    let mut vars: Vec<(String, String)> = env.env_vars();
    vars.retain(|(k, _)| k != "WXPAY_RECON__QUEUE__URL");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wxpay-recon"));
    command
        .args(["serve", "--dev-keys"])
        .envs(vars)
        .env("WXPAY_RECON__QUEUE__URL", format!("redis://:hunter2secret@127.0.0.1:{redis_port}"));
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), command.output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("Redis at 127.0.0.1:{redis_port}")), "host not named:\n{stderr}");
    assert!(!stderr.contains("hunter2secret"), "password printed:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_towards_wechat_is_refused_in_the_same_list_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        ("WECHAT__USE_DEV_KEYS", "true".to_owned()),
        ("WECHAT__DEV_KEYS_DIR", dir.path().join("dev-keys").display().to_string()),
        ("WECHAT__PAY_BASE_URL", "http://127.0.0.1:9/".to_owned()),
        ("WECHAT__LOGIN_BASE_URL", "http://127.0.0.1:9/".to_owned()),
        // http, and a query string WeChat refuses whatever the scheme.
        ("WECHAT__NOTIFY_URL", "http://shop.example/api/pay/notify?shop=1".to_owned()),
        ("NOTIFY__MAX_BATCH", "0".to_owned()),
        ("SERVER__PORT", "0".to_owned()),
        ("DATABASE__URL", format!("sqlite://{}", dir.path().join("data.sqlite").display())),
    ];
    let out = run(dir.path(), &["serve"], &base).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("5 configuration problems:"), "{stderr}");
    for setting in ["wechat.pay_base_url", "wechat.login_base_url", "wechat.notify_url", "notify.max_batch"] {
        assert!(stderr.contains(setting), "{setting} not reported:\n{stderr}");
    }
    assert!(stderr.contains("wechat.allow_insecure_http"), "the way out is named:\n{stderr}");

    // Allowed for a local run: only the query string and the other mistake remain.
    let mut allowed = base.to_vec();
    allowed.push(("WECHAT__ALLOW_INSECURE_HTTP", "true".to_owned()));
    let out = run(dir.path(), &["serve"], &allowed).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("2 configuration problems:"), "{stderr}");
    assert!(stderr.contains("query string") && !stderr.contains("wechat.pay_base_url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_development_keys_not_asked_for_on_its_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let vars = [
        ("WECHAT__DEV_KEYS_DIR", dir.path().join("dev-keys").display().to_string()),
        ("SERVER__PORT", "0".to_owned()),
        ("SERVER__OPS_PORT", "0".to_owned()),
        ("DATABASE__URL", format!("sqlite://{}", dir.path().join("data.sqlite").display())),
    ];
    let refused = |out: &Output, how: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{how}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{how}: one line: {stderr}");
        assert!(stderr.contains("--dev-keys") && stderr.contains("wechat.use_dev_keys"), "{how}: {stderr}");
        assert!(!dir.path().join("data.sqlite").exists(), "{how}: refused before touching the database");
    };

    // From the environment.
    let mut from_env = vars.to_vec();
    from_env.push(("WECHAT__USE_DEV_KEYS", "true".to_owned()));
    refused(&run(dir.path(), &["serve"], &from_env).await, "environment");

    // From a config file.
    let file = dir.path().join("local.toml");
    std::fs::write(&file, "[wechat]\nuse_dev_keys = true\n").unwrap();
    let config = file.display().to_string();
    refused(&run(dir.path(), &["serve", "--config", &config], &vars).await, "config file");

    // With the flag the same settings start (and print the ops address on the start line).
    let mut command = Command::new(env!("CARGO_BIN_EXE_wxpay-recon"));
    command
        .args(["serve", "--dev-keys", "--config", &config])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let local = [
        ("WECHAT__PAY_BASE_URL", "http://127.0.0.1:9/".to_owned()),
        ("WECHAT__LOGIN_BASE_URL", "http://127.0.0.1:9/".to_owned()),
        ("WECHAT__ALLOW_INSECURE_HTTP", "true".to_owned()),
        ("RECONCILE__ENABLED", "false".to_owned()),
    ];
    for (key, value) in vars.iter().chain(&local) {
        command.env(format!("WXPAY_RECON__{key}"), value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap();
    let line = line.expect("a start line");
    assert!(line.starts_with("wxpay-recon listening on http://") && line.contains(", ops on http://"), "{line}");
    child.start_kill().unwrap();
}
