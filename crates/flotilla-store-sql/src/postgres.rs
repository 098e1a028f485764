//! The scale-out engine: several server instances share one PostgreSQL
//! database. Migrations take PostgreSQL's advisory lock, so instances that
//! start together migrate once.

use std::time::Duration;

use flotilla_store::StoreEvent;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::broadcast;

use crate::migrate::{MigrationError, MIGRATOR};

/// The channel change events travel on between instances.
const CHANNEL: &str = "flotilla_events";

/// The URL query parameters the driver understands (sqlx's list).
const KNOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The URL without the query parameters the driver does not understand:
/// it would log each one with its value, and some (`sslpassword`) are
/// secrets. Dropped parameters are named in a warning, never their values.
pub(crate) fn known_parameters_only(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.query().is_none() {
        return url.to_owned();
    }
    let (keep, drop): (Vec<_>, Vec<_>) = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .partition(|(k, _)| KNOWN_PARAMETERS.contains(&k.as_str()) || k.starts_with("options["));
    if drop.is_empty() {
        return url.to_owned();
    }
    let names: Vec<&str> = drop.iter().map(|(k, _)| k.as_str()).collect();
    tracing::warn!(parameters = ?names, "database_url parameters not supported by the PostgreSQL driver are ignored");
    if keep.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(keep);
    }
    parsed.to_string()
}

pub struct PgStore {
    pool: PgPool,
    /// Fed by this instance's LISTEN connection, which hears every
    /// instance's NOTIFY (this one's included).
    events: broadcast::Sender<StoreEvent>,
    /// See `Store::set_offline_after`.
    offline_after_ms: std::sync::atomic::AtomicI64,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self, MigrationError> {
        Self::connect_with(url, crate::PoolSettings::POSTGRES).await
    }

    pub async fn connect_with(
        url: &str,
        settings: crate::PoolSettings,
    ) -> Result<Self, MigrationError> {
        let url = known_parameters_only(url);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // No ping before each use: it is a round trip per statement. A
            // connection that died fails its statement instead (a 503 the
            // caller retries) and the pool replaces it.
            .test_before_acquire(false)
            .connect(&url)
            .await
            .map_err(MigrationError::Connect)?;
        MIGRATOR.run(&pool).await?;
        let (events, _) = broadcast::channel(1024);
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(MigrationError::Connect)?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(MigrationError::Connect)?;
        tokio::spawn(relay(listener, events.clone()));
        Ok(PgStore {
            pool,
            events,
            offline_after_ms: std::sync::atomic::AtomicI64::new(
                flotilla_domain::agent::OFFLINE_AFTER_SECS * 1000,
            ),
        })
    }

    /// NOTIFY is a hint: a failure to send is logged, and waiters re-read
    /// on their own timers anyway.
    async fn publish(&self, event: StoreEvent) {
        let payload = serde_json::to_string(&event).expect("events serialise");
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "could not publish a change event");
        }
    }

    /// A connection outside a transaction (one statement, committed on
    /// its own).
    async fn write_conn(
        &self,
    ) -> flotilla_store::Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        use crate::rows::DbResultExt as _;
        self.pool.acquire().await.db()
    }

    async fn begin_write(&self) -> flotilla_store::Result<sqlx::Transaction<'_, sqlx::Postgres>> {
        use crate::rows::DbResultExt as _;
        self.pool.begin().await.db()
    }
}

/// Relay notifications to local subscribers. Notifications sent while the
/// connection was down are lost, so a reconnect tells everyone to re-read.
async fn relay(mut listener: PgListener, events: broadcast::Sender<StoreEvent>) {
    let mut failing = false;
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if std::mem::take(&mut failing) {
                    let _ = events.send(StoreEvent::Resync);
                }
                match serde_json::from_str::<StoreEvent>(n.payload()) {
                    Ok(event) => {
                        let _ = events.send(event);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed change event"),
                }
            }
            // The connection was lost and is re-established on the next
            // call: whatever was sent meanwhile is gone.
            Ok(None) => {
                let _ = events.send(StoreEvent::Resync);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "change-event listener failed; retrying");
                }
                failing = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

// The shared `Store` implementation, compiled for this engine.
pub(crate) type Db = sqlx::Postgres;
pub(crate) type Engine = PgStore;
pub(crate) const ENGINE: &str = "postgres";
/// Claims lock their candidates and skip rows another instance is claiming.
pub(crate) const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
/// Batches lock the rows they change, in the order they are read.
pub(crate) const FOR_UPDATE: &str = " FOR UPDATE";
// Deliberately loaded once per engine (see shared/mod.rs).
#[allow(clippy::duplicate_mod)]
#[path = "shared/mod.rs"]
mod shared;

/// The `n`th bound parameter of a statement whose parameters each appear
/// once, in the order they are bound (`$n`; SQLite's is a plain `?`).
pub(crate) fn seq_param(n: usize) -> String {
    format!("${n}")
}

/// A JSON source's field at a path bound as `{a,b}` (`json_field_path`).
pub(crate) fn json_field_sql(column: &str, param: usize) -> String {
    format!("(({column})::jsonb #>> ${param}::text[])")
}

/// The agent report's host name, for sorting (a constant path, so no
/// bound parameter).
pub(crate) const HOSTNAME_SQL: &str = "((m.local_metadata)::jsonb #>> '{host,hostname}')";

/// Text ordered by code point, as the other engine orders it.
pub(crate) const BINARY_COLLATION: &str = " COLLATE \"C\"";

pub(crate) fn json_field_path(field: &str) -> String {
    let quoted: Vec<String> = field
        .split('.')
        .map(|p| format!("\"{}\"", p.replace(['"', '\\'], "")))
        .collect();
    format!("{{{}}}", quoted.join(","))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_parameters_are_dropped_by_name() {
        let url = super::known_parameters_only(
            "postgres://u@h/db?password=p&sslpassword=secret&sslmode=disable&options[search_path]=x",
        );
        assert!(
            !url.contains("secret") && !url.contains("sslpassword"),
            "{url}"
        );
        assert!(
            url.contains("password=p") && url.contains("sslmode=disable"),
            "{url}"
        );
        assert!(url.contains("search_path"), "{url}");
        assert_eq!(
            super::known_parameters_only("postgres://h/db"),
            "postgres://h/db"
        );
    }
}
