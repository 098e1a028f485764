//! Flotilla's two storage engines: SQLite, the embedded default, and
//! PostgreSQL, for several server instances sharing one database.
//!
//! Architecture invariant: this is the only crate that knows SQL. Both
//! engines run the same migrations and the same query text (`shared/`,
//! compiled once per engine); what differs — connection set-up, how a write
//! transaction starts, and the engine-native features later issues add —
//! lives in `sqlite` and `postgres`.

#![warn(unreachable_pub)]

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

/// The connection pool of a store: how many connections it keeps at most
/// (SQLite: readers beside its one writer; PostgreSQL: all, the LISTEN
/// connection not counted) and how long a request waits for one before it
/// fails (a failure the HTTP layer answers 503 with `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: std::time::Duration,
}

impl PoolSettings {
    /// SQLite's default: eight readers.
    pub const SQLITE: PoolSettings = PoolSettings {
        max_connections: 8,
        acquire_timeout: std::time::Duration::from_secs(10),
    };
    /// PostgreSQL's default: sixteen connections per instance (five
    /// instances then fit PostgreSQL's default `max_connections` of 100).
    /// A request waits at most three seconds for one: a fleet whose
    /// requests queue longer is better told to come back (`Retry-After`)
    /// than kept waiting, which only grows the queue.
    pub const POSTGRES: PoolSettings = PoolSettings {
        max_connections: 16,
        acquire_timeout: std::time::Duration::from_secs(3),
    };
}

/// Open the store and bring its schema up to date, with the engine's
/// default pool.
pub async fn open(location: Location<'_>) -> Result<Arc<dyn Store>, MigrationError> {
    open_with(location, None).await
}

/// [`open`] with a pool of its own (`None`: the engine's default).
pub async fn open_with(
    location: Location<'_>,
    pool: Option<PoolSettings>,
) -> Result<Arc<dyn Store>, MigrationError> {
    Ok(match location {
        Location::DataDir(dir) => {
            Arc::new(SqliteStore::open_dir_with(dir, pool.unwrap_or(PoolSettings::SQLITE)).await?)
        }
        Location::Postgres(url) => {
            Arc::new(PgStore::connect_with(url, pool.unwrap_or(PoolSettings::POSTGRES)).await?)
        }
    })
}

/// Connection parameters that carry a credential (libpq's names), masked
/// wherever they appear in a URL's query string.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "sslpassword",
    "passfile_password",
    "sslkey_password",
];

/// A database URL with every credential replaced, for logs and messages:
/// the password in `user:pass@`, and `password`, `sslpassword` (or any
/// parameter whose name contains "password") in the query string. Text
/// that does not parse as a URL is withheld whole if it could hold one.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        let lower = url.to_ascii_lowercase();
        return if lower.contains("password") || lower.contains('@') {
            "(database URL withheld: it may contain a credential)".to_owned()
        } else {
            url.to_owned()
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.contains(&k.as_ref())
                    || k.to_ascii_lowercase().contains("password");
                (
                    k.into_owned(),
                    if secret {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
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

    #[test]
    fn redacts_every_credential_form_libpq_accepts() {
        let redacted = super::redact_url(
            "postgres://h/db?user=fl&password=hunter2&sslmode=require&sslpassword=s3cret&PGPASSWORD=x",
        );
        assert!(!redacted.contains("hunter2"), "{redacted}");
        assert!(!redacted.contains("s3cret"), "{redacted}");
        assert!(!redacted.contains("=x"), "{redacted}");
        assert!(
            redacted.contains("user=fl") && redacted.contains("sslmode=require"),
            "{redacted}"
        );
        let both = super::redact_url("postgresql://u:pw1@h/db?password=pw2");
        assert!(!both.contains("pw1") && !both.contains("pw2"), "{both}");
        // Percent-encoded secrets are masked too, not just decoded.
        let enc = super::redact_url("postgres://h/db?pass%77ord=enc0ded");
        assert!(!enc.contains("enc0ded"), "{enc}");
        assert_eq!(
            super::redact_url("host=h password=pw3"),
            "(database URL withheld: it may contain a credential)"
        );
    }
}
