//! Versioned migrations, run at start.

use sqlx::migrate::{MigrateError, Migrator};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The newest schema version this binary knows.
pub fn latest_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "the database schema is at version {found}, newer than this flotilla binary supports \
         (up to {supported}); run a newer flotilla or restore a matching backup"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error(
        "migration {0} was changed after it was applied; the database does not match this binary"
    )]
    Modified(i64),
    #[error("could not migrate the database: {0}")]
    Failed(#[source] MigrateError),
    #[error("could not open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error(
        "another flotilla server is using {path}; the embedded database serves one server \
         (use PostgreSQL with --database-url for several)"
    )]
    InUse { path: String },
    #[error("could not create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<MigrateError> for MigrationError {
    fn from(e: MigrateError) -> Self {
        match e {
            MigrateError::VersionMissing(found) => MigrationError::SchemaTooNew {
                found,
                supported: latest_schema_version(),
            },
            MigrateError::VersionMismatch(v) => MigrationError::Modified(v),
            other => MigrationError::Failed(other),
        }
    }
}
