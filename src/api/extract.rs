//! Extractors: the bearer-token user (and session), the client's address, and JSON bodies
//! whose rejections use our error shape.

use std::convert::Infallible;
use std::net::IpAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::state::AppState;

/// The authenticated user's id.
#[derive(Debug, Clone, Copy)]
pub struct CurrentUser(pub i64);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).filter(|t| !t.is_empty() && t.len() <= 256).ok_or_else(ApiError::bad_token)?;
        match state.login.authenticate(token).await? {
            Some(user_id) => Ok(CurrentUser(user_id)),
            None => Err(ApiError::bad_token()),
        }
    }
}

/// The session behind the bearer token: its user and the token itself (for logout).
#[derive(Debug, Clone)]
pub struct CurrentSession {
    pub user_id: i64,
    pub token: String,
}

impl FromRequestParts<AppState> for CurrentSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let CurrentUser(user_id) = CurrentUser::from_request_parts(parts, state).await?;
        let token = bearer(parts).ok_or_else(ApiError::bad_token)?.to_owned();
        Ok(CurrentSession { user_id, token })
    }
}

/// The client's address as `observe` worked it out (the trusted proxy's header, else the TCP
/// peer); `None` when unknown (no connection info, as in router tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<ClientIp>().copied().unwrap_or(ClientIp(None)))
    }
}

/// An operator holding `server.admin_token`. Without a configured token every admin route is
/// refused (403): there is no default password.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(expected) = state.admin_token.as_deref() else {
            return Err(ApiError::Forbidden("admin routes are disabled: set server.admin_token".into()));
        };
        let given = bearer(parts).unwrap_or("");
        if !given.is_empty() && same_token(given, expected.expose()) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("admin token required".into()))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Compares the SHA-256 digests of both without an early exit (as `ops_token` does): two
/// fixed-length digests reveal neither the token's length (a byte-wise loop runs as long as the
/// shorter one) nor how much of a guess was right.
fn same_token(given: &str, expected: &str) -> bool {
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let expected: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    given.iter().zip(expected.iter()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// `Json<T>` whose rejection is a 400 `INVALID_REQUEST` naming what is wrong.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::BadRequest(describe(&rejection))),
        }
    }
}

fn describe(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => "Content-Type must be application/json".into(),
        JsonRejection::JsonSyntaxError(e) => format!("malformed JSON: {}", e.body_text()),
        JsonRejection::JsonDataError(e) => format!("invalid body: {}", e.body_text()),
        other => other.body_text(),
    }
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn the_admin_token_must_match_exactly() {
        assert!(same_token("s3cret-admin-token", "s3cret-admin-token"));
        for wrong in ["s3cret-admin-toke", "s3cret-admin-token!", "S3cret-admin-token", "x"] {
            assert!(!same_token(wrong, "s3cret-admin-token"), "{wrong}");
        }
    }
}
