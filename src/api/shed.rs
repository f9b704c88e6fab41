//! Load shedding: a cap on requests handled at once, answered `503` + `Retry-After` in our error
//! shape the moment it is reached. Queueing instead would only turn an overload into timeouts
//! for everyone; an immediate 503 tells a client (and the proxy) to come back.
//!
//! Each share is its own semaphore: the notify route has one, the rest of the API another, so a
//! flood of API calls cannot take the slots WeChat's notifications need (and the reverse).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::telemetry::metrics::Metrics;

/// One share of the in-flight capacity.
#[derive(Debug)]
pub struct Share {
    /// `api` or `notify`: the label of `wxpay_http_requests_shed_total`.
    name: &'static str,
    permits: Arc<Semaphore>,
    retry_after: HeaderValue,
    metrics: Metrics,
}

impl Share {
    pub fn new(name: &'static str, max_in_flight: usize, retry_after_secs: u32, metrics: Metrics) -> Arc<Self> {
        let _ = metrics.http_shed.with_label_values(&[name]);
        Arc::new(Self {
            name,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            retry_after: HeaderValue::from(retry_after_secs),
            metrics,
        })
    }
}

/// Runs the request if the share has room, else answers 503 at once.
pub async fn limit(State(share): State<Arc<Share>>, req: Request, next: Next) -> Response {
    match Arc::clone(&share.permits).try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(req).await;
            drop(permit);
            response
        }
        Err(_) => {
            share.metrics.http_shed.with_label_values(&[share.name]).inc();
            let mut response = ApiError::Unavailable("server busy, retry shortly".into()).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, share.retry_after.clone());
            response
        }
    }
}
