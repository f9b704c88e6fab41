//! wxpay-recon: the backend of a WeChat mini-program shop that keeps money and orders
//! telling the same story.
//!
//! # Layout
//! - `cli`: one file per subcommand (`serve`, `sim`, `demo`, `migrate`, `jobs`, `order`).
//! - `startup`: builds pools, queue, clients, services, router and worker from settings.
//! - `config`: layered settings (defaults, file, `WXPAY_RECON__*`), secrets.
//! - `domain`: money, ids, order states and transitions. Pure.
//! - `wechat`: signing, verification, AES-GCM, keys, wire types, HTTP clients.
//! - `services`: use cases shared by API and worker (login, orders, ingest, apply).
//! - `api`: axum handlers, one module per resource.
//! - `worker`: apalis workers, job kinds, retry policy, sweeper.
//! - `storage`: the database (SQLite or PostgreSQL) behind one type.
//! - `queue`: the job queue (SQLite or Redis) behind one type.
//! - `bill`: WeChat's trade bill file format (streaming reader and writer).
//! - `sim`: the WeChat Pay + login simulator.
//! - `demo`: a scripted mini-program client (demo, tests, benchmarks).
//! - `telemetry`, `clock`, `shutdown`, `vault`: cross-cutting pieces.
//!
//! Dependencies point inward: `cli` -> `startup` -> {`api`, `worker`} -> `services` ->
//! {`domain`, `storage`, `wechat`, `queue`}; `sim` uses only `wechat`'s wire and crypto.

pub mod api;
pub mod bill;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
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
