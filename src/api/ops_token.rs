//! `server.ops_token`: lets `/metrics` and `/readyz` be served on the public listener to a
//! scraper that proves it holds the token, for deployments that cannot open the ops port.
//! Anyone else gets 401 there and never reaches the (database-reading) handlers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::Secret;

/// The token, kept as its digest: comparing two fixed-length digests without an early exit
/// reveals neither the token's length nor how much of a guess was right.
#[derive(Debug)]
pub struct OpsToken {
    digest: [u8; 32],
}

impl OpsToken {
    pub fn new(token: &Secret<String>) -> Arc<Self> {
        Arc::new(Self { digest: Sha256::digest(token.expose().trim().as_bytes()).into() })
    }

    fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.iter().zip(self.digest.iter()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
    }
}

/// Passes the request on only with `Authorization: Bearer <server.ops_token>`.
pub async fn require(State(token): State<Arc<OpsToken>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if !given.is_empty() && token.matches(given) {
        next.run(req).await
    } else {
        ApiError::Unauthorized("ops token required".into()).into_response()
    }
}
