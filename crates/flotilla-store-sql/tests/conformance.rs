//! The storage conformance suite, on both engines.

mod sqlite {
    use std::sync::Arc;

    use flotilla_store::Store;
    use flotilla_store_sql::SqliteStore;

    async fn store() -> Option<Arc<dyn Store>> {
        let dir = tempfile::tempdir().unwrap().keep();
        Some(Arc::new(SqliteStore::open_dir(&dir).await.unwrap()))
    }

    flotilla_store::conformance_suite!(store());
}

mod postgres {
    use std::sync::Arc;

    use flotilla_store::Store;
    use flotilla_store_sql::PgStore;

    async fn store() -> Option<Arc<dyn Store>> {
        let cluster = flotilla_testkit::postgres()?;
        let url = cluster.create_database();
        Some(Arc::new(PgStore::connect(&url).await.unwrap()))
    }

    flotilla_store::conformance_suite!(store());
}

/// PostgreSQL only: a race made deterministic by holding a row lock from a
/// third connection, so the interleaving that loses a change is forced.
mod postgres_races {
    use std::time::Duration;

    use chrono::Utc;
    use flotilla_store::conformance::{integration, policy};
    use flotilla_store::Store;
    use flotilla_store_sql::PgStore;
    use sqlx::Connection;

    /// Wait (bounded) until `n` backends wait on a lock.
    async fn lock_waiters(conn: &mut sqlx::PgConnection, n: i64) {
        for _ in 0..400 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            if waiting >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} lock waiters never appeared");
    }

    /// An integration is moved from `f` to `t` while it is deleted: the
    /// delete must bump `t` (where it was when deleted), not `f` (where it
    /// was when a read before the delete saw it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_bumps_the_policy_an_integration_moved_to() {
        let Some(cluster) = flotilla_testkit::postgres() else {
            return;
        };
        let url = cluster.create_database();
        let store = std::sync::Arc::new(PgStore::connect(&url).await.unwrap());
        let now = Utc::now();
        store.create_policy(&policy("f", "f"), now).await.unwrap();
        store.create_policy(&policy("t", "t"), now).await.unwrap();
        flotilla_store::conformance::install_nginx(&*store).await;
        let pp = store
            .create_package_policy(&integration("i", "f"), now)
            .await
            .unwrap();
        let t_before = store.get_policy("t").await.unwrap().revision;

        // Hold policy t's row: the move locks the integration, then waits.
        let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
        sqlx::query("SELECT id FROM agent_policies WHERE id = 't' FOR UPDATE")
            .execute(&mut blocker)
            .await
            .unwrap();
        let (s1, s2) = (store.clone(), store.clone());
        let mut moved = integration("i", "t");
        moved.name = pp.name.clone();
        let mv =
            tokio::spawn(async move { s2.update_package_policy("i", &moved, None, now).await });
        lock_waiters(&mut watcher, 1).await;
        // The delete now waits on the integration's row, which the move holds.
        let delete = tokio::spawn(async move { s1.delete_package_policy("i", now).await });
        lock_waiters(&mut watcher, 2).await;
        sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
        mv.await.unwrap().unwrap();
        delete.await.unwrap().unwrap();
        let t_after = store.get_policy("t").await.unwrap().revision;
        assert_eq!(
            t_after,
            t_before + 2,
            "moved to t (one revision), then deleted from t (another)"
        );
    }
}

/// One store per SQLite directory: a second is refused, and the first
/// closing lets another open it.
#[tokio::test]
async fn a_second_store_on_one_directory_is_refused() {
    use flotilla_store_sql::{MigrationError, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open_dir(dir.path()).await.unwrap();
    let err = SqliteStore::open_dir(dir.path())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, MigrationError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("another flotilla server"), "{err}");
    drop(first);
    // Released on drop. A child process another test forks in this
    // process inherits the descriptor until its exec closes it, so the
    // lock can outlive the drop by that instant: retry briefly.
    let mut tries = 0;
    loop {
        match SqliteStore::open_dir(dir.path()).await {
            Ok(_) => break,
            Err(MigrationError::InUse { .. }) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A database migrated by a newer binary is refused with a clear message.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    use flotilla_store_sql::{MigrationError, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");
    drop(SqliteStore::open_file(&path).await.unwrap());
    let pool = sqlx_pool(&path).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let err = SqliteStore::open_file(&path).await.err().expect("refused");
    assert!(
        matches!(err, MigrationError::SchemaTooNew { found: 99999, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this flotilla binary"),
        "{err}"
    );
}

async fn sqlx_pool(path: &std::path::Path) -> sqlx::SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    sqlx::SqlitePool::connect_with(opts).await.unwrap()
}
