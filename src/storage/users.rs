//! `users`: one row per openid. The session_key arrives already encrypted.

use sqlx::FromRow;

use sqlx::AssertSqlSafe;

use crate::domain::User;

use super::{Db, StorageError};

#[derive(Debug, Clone, FromRow)]
struct UserRow {
    id: i64,
    openid: String,
    unionid: Option<String>,
    nickname: Option<String>,
    avatar_url: Option<String>,
    created_at_ms: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            openid: r.openid,
            unionid: r.unionid,
            nickname: r.nickname,
            avatar_url: r.avatar_url,
            created_at_ms: r.created_at_ms,
        }
    }
}

const COLUMNS: &str = "id, openid, unionid, nickname, avatar_url, created_at_ms";

impl Db {
    /// Creates the user on first login, or refreshes its session_key (and unionid if WeChat
    /// now sends one) on later logins.
    pub async fn upsert_user(
        &self,
        openid: &str,
        unionid: Option<&str>,
        session_key_enc: &str,
        now_ms: i64,
    ) -> Result<User, StorageError> {
        let sql = format!(
            "INSERT INTO users (openid, unionid, session_key_enc, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (openid) DO UPDATE SET
                 session_key_enc = excluded.session_key_enc,
                 unionid = COALESCE(excluded.unionid, users.unionid),
                 updated_at_ms = excluded.updated_at_ms
             RETURNING {COLUMNS}"
        );
        let row: UserRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(openid)
            .bind(unionid)
            .bind(session_key_enc)
            .bind(now_ms)
            .fetch_one(self.writer())
            .await?;
        Ok(row.into())
    }

    pub async fn user(&self, id: i64) -> Result<User, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
        let row: UserRow = sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_one(self.reader()).await?;
        Ok(row.into())
    }

    /// The encrypted session_key, for the one place that decrypts user data with it.
    pub async fn user_session_key(&self, id: i64) -> Result<String, StorageError> {
        let (value,): (String,) =
            sqlx::query_as("SELECT session_key_enc FROM users WHERE id = $1").bind(id).fetch_one(self.reader()).await?;
        Ok(value)
    }

    pub async fn update_profile(
        &self,
        id: i64,
        nickname: Option<&str>,
        avatar_url: Option<&str>,
        now_ms: i64,
    ) -> Result<User, StorageError> {
        let sql = format!(
            "UPDATE users SET nickname = $2, avatar_url = $3, updated_at_ms = $4 WHERE id = $1 RETURNING {COLUMNS}"
        );
        let row: UserRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(nickname)
            .bind(avatar_url)
            .bind(now_ms)
            .fetch_one(self.writer())
            .await?;
        Ok(row.into())
    }
}
