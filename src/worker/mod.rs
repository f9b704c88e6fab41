//! The background worker: the inbox batch appliers, apalis workers (one per queue) running
//! `jobs::run`, plus the singleton sweeper, poller and reconcile scheduler. Registered in one place, stopped by one cancellation token.

pub mod context;
pub mod inbox_applier;
pub mod jobs;
pub mod poller;
pub mod reconcile_scheduler;
pub mod retry;
pub mod sweeper;

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::queue::{Envelope, JobQueue, QueueName};

use context::SharedContext;

/// The apalis handler: a thin adapter to `jobs::run`.
async fn handle(envelope: Envelope, ctx: Data<SharedContext>) -> Result<(), BoxDynError> {
    jobs::run(&ctx, envelope).await
}

/// A name for this running instance, unique even where the host name and pid are not (two
/// containers without `HOSTNAME`, both pid 1; two instances in one test process): the holder
/// of every lease and the prefix of every worker registration.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A unique worker name per instance and restart, so a restarted process never collides with
/// the registration of the one it replaces.
fn worker_name(instance: &str, queue: QueueName, run: usize) -> String {
    format!("{instance}-{}-{run}", queue.as_str())
}

/// A restarted worker waits before registering again: without it, a queue that is down makes
/// the monitor restart workers in a tight loop.
fn restart_delay(run: usize) -> Duration {
    if run == 0 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(run.min(6)).unwrap_or(6);
    (Duration::from_millis(200) * 2u32.pow(exp)).min(Duration::from_secs(10))
}

/// Runs the job workers and the sweeper until `stop` fires.
pub async fn run(
    ctx: SharedContext,
    queue: JobQueue,
    settings: Arc<Settings>,
    instance: String,
    stop: CancellationToken,
) -> Result<(), MonitorError> {
    // SQLite has one writer connection: a second claimer would only wait for the first.
    let claimers = match ctx.db.dialect() {
        crate::storage::Dialect::Sqlite => 1,
        crate::storage::Dialect::Postgres => settings.apply.claimers,
    };
    let appliers: Vec<_> = (0..claimers)
        .map(|claimer| {
            tokio::spawn(inbox_applier::run(Arc::clone(&ctx), settings.apply.clone(), claimer, stop.clone()))
        })
        .collect();
    let holder = worker_name(&instance, QueueName::Apply, 0);
    let sweeper = tokio::spawn(sweeper::run(
        Arc::clone(&ctx),
        holder,
        settings.worker.sweep_interval(),
        Duration::from_millis(settings.worker.sweep_min_age_ms),
        Duration::from_millis(settings.worker.lease_ttl_ms),
        stop.clone(),
    ));
    let poller = tokio::spawn(poller::run(
        Arc::clone(&ctx),
        worker_name(&instance, QueueName::Poll, 0),
        settings.poll.clone(),
        Duration::from_millis(settings.worker.lease_ttl_ms),
        stop.clone(),
    ));
    let scheduler = settings.reconcile.enabled.then(|| {
        tokio::spawn(reconcile_scheduler::run(
            Arc::clone(&ctx),
            ctx.reconciler.clone(),
            worker_name(&instance, QueueName::Apply, 1_000_000),
            Duration::from_millis(settings.worker.lease_ttl_ms),
            stop.clone(),
        ))
    });
    let poll = settings.queue.poll_interval();
    let concurrency = settings.queue.concurrency;
    let mut monitor = Monitor::new();
    for name in QueueName::ALL {
        match &queue {
            JobQueue::Sqlite { .. } => {
                let Some(storage) = queue.sqlite_storage(name) else {
                    continue;
                };
                let (ctx, instance) = (Arc::clone(&ctx), instance.clone());
                monitor = monitor.register(move |run| {
                    let delay = restart_delay(run);
                    WorkerBuilder::new(worker_name(&instance, name, run))
                        .backend(storage.clone().poll_with_interval(poll).before_start(move |_| async move {
                            tokio::time::sleep(delay).await;
                            Ok(())
                        }))
                        .data(Arc::clone(&ctx))
                        .concurrency(concurrency)
                        .catch_panic()
                        .build(handle)
                });
            }
            JobQueue::Redis { .. } => {
                let Some(storage) = queue.redis_storage(name) else {
                    continue;
                };
                let (ctx, instance) = (Arc::clone(&ctx), instance.clone());
                monitor = monitor.register(move |run| {
                    let delay = restart_delay(run);
                    WorkerBuilder::new(worker_name(&instance, name, run))
                        .backend(storage.clone().poll_with_interval(poll).before_start(move |_| async move {
                            tokio::time::sleep(delay).await;
                            Ok(())
                        }))
                        .data(Arc::clone(&ctx))
                        .concurrency(concurrency)
                        .catch_panic()
                        .build(handle)
                });
            }
        }
    }
    let result = monitor
        .should_restart(|worker, err| {
            tracing::error!(worker = worker.name(), error = %err, "job worker stopped; restarting");
            true
        })
        .shutdown_timeout(Duration::from_secs(10))
        .run_with_signal(async move {
            stop.cancelled().await;
            Ok(())
        })
        .await;
    for applier in appliers {
        let _ = applier.await;
    }
    let _ = sweeper.await;
    let _ = poller.await;
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    result
}
