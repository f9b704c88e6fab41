//! Logs and metrics. The subscriber is built once, here; metric handles live in `metrics`.

pub mod metrics;
