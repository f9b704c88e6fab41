//! wxpay-recon: the backend of a WeChat mini-program shop that keeps money and orders
//! telling the same story.
//!
//! # Layout
//! - `cli`: one file per subcommand (`serve`, `sim`, `demo`, `migrate`, `reconcile`, `bill`,
//!   `jobs`, `order`).
//! - `startup`: builds the services, routers and worker of a process and binds its two
//!   listeners (public: API, notify, `/healthz`; ops: `/healthz`, `/readyz`, `/metrics`).
//! - `deps`: the one dependency builder (database, queue, clock, metrics, WeChat client with
//!   the shared rate limit) used by `startup`, every CLI command and the benches.
//! - `config`: layered settings (defaults, file, `WXPAY_RECON__*`), secrets. A leaf.
//! - `domain`: the common language: money, identifiers, orders and refunds with their state
//!   machines, what WeChat reports, discrepancy classes, anomaly and job kinds. Pure; a leaf.
//! - `wechat`: signing, verification, AES-GCM, keys, wire types, HTTP clients (behind one call
//!   budget split by priority, `wechat::ratelimit`), and
//!   `wechat::convert`, the one place wire values (and bill rows) become domain values.
//! - `services`: use cases shared by API and worker (login, orders, ingest, apply, sync,
//!   refunds, reconcile, and the per-client quotas). The one applier takes a `PaymentReport`
//!   from every source.
//! - `api`: axum handlers, one module per resource; each calls services and answers DTOs. Also
//!   the HTTP edge an internet-facing listener needs: our accept loop (`serve`, with the
//!   connection cap in `connections`), bodies read under a deadline (`body`), load shedding
//!   (`shed`) and request observation (`observe`).
//! - `worker`: inbox batch appliers, apalis workers, job kinds, retry policy, sweeper, poller,
//!   scheduler.
//! - `storage`: the database (SQLite or PostgreSQL) behind one type; the other conversion
//!   edge (private row structs in, domain types out).
//! - `queue`: the job queue (SQLite or Redis) behind one type.
//! - `bill`: WeChat's trade bill file format (streaming reader and writer). A leaf.
//! - `sim`: the WeChat Pay + login simulator.
//! - `demo`: a scripted mini-program client (demo, tests, benchmarks).
//! - `telemetry`, `clock`, `shutdown`, `vault`: cross-cutting pieces (`telemetry` a leaf
//!   that may name domain values).
//!
//! Dependencies point inward: `cli` -> `startup` -> {`api`, `worker`} -> `services` ->
//! {`domain`, `storage`, `wechat`, `queue`}; `deps` (used by `startup` and `cli`) builds the
//! shared pieces and the services every role needs; `sim` uses `wechat`'s wire and crypto and
//! its chaos knobs from `config`.

pub mod api;
pub mod bill;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod deps;
pub mod domain;
/// Fuzz target bodies (`fuzz/`), replayed by the stable suite; see the module.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
#[allow(clippy::expect_used, reason = "fixed test keys; a fuzz harness reports a failure by panicking")]
pub mod fuzzing;
pub mod queue;
pub mod services;
pub mod shutdown;
pub mod sim;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod vault;
pub mod wechat;
pub mod worker;
