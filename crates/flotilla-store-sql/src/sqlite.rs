//! The embedded engine: one SQLite file in WAL mode.
//!
//! Writes go through a single-connection pool, so writers queue in-process
//! instead of failing with `SQLITE_BUSY`; each write transaction still
//! starts with `BEGIN IMMEDIATE` so that another process sharing the file
//! (an operator's tool, a test) cannot cause a read-then-write upgrade
//! failure. Reads use a separate pool and never block on writers (WAL).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::migrate::{MigrationError, MIGRATOR};

pub const DATABASE_FILE: &str = "flotilla.db";

pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    /// Change events: one process owns the file, so in-process signalling
    /// reaches every waiter.
    events: tokio::sync::broadcast::Sender<flotilla_store::StoreEvent>,
}

impl SqliteStore {
    /// Open (creating if needed) `<dir>/flotilla.db` and migrate it.
    pub async fn open_dir(dir: &Path) -> Result<Self, MigrationError> {
        std::fs::create_dir_all(dir).map_err(|source| MigrationError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        Self::open_file(&dir.join(DATABASE_FILE)).await
    }

    pub async fn open_file(path: &Path) -> Result<Self, MigrationError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(MigrationError::Connect)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(MigrationError::Connect)?;
        MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.read_only(true))
            .await
            .map_err(MigrationError::Connect)?;
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(SqliteStore {
            pool,
            writer,
            events,
        })
    }

    async fn publish(&self, event: flotilla_store::StoreEvent) {
        let _ = self.events.send(event);
    }

    fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

    async fn begin_write(&self) -> flotilla_store::Result<sqlx::Transaction<'_, sqlx::Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(crate::rows::other)
    }
}

impl_store!(SqliteStore, sqlx::Sqlite, "sqlite");
