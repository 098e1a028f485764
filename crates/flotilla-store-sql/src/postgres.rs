//! The scale-out engine: several server instances share one PostgreSQL
//! database. Migrations take PostgreSQL's advisory lock, so instances that
//! start together migrate once.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::migrate::{MigrationError, MIGRATOR};

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self, MigrationError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(MigrationError::Connect)?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool })
    }

    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> flotilla_store::Result<sqlx::Transaction<'_, sqlx::Postgres>> {
        self.pool.begin().await.map_err(crate::rows::other)
    }
}

impl_store!(PgStore, sqlx::Postgres, "postgres");
