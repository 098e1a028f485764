//! Flotilla's two storage engines: SQLite, the embedded default, and
//! PostgreSQL, for several server instances sharing one database.
//!
//! Architecture invariant: this is the only crate that knows SQL. Both
//! engines run the same migrations and the same query text (see `shared`);
//! what differs — connection set-up, how a write transaction starts, and the
//! engine-native features later issues add — lives in `sqlite` and
//! `postgres`.

#[macro_use]
mod shared;
mod migrate;
pub mod postgres;
mod rows;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

use flotilla_store::Store;

pub use migrate::{latest_schema_version, MigrationError};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Where a store lives.
#[derive(Clone)]
pub enum Location<'a> {
    /// A SQLite database file inside this directory (created if missing).
    DataDir(&'a Path),
    /// A `postgres://` URL.
    Postgres(&'a str),
}

impl std::fmt::Debug for Location<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::DataDir(p) => write!(f, "sqlite in {}", p.display()),
            Location::Postgres(url) => write!(f, "postgres at {}", redact_url(url)),
        }
    }
}

/// Open the store and bring its schema up to date.
pub async fn open(location: Location<'_>) -> Result<Arc<dyn Store>, MigrationError> {
    Ok(match location {
        Location::DataDir(dir) => Arc::new(SqliteStore::open_dir(dir).await?),
        Location::Postgres(url) => Arc::new(PgStore::connect(url).await?),
    })
}

/// A database URL with its password replaced, for logs and messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact_url("postgres://h/db"), "postgres://h/db");
    }
}
