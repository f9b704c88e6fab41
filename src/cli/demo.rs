//! `wxpay-recon demo`: the embedded profile end to end in one process. Starts the simulator,
//! the API and the worker, then plays `--orders` mini-program purchases and reports.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{LogFormat, Settings};
use crate::demo::{MiniProgram, verify_pay_sign};
use crate::domain::OrderStatus;
use crate::startup::{Application, Roles};
use crate::telemetry::{self, metrics::Metrics};
use crate::wechat::devkeys::DevKeys;
use crate::wechat::verify::RsaVerifier;

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many purchases the scripted client makes.
    #[arg(long, default_value_t = 20)]
    orders: usize,
    /// How many purchases run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Keep serving (API, metrics, simulator) after the script until ctrl-c.
    #[arg(long)]
    keep_running: bool,
}

const PRODUCTS: [&str; 3] = ["coffee", "mug", "sticker"];

pub async fn run(mut settings: Settings, args: Args) -> Result<ExitCode, CliError> {
    settings.log.format = LogFormat::Pretty;
    if std::env::var_os("RUST_LOG").is_none() && settings.log.filter == "info" {
        settings.log.filter = "warn".into();
    }
    telemetry::init(settings.log.format, &settings.log.filter);
    let clock = Clock::system();
    // Everything runs on this machine over plain http: the simulator accepts our http
    // notify_url, and we accept its http base URL (both refused against real WeChat).
    settings.sim.allow_http_notify = true;
    settings.wechat.allow_insecure_http = true;
    let sim = super::sim::spawn(&settings, clock.clone(), 0).await?;
    settings.wechat.pay_base_url = sim.base_url();
    settings.wechat.login_base_url = sim.base_url();
    settings.wechat.notify_url = String::new();
    settings.server.port = 0;
    settings.server.ops_port = 0;
    // Every scripted customer logs in from 127.0.0.1: one address is a crowd here, not an abuser.
    settings.quotas.login_per_ip_per_min = 0;
    let data = settings.database.url.clone();
    let merchant_public = DevKeys::load(&settings.wechat.dev_keys_dir)?.merchant_key.public_key();

    let metrics = Metrics::new();
    let app = Application::build(settings, clock, Roles { api: true, worker: true }, metrics.clone()).await?;
    let api = app.base_url();
    let ops = app.ops_base_url();
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));
    println!("wxpay-recon demo: API {api}, simulator {}, data {data}", sim.base_url());

    let started = Instant::now();
    let merchant_public = Arc::new(merchant_public);
    let outcomes: Vec<Result<String, String>> = futures::stream::iter(0..args.orders)
        .map(|i| {
            let (api, sim_url, key) = (api.clone(), sim.base_url(), Arc::clone(&merchant_public));
            async move { purchase(&api, &sim_url, &key, PRODUCTS[i % PRODUCTS.len()], 1 + (i % 3) as i64).await }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let paid = outcomes.iter().filter(|o| o.is_ok()).count();
    for failure in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        println!("  FAILED: {failure}");
    }
    let sim_stats = reqwest::get(format!("{}/sim/stats", sim.base_url()))
        .await
        .map_err(|e| CliError::new(e.to_string()))?
        .text()
        .await
        .unwrap_or_default();
    let accepted = |kind: &str| metrics.notify_accepted.with_label_values(&[kind]).get();
    println!("\norders created:            {}", metrics.orders_created.get());
    println!("orders paid (SUCCESS):     {paid} of {}", args.orders);
    println!("notifications stored:      {} new, {} duplicates", accepted("new"), accepted("duplicate"));
    println!("notifications rejected:    {}", sum_rejected(&metrics));
    println!("simulator:                 {sim_stats}");
    println!("elapsed:                   {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "metrics:                   {ops}/metrics{}",
        if args.keep_running { "" } else { " (use --keep-running to browse)" }
    );
    println!("data:                      {data}");
    println!("order history:             wxpay-recon order show <out_trade_no>");

    if args.keep_running {
        println!("\nserving until ctrl-c ...");
        crate::shutdown::on_signal(stop.clone());
        stop.cancelled().await;
    }
    stop.cancel();
    sim.stop();
    let _ = running.await;
    Ok(if paid == args.orders { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn sum_rejected(metrics: &Metrics) -> u64 {
    let text = metrics.render();
    text.lines()
        .filter(|l| l.starts_with("wxpay_notify_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One purchase, as a mini-program does it; `Ok(out_trade_no)` once our API reports SUCCESS.
async fn purchase(
    api: &str,
    sim: &str,
    merchant_public: &RsaVerifier,
    product: &str,
    quantity: i64,
) -> Result<String, String> {
    let mut client = MiniProgram::new(api, sim);
    client.login(None).await.map_err(|e| e.to_string())?;
    let order = client.create_order(product, quantity).await.map_err(|e| e.to_string())?;
    if !verify_pay_sign(&order.payment, merchant_public) {
        return Err(format!("{}: paySign does not verify", order.out_trade_no));
    }
    client.pay(&order.out_trade_no).await.map_err(|e| e.to_string())?;
    client
        .wait_for_status(&order.out_trade_no, OrderStatus::Success.as_str(), Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    println!("  {} {:>3} x {:<8} {:>6} fen  SUCCESS", order.out_trade_no, quantity, product, order.amount_fen);
    Ok(order.out_trade_no)
}
