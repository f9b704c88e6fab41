//! Integration tests: the real app, the real simulator over HTTP, real databases, real
//! processes. One binary; each test has its own directory, database and queue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abuse_connections;
mod abuse_notify;
mod abuse_quota;
mod admin;
mod certificates;
mod chaos;
mod cluster;
mod crash;
mod e2e;
mod helpers;
mod logs;
mod notify;
mod observability;
mod polling;
mod prometheus;
mod real_wechat;
mod reconcile;
mod refunds;
mod schema;
mod security;
mod startup_errors;
mod storage;
