//! The embedded engine: one SQLite file in WAL mode.
//!
//! Writes go through one connection behind a mutex ([`Writer`]), so
//! writers queue in-process instead of failing with `SQLITE_BUSY`; each
//! write transaction still
//! starts with `BEGIN IMMEDIATE` so that another process sharing the file
//! (an operator's tool, a test) cannot cause a read-then-write upgrade
//! failure. Reads use a separate pool and never block on writers (WAL).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::Connection as _;

use crate::migrate::{MigrationError, MIGRATOR};

pub const DATABASE_FILE: &str = "flotilla.db";

pub struct SqliteStore {
    pool: SqlitePool,
    writer: tokio::sync::Mutex<Writer>,
    /// Change events: one process owns the file, so in-process signalling
    /// reaches every waiter.
    events: tokio::sync::broadcast::Sender<flotilla_store::StoreEvent>,
    /// With [`SqliteStore::open_dir`]: an exclusive lock on
    /// `<dir>/flotilla.lock` for the store's life, so a second process on
    /// the same database is refused instead of silently missing this one's
    /// change events (they are in-process).
    _lock: Option<std::fs::File>,
    /// See `Store::set_offline_after`.
    offline_after_ms: std::sync::atomic::AtomicI64,
}

fn default_offline_after() -> std::sync::atomic::AtomicI64 {
    std::sync::atomic::AtomicI64::new(flotilla_domain::agent::OFFLINE_AFTER_SECS * 1000)
}

impl SqliteStore {
    /// Open (creating if needed) `<dir>/flotilla.db` and migrate it.
    /// Refused ([`MigrationError::InUse`]) while another store holds the
    /// directory.
    pub async fn open_dir(dir: &Path) -> Result<Self, MigrationError> {
        Self::open_dir_with(dir, crate::PoolSettings::SQLITE).await
    }

    pub async fn open_dir_with(
        dir: &Path,
        pool: crate::PoolSettings,
    ) -> Result<Self, MigrationError> {
        let io = |source| MigrationError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        create_private_dir(dir).map_err(io)?;
        let lock = lock_dir(dir)?;
        let mut store = Self::open_file_with(&dir.join(DATABASE_FILE), pool).await?;
        store._lock = Some(lock);
        Ok(store)
    }

    pub async fn open_file(path: &Path) -> Result<Self, MigrationError> {
        Self::open_file_with(path, crate::PoolSettings::SQLITE).await
    }

    pub async fn open_file_with(
        path: &Path,
        settings: crate::PoolSettings,
    ) -> Result<Self, MigrationError> {
        // SQLite gives the -wal and -shm files the database file's mode, so
        // a private database file keeps all three private.
        make_private_file(path).map_err(|source| MigrationError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(MigrationError::Connect)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Pages read through a memory map instead of a read(2) each
            // (a 10,000-agent fan-out spent ~5 % of the server's CPU
            // copying pages in the kernel), and a larger page cache per
            // connection (SQLite's default is 2 MiB).
            .pragma("mmap_size", "268435456")
            .pragma("cache_size", "-16384");
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(MigrationError::Connect)?;
        MIGRATOR.run(&mut conn).await?;
        let writer = tokio::sync::Mutex::new(Writer {
            conn,
            in_transaction: false,
        });
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // No ping before each use: on SQLite it is a hand-off to the
            // connection's worker thread and back, as much as the read.
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .map_err(MigrationError::Connect)?;
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(SqliteStore {
            pool,
            writer,
            events,
            _lock: None,
            offline_after_ms: default_offline_after(),
        })
    }

    async fn publish(&self, event: flotilla_store::StoreEvent) {
        let _ = self.events.send(event);
    }

    /// The write connection outside a transaction (one statement,
    /// committed on its own).
    async fn write_conn(&self) -> flotilla_store::Result<WriteTx<'_>> {
        let mut writer = self.writer.lock().await;
        writer.settle().await?;
        Ok(WriteTx { writer })
    }

    async fn begin_write(&self) -> flotilla_store::Result<WriteTx<'_>> {
        use crate::rows::DbResultExt as _;
        let mut writer = self.writer.lock().await;
        writer.settle().await?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut writer.conn)
            .await
            .db()?;
        writer.in_transaction = true;
        Ok(WriteTx { writer })
    }
}

