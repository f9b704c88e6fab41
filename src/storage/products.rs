//! `products`: the catalog, seeded from configuration; the only source of prices.

use sqlx::FromRow;

use crate::config::CatalogItem;

use crate::domain::{Fen, Product};

use super::{Db, StorageError};

#[derive(Debug, Clone, FromRow)]
struct ProductRow {
    id: String,
    name: String,
    price_fen: i64,
}

impl Db {
    /// Makes the table match the configured catalog: upserts every item and deactivates
    /// products no longer listed (kept, because old orders reference them).
    pub async fn seed_products(&self, catalog: &[CatalogItem], now_ms: i64) -> Result<(), StorageError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE products SET active = 0, updated_at_ms = $1 WHERE active = 1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        for item in catalog {
            sqlx::query(
                "INSERT INTO products (id, name, price_fen, active, updated_at_ms) VALUES ($1, $2, $3, 1, $4)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_fen = excluded.price_fen,
                     active = 1, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&item.id)
            .bind(&item.name)
            .bind(item.price_fen)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An active product, or `None` if unknown or withdrawn.
    pub async fn active_product(&self, id: &str) -> Result<Option<Product>, StorageError> {
        let row: Option<ProductRow> =
            sqlx::query_as("SELECT id, name, price_fen FROM products WHERE id = $1 AND active = 1")
                .bind(id)
                .fetch_optional(self.reader())
                .await?;
        Ok(row.map(|r| Product { id: r.id, name: r.name, price: Fen(r.price_fen) }))
    }
}
