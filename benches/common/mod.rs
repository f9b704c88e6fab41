//! What the benches share: Redis clean-up and percentiles.

/// Deletes this run's keys (`<prefix>*`) from the shared Redis: left behind they fill it.
pub async fn drop_bench_keys(redis_url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url) else { return };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// The `q` quantile of sorted values (nearest rank), 0 when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A setting from the environment, or `default` when absent or unreadable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The test fixtures' development keys, copied into `dir` (the key loader may write beside
/// them): their directory, the keys, and the simulator's half.
pub fn dev_keys(
    dir: &std::path::Path,
) -> (std::path::PathBuf, wxpay_recon::wechat::devkeys::DevKeys, wxpay_recon::sim::SimKeys) {
    let keys_dir = dir.join("dev-keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-keys");
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), keys_dir.join(entry.file_name())).unwrap();
    }
    let keys = wxpay_recon::wechat::devkeys::DevKeys::load(&keys_dir).unwrap();
    let sim_keys = wxpay_recon::sim::SimKeys::from_dev_keys(&keys).unwrap();
    (keys_dir, keys, sim_keys)
}
