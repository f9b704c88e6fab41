//! The two migration sets describe the same schema: one set of SQL statements serves both
//! backends, so a table or column present on one side only is a bug waiting for the other
//! profile. Read from the live databases after migrating, not from the migration files.

use std::collections::{BTreeMap, BTreeSet};

use wxpay_recon::config::DatabaseSettings;
use wxpay_recon::storage::Db;

use crate::helpers::PgDatabase;

/// Table -> column -> NOT NULL.
type Schema = BTreeMap<String, BTreeMap<String, bool>>;

/// Tables that are not ours: sqlx's migration ledger and SQLite's own (`sqlite_sequence`).
fn is_ours(table: &str) -> bool {
    table != "_sqlx_migrations" && !table.starts_with("sqlite_") && !table.starts_with("apalis")
}

async fn migrated(url: String) -> Db {
    let db =
        Db::connect(&DatabaseSettings { url, max_connections: 2, acquire_timeout_ms: 10_000 }).await.expect("connect");
    db.migrate().await.expect("migrate");
    db
}

async fn sqlite_schema(db: &Db) -> Schema {
    let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT m.name, p.name, p.type, p.\"notnull\", p.pk
         FROM sqlite_master m JOIN pragma_table_info(m.name) p
         WHERE m.type = 'table'",
    )
    .fetch_all(db.reader())
    .await
    .expect("sqlite schema");
    let mut schema = Schema::new();
    for (table, column, ty, not_null, pk) in rows.into_iter().filter(|r| is_ours(&r.0)) {
        // An `INTEGER PRIMARY KEY` is the rowid: SQLite cannot store NULL in it, though
        // `pragma_table_info` reports it as nullable (any other PRIMARY KEY *can* hold NULL).
        let rowid = pk == 1 && ty.eq_ignore_ascii_case("INTEGER");
        schema.entry(table).or_default().insert(column, not_null == 1 || rowid);
    }
    schema
}

async fn postgres_schema(db: &Db) -> Schema {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.is_nullable::text
         FROM information_schema.columns c
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'",
    )
    .fetch_all(db.reader())
    .await
    .expect("postgres schema");
    let mut schema = Schema::new();
    for (table, column, nullable) in rows.into_iter().filter(|r| is_ours(&r.0)) {
        schema.entry(table).or_default().insert(column, nullable == "NO");
    }
    schema
}

/// Every difference between the two schemas, one line each.
fn differences(sqlite: &Schema, postgres: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    let tables: BTreeSet<&String> = sqlite.keys().chain(postgres.keys()).collect();
    for table in tables {
        let (Some(lite), Some(pg)) = (sqlite.get(table), postgres.get(table)) else {
            let side = if sqlite.contains_key(table) { "SQLite" } else { "PostgreSQL" };
            out.push(format!("table {table}: only on {side}"));
            continue;
        };
        let columns: BTreeSet<&String> = lite.keys().chain(pg.keys()).collect();
        for column in columns {
            match (lite.get(column), pg.get(column)) {
                (Some(_), None) => out.push(format!("column {table}.{column}: only on SQLite")),
                (None, Some(_)) => out.push(format!("column {table}.{column}: only on PostgreSQL")),
                (Some(&a), Some(&b)) if a != b => {
                    let says = |not_null: bool| if not_null { "NOT NULL" } else { "nullable" };
                    out.push(format!("column {table}.{column}: {} on SQLite, {} on PostgreSQL", says(a), says(b)));
                }
                _ => {}
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_migrations_build_the_same_tables_and_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = PgDatabase::create().await;
    let lite = migrated(format!("sqlite://{}", dir.path().join("schema.sqlite").display())).await;
    let post = migrated(pg.url.clone()).await;
    let (sqlite, postgres) = (sqlite_schema(&lite).await, postgres_schema(&post).await);
    lite.close().await;
    post.close().await;

    assert!(sqlite.len() >= 10 && sqlite.contains_key("orders"), "the SQLite schema was read: {sqlite:?}");
    assert!(postgres.len() >= 10 && postgres.contains_key("orders"), "the PostgreSQL schema was read: {postgres:?}");
    let found = differences(&sqlite, &postgres);
    let unexpected: Vec<&String> = found.iter().filter(|d| !KNOWN_NULLABILITY_GAPS.contains(&d.as_str())).collect();
    let fixed: Vec<&&str> = KNOWN_NULLABILITY_GAPS.iter().filter(|k| !found.iter().any(|d| d == *k)).collect();
    assert!(
        unexpected.is_empty() && fixed.is_empty(),
        "migrations/sqlite and migrations/postgres disagree ({} difference(s) not listed in \
         KNOWN_NULLABILITY_GAPS):\n  {}\nlisted gaps that are gone (remove them from the list): {fixed:?}",
        unexpected.len(),
        unexpected.iter().map(|d| d.as_str()).collect::<Vec<_>>().join("\n  "),
    );
}

/// Differences that exist today, listed so that they are visible rather than ignored: a
/// `TEXT PRIMARY KEY` without `NOT NULL` accepts NULL on SQLite (a documented SQLite quirk of
/// rowid tables), while a PostgreSQL primary key is always NOT NULL. Fixing them needs a SQLite
/// migration that rebuilds these tables; until then any *other* difference fails this test, and
/// so does one of these disappearing (then delete it here).
const KNOWN_NULLABILITY_GAPS: &[&str] = &[
    "column bill_runs.bill_date: nullable on SQLite, NOT NULL on PostgreSQL",
    "column leases.name: nullable on SQLite, NOT NULL on PostgreSQL",
    "column products.id: nullable on SQLite, NOT NULL on PostgreSQL",
    "column sessions.token_hash: nullable on SQLite, NOT NULL on PostgreSQL",
];

#[test]
fn differences_name_the_table_the_column_and_the_side() {
    let schema = |tables: &[(&str, &[(&str, bool)])]| -> Schema {
        tables
            .iter()
            .map(|(t, cols)| (t.to_string(), cols.iter().map(|(c, n)| (c.to_string(), *n)).collect()))
            .collect()
    };
    let sqlite = schema(&[("orders", &[("id", true), ("note", false), ("lite_only", true)]), ("extra", &[])]);
    let postgres = schema(&[("orders", &[("id", true), ("note", true), ("pg_only", false)]), ("other", &[])]);
    assert_eq!(
        differences(&sqlite, &postgres),
        vec![
            "table extra: only on SQLite",
            "column orders.lite_only: only on SQLite",
            "column orders.note: nullable on SQLite, NOT NULL on PostgreSQL",
            "column orders.pg_only: only on PostgreSQL",
            "table other: only on PostgreSQL",
        ]
    );
}
