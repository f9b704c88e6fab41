//! Use cases, shared by the API and the worker: login, ordering, notification ingest and
//! apply. They call `storage`, `wechat` and `queue`; they know nothing of axum or apalis.

pub mod apply;
pub mod certificates;
pub mod inbox_signal;
pub mod inbox_writer;
pub mod ingest;
pub mod login;
pub mod operations;
pub mod orders;
pub mod quota;
pub mod reconcile;
pub mod refunds;
pub mod rejection_sampler;
pub mod sync;
