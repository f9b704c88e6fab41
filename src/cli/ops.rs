//! Operator verbs: `jobs dead`, `jobs retry <id>|--all`, `order show <no>`.

use std::process::ExitCode;

use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::OutTradeNo;
use crate::domain::time::from_ms;
use crate::queue::{Envelope, Job, JobQueue};
use crate::storage::Db;

use super::CliError;

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs that exhausted their attempts, with their last error.
    Dead,
    /// Re-enqueue dead jobs (attempt counter reset): one id, or --all.
    // Exactly one of the two, or clap refuses with a usage error (exit 2).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        /// Dead job id (the first column of `jobs dead`; `dead_job.id` in the worker's log).
        id: Option<i64>,
        /// Retry every dead job.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum OrderCommand {
    /// Print an order, its event history (source and evidence of each step), anomalies and
    /// notifications.
    Show { out_trade_no: String },
}

async fn db(settings: &Settings) -> Result<Db, CliError> {
    crate::deps::database(&settings.database).await.map_err(|e| CliError::new(e.to_string()))
}

pub async fn jobs(settings: Settings, command: JobsCommand) -> Result<ExitCode, CliError> {
    let db = db(&settings).await?;
    let dead = db.dead_jobs().await.map_err(|e| CliError::new(e.to_string()))?;
    match command {
        JobsCommand::Dead => {
            if dead.is_empty() {
                println!("no dead jobs");
            }
            // The first column is the dead job's id (`jobs retry <id>`, `dead_job.id` in the
            // log line that buried it); `job.id` is what the job is about, as the worker's `job`
            // span logged it on every attempt.
            for job in &dead {
                println!(
                    "{:>6}  {:<20} job.id={:<28} attempts={:<3} died={}  payload={}  last_error={}",
                    job.id,
                    job.kind,
                    subject(&job.payload),
                    job.attempts,
                    from_ms(job.died_at_ms).to_rfc3339(),
                    job.payload,
                    job.last_error
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Retry { id, all } => {
            let queue = JobQueue::connect(&settings.queue).await.map_err(|e| CliError::new(e.to_string()))?;
            let clock = Clock::system();
            let mut retried = 0;
            for job in dead.iter().filter(|j| all || Some(j.id) == id) {
                let parsed: Job = serde_json::from_str(&job.payload)
                    .map_err(|e| CliError::new(format!("dead job {}: unreadable payload: {e}", job.id)))?;
                if !db.mark_dead_job_retried(job.id, clock.now_ms()).await.map_err(|e| CliError::new(e.to_string()))? {
                    continue;
                }
                let subject = parsed.subject();
                if let Job::ApplyNotification { inbox_id } = parsed {
                    db.inbox_job_retried(inbox_id, clock.now_ms()).await.map_err(|e| CliError::new(e.to_string()))?;
                }
                queue.push(Envelope::first(parsed), None).await.map_err(|e| CliError::new(e.to_string()))?;
                retried += 1;
                println!("re-enqueued dead job {} ({} job.id={subject})", job.id, job.kind);
            }
            if retried == 0 {
                return Err(CliError::new("no matching dead job"));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `job.id` the worker logged for a dead job's payload (`?` if it no longer reads as a job).
fn subject(payload: &str) -> String {
    serde_json::from_str::<Job>(payload).map_or_else(|_| "?".to_owned(), |job| job.subject())
}

pub async fn order(settings: Settings, command: OrderCommand) -> Result<ExitCode, CliError> {
    let OrderCommand::Show { out_trade_no } = command;
    let db = db(&settings).await?;
    let err = |e: crate::storage::StorageError| CliError::new(e.to_string());
    let no = OutTradeNo::parse(&out_trade_no).map_err(|e| CliError::usage(e.to_string()))?;
    let Some(order) = db.order_by_no(&no).await.map_err(err)? else {
        return Err(CliError::new(format!("no order {out_trade_no}")));
    };
    println!("order        {}", order.out_trade_no);
    println!("status       {}", order.status);
    println!("amount       {} fen ({} x {})", order.amount.0, order.quantity, order.product_id);
    println!("created      {}", from_ms(order.created_at_ms).to_rfc3339());
    println!("expires      {}", from_ms(order.time_expire_ms).to_rfc3339());
    if let Some(paid) = order.paid_at_ms {
        println!("paid         {}", from_ms(paid).to_rfc3339());
    }
    if let Some(txn) = &order.transaction_id {
        println!("transaction  {txn}");
    }
    println!("\nhistory:");
    for e in db.order_events(order.id).await.map_err(err)? {
        println!(
            "  {}  {:>8} -> {:<8} {:<9} source={:<6} evidence={} {}",
            from_ms(e.created_at_ms).to_rfc3339(),
            e.from_status.as_deref().unwrap_or("-"),
            e.to_status,
            if e.applied == 1 { "applied" } else { "no-op" },
            e.source,
            e.evidence.as_deref().unwrap_or("-"),
            e.note.as_deref().unwrap_or("")
        );
    }
    let anomalies = db.anomalies(Some(order.out_trade_no.as_str())).await.map_err(err)?;
    if !anomalies.is_empty() {
        println!("\nanomalies:");
        for a in anomalies {
            let values = match (&a.ours, &a.theirs) {
                (None, None) => String::new(),
                (ours, theirs) => {
                    format!("  ours={} theirs={}", ours.as_deref().unwrap_or("-"), theirs.as_deref().unwrap_or("-"))
                }
            };
            println!(
                "  {}  {} (from {}, evidence={}){values}",
                from_ms(a.created_at_ms).to_rfc3339(),
                a.kind,
                a.source,
                a.evidence.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
