//! wxpay-recon: the backend of a WeChat mini-program shop that keeps money and orders
//! telling the same story.
//!
//! # Layout
//! - `config`: layered settings (defaults, file, `WXPAY_RECON__*`), secrets.
//! - `domain`: money, ids, order states and transitions. Pure.
//! - `wechat`: signing, verification, AES-GCM, keys, wire types, HTTP clients.
//! - `storage`: the database (SQLite or PostgreSQL) behind one type.
//! - `queue`: the job queue (SQLite or Redis) behind one type.
//! - `telemetry`: tracing subscriber and Prometheus metrics.
//! - `clock`: the one source of "now".

pub mod clock;
pub mod config;
pub mod domain;
pub mod queue;
pub mod storage;
pub mod telemetry;
pub mod wechat;
