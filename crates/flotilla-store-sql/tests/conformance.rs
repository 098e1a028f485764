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
