//! A handle whose statements the database itself stops after a deadline.
//!
//! A `tokio::time::timeout` around a query only stops *our* wait: PostgreSQL keeps scanning and
//! holds the connection and its snapshot. Background readers that must never become a load
//! (the gauge refresher) use this handle instead: its own small pool, on which every session has
//! `statement_timeout` set, so PostgreSQL cancels the statement itself.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AssertSqlSafe, Executor};

use super::{Db, Dialect};

/// Connections of a bounded handle: its readers run one query at a time.
const CONNECTIONS: u32 = 1;

impl Db {
    /// This database with every statement stopped by the server after `timeout` (PostgreSQL:
    /// a separate one-connection pool, opened lazily; SQLite: the same handle, since its
    /// readers run in-process on a local file and cannot hold a server-side query).
    pub fn with_statement_timeout(&self, timeout: Duration) -> Db {
        match self.dialect {
            Dialect::Sqlite => self.clone(),
            Dialect::Postgres => {
                let ms = timeout.as_millis().max(1);
                let options = (*self.write.connect_options()).clone();
                let pool = AnyPoolOptions::new()
                    .max_connections(CONNECTIONS)
                    .acquire_timeout(timeout)
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            conn.execute(AssertSqlSafe(format!("SET statement_timeout = {ms}"))).await?;
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options);
                Db { write: pool.clone(), read: pool, dialect: Dialect::Postgres }
            }
        }
    }
}
