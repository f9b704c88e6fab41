//! `POST /api/login`, `POST /api/logout`, `GET /api/me`, `PUT /api/me/profile`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, response::IntoResponse};
use serde::{Deserialize, Serialize};

use crate::domain::User;
use crate::domain::time::from_ms;
use crate::services::login::ProfileError;

use super::error::ApiError;
use super::extract::{ApiJson, ClientIp, CurrentSession, CurrentUser};
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/me/profile", put(update_profile))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    code: String,
}

#[derive(Debug, Serialize)]
struct LoginResponse {
    token: String,
    expires_at: String,
    user: UserView,
}

/// What a client may see of a user: never openid's session_key, never the unionid.
#[derive(Debug, Serialize)]
pub struct UserView {
    id: i64,
    nickname: Option<String>,
    avatar_url: Option<String>,
    created_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            nickname: u.nickname,
            avatar_url: u.avatar_url,
            created_at: from_ms(u.created_at_ms).to_rfc3339(),
        }
    }
}

async fn login(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let session = state.login.login(&body.code, client).await?;
    Ok(Json(LoginResponse {
        token: session.token.expose().clone(),
        expires_at: session.expires_at.to_rfc3339(),
        user: session.user.into(),
    }))
}

/// Revokes the presented token: from now on it is refused (401) like an unknown one.
async fn logout(State(state): State<AppState>, session: CurrentSession) -> Result<StatusCode, ApiError> {
    state.login.logout(&session.token).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(state): State<AppState>, CurrentUser(user_id): CurrentUser) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.login.user(user_id).await?.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileRequest {
    nickname: Option<String>,
    avatar_url: Option<String>,
}

async fn update_profile(
    State(state): State<AppState>,
    CurrentUser(user_id): CurrentUser,
    ApiJson(body): ApiJson<ProfileRequest>,
) -> Result<Json<UserView>, ApiError> {
    let user = state.login.update_profile(user_id, body.nickname.as_deref(), body.avatar_url.as_deref()).await?;
    Ok(Json(user.into()))
}

impl From<ProfileError> for ApiError {
    fn from(err: ProfileError) -> Self {
        match err {
            ProfileError::Storage(e) => e.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}