/// The one write connection. A pool of one connection did the same job,
/// but a pool hands a connection back through a task it spawns, which
/// pings the connection first: two trips through a busy runtime between
/// any two writes. Under a fan-out to 10,000 agents that was most of the
/// time each write waited. The mutex is the writer lock; its waiters are
/// served in order.
pub(crate) struct Writer {
    conn: SqliteConnection,
    /// A transaction was begun and neither committed nor rolled back (its
    /// [`WriteTx`] was dropped: an error, or a cancelled request): rolled
    /// back before the connection is used again.
    in_transaction: bool,
}

impl Writer {
    async fn settle(&mut self) -> flotilla_store::Result<()> {
        use crate::rows::DbResultExt as _;
        if self.in_transaction {
            sqlx::query("ROLLBACK").execute(&mut self.conn).await.db()?;
            self.in_transaction = false;
        }
        Ok(())
    }
}

/// A write transaction (or, from `write_conn`, the write connection on its
/// own): the connection, held until dropped. Dropped without
/// [`WriteTx::commit`], the transaction is rolled back by the next writer.
pub(crate) struct WriteTx<'s> {
    writer: tokio::sync::MutexGuard<'s, Writer>,
}

impl WriteTx<'_> {
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::query("COMMIT").execute(&mut self.writer.conn).await?;
        self.writer.in_transaction = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.writer.conn
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.writer.conn
    }
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, MigrationError> {
    let path = dir.join("flotilla.lock");
    let io = |source| MigrationError::DataDir {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(MigrationError::InUse {
            path: dir.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Create `dir` (and missing parents) readable by the owner only (0700).
/// A directory that already exists is left as it is (it may be shared on
/// purpose), with a warning when others can read it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.is_dir() && meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the data directory is accessible to other users; consider chmod 700");
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Make sure the database file and its WAL companions exist with mode
/// 0600, tightening files an older version created more widely.
fn make_private_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::metadata(&file) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

// The shared `Store` implementation, compiled for this engine.
pub(crate) type Db = sqlx::Sqlite;
pub(crate) type Engine = SqliteStore;
pub(crate) const ENGINE: &str = "sqlite";
/// Claims need no row locks: the single writer serialises them.
pub(crate) const SKIP_LOCKED: &str = "";
/// Nor do batches: `BEGIN IMMEDIATE` already holds the only write lock.
pub(crate) const FOR_UPDATE: &str = "";
// Deliberately loaded once per engine (see shared/mod.rs).
#[allow(clippy::duplicate_mod)]
#[path = "shared/mod.rs"]
mod shared;

/// The `n`th bound parameter of a statement whose parameters each appear
/// once, in the order they are bound: a plain `?`. For a numbered one
/// (`$n`) sqlx asks SQLite for each parameter's name, which SQLite finds
/// by a linear scan (and its parser likewise), so a batch statement of P
/// parameters cost O(P²) to prepare and to bind.
pub(crate) fn seq_param(_n: usize) -> &'static str {
    "?"
}

/// A JSON source's field at a path bound as `$.a.b` (`json_field_path`).
pub(crate) fn json_field_sql(column: &str, param: usize) -> String {
    format!("CAST(json_extract({column}, ${param}) AS TEXT)")
}

/// The agent report's host name, for sorting (a constant path, so no
/// bound parameter).
pub(crate) const HOSTNAME_SQL: &str =
    "CAST(json_extract(m.local_metadata, '$.host.hostname') AS TEXT)";

/// Text ordered by code point, as the other engine orders it.
pub(crate) const BINARY_COLLATION: &str = " COLLATE BINARY";

pub(crate) fn json_field_path(field: &str) -> String {
    let quoted: Vec<String> = field
        .split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "")))
        .collect();
    format!("$.{}", quoted.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tables(store: &SqliteStore, name: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *store.write_conn().await.unwrap())
            .await
            .unwrap()
    }

    /// A write transaction dropped without a commit (an error, a cancelled
    /// request) leaves nothing behind, and the next writer starts clean;
    /// one committed stays.
    #[tokio::test]
    async fn a_dropped_write_is_rolled_back_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path()).await.unwrap();
        {
            let mut tx = store.begin_write().await.unwrap();
            sqlx::query("CREATE TABLE dropped (x)")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query("CREATE TABLE kept (x)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(tables(&store, "dropped").await, 0);
        assert_eq!(tables(&store, "kept").await, 1);
        // Cancelled while it waited for the writer: nothing is held.
        let held = store.begin_write().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(10), store.begin_write()).await;
        assert!(waiting.is_err(), "a second writer waits for the first");
        drop(held);
        store.begin_write().await.unwrap().commit().await.unwrap();
    }
}
