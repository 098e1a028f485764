//! Installed packages and the sealed secrets of integrations.

use super::prelude::*;
use flotilla_store::{Installed, StoredPackage};

const PKG_COLS: &str = "name, version, title, package_type, source, digest, files, installed_at";

#[tracing::instrument(skip_all, fields(name = %p.name, version = %p.version))]
pub(super) async fn install_package(s: &Engine, p: &StoredPackage) -> Result<Installed> {
    let mut tx = s.begin_write().await?;
    // Instances installing the same folder at once: one inserts, the
    // others find it there.
    let inserted = sqlx::query(
        "INSERT INTO packages (name, version, title, package_type, source, digest, files, installed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name, version) DO NOTHING",
    )
    .bind(&p.name)
    .bind(&p.version)
    .bind(&p.title)
    .bind(&p.package_type)
    .bind(&p.source)
    .bind(&p.digest)
    .bind(to_json(&p.files))
    .bind(ms(p.installed_at))
    .execute(&mut *tx)
    .await
    .db()?
    .rows_affected();
    if inserted == 1 {
        tx.commit().await.db()?;
        return Ok(Installed::New);
    }
    let digest: Option<String> =
        sqlx::query_scalar("SELECT digest FROM packages WHERE name = $1 AND version = $2")
            .bind(&p.name)
            .bind(&p.version)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
    match digest {
        Some(d) if d == p.digest => Ok(Installed::AlreadyInstalled),
        Some(_) => Err(StoreError::Conflict(format!(
            "package {} {} is installed already with other content; a version never changes: \
             give the new content a new version",
            p.name, p.version
        ))),
        None => Err(StoreError::Busy),
    }
}

#[tracing::instrument(skip_all)]
pub(super) async fn package_digest(
    s: &Engine,
    name: &str,
    version: &str,
) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT digest FROM packages WHERE name = $1 AND version = $2")
        .bind(name)
        .bind(version)
        .fetch_optional(&s.pool)
        .await
        .db()
}

/// Take the package version's row lock (a no-op UPDATE, portable): an
/// integration being saved with it and its removal never interleave.
pub(crate) async fn lock_package(conn: &mut Conn, name: &str, version: &str) -> Result<()> {
    let n = sqlx::query(
        "UPDATE packages SET installed_at = installed_at WHERE name = $1 AND version = $2",
    )
    .bind(name)
    .bind(version)
    .execute(&mut *conn)
    .await
    .db()?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::not_found(
            Entity::Package,
            &format!("{name}-{version}"),
        ));
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_package(s: &Engine, name: &str, version: &str) -> Result<StoredPackage> {
    let row: Option<PackageRow> = sqlx::query_as(sql!(
        "SELECT {PKG_COLS} FROM packages WHERE name = $1 AND version = $2"
    ))
    .bind(name)
    .bind(version)
    .fetch_optional(&s.pool)
    .await
    .db()?;
    row.ok_or_else(|| StoreError::not_found(Entity::Package, &format!("{name}-{version}")))?
        .try_into()
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_packages(s: &Engine) -> Result<Vec<StoredPackage>> {
    let rows: Vec<PackageRow> = sqlx::query_as(
        "SELECT name, version, title, package_type, source, digest, '{}' AS files, installed_at \
         FROM packages ORDER BY name, version",
    )
    .fetch_all(&s.pool)
    .await
    .db()?;
    rows.into_iter().map(TryInto::try_into).collect()
}

#[tracing::instrument(skip_all)]
pub(super) async fn delete_package(s: &Engine, name: &str, version: &str) -> Result<()> {
    let mut tx = s.begin_write().await?;
    // The lock first, the count in its own statement after it: under
    // PostgreSQL's READ COMMITTED that count sees an integration a
    // concurrent save committed while we waited.
    lock_package(&mut tx, name, version).await?;
    let used: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM package_policies WHERE package_name = $1 AND package_version = $2",
    )
    .bind(name)
    .bind(version)
    .fetch_one(&mut *tx)
    .await
    .db()?;
    if used > 0 {
        return Err(StoreError::InUse(format!(
            "package {name} {version} is used by {used} integration(s); delete or upgrade them first"
        )));
    }
    sqlx::query("DELETE FROM packages WHERE name = $1 AND version = $2")
        .bind(name)
        .bind(version)
        .execute(&mut *tx)
        .await
        .db()?;
    tx.commit().await.db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn policy_secrets(
    s: &Engine,
    policy_id: &str,
) -> Result<Vec<flotilla_store::SealedSecret>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT s.package_policy_id, s.id, s.sealed FROM package_policy_secrets s \
         JOIN package_policies p ON p.id = s.package_policy_id WHERE p.policy_id = $1 ORDER BY s.id",
    )
    .bind(policy_id)
    .fetch_all(&s.pool)
    .await
    .db()?;
    Ok(rows
        .into_iter()
        .map(
            |(package_policy_id, id, sealed)| flotilla_store::SealedSecret {
                package_policy_id,
                id,
                sealed,
            },
        )
        .collect())
}

/// Store the integration's new secrets and drop those it no longer references.
pub(crate) async fn write_secrets(conn: &mut Conn, id: &str, new: &NewPackagePolicy) -> Result<()> {
    for secret in &new.new_secrets {
        sqlx::query("INSERT INTO package_policy_secrets (id, package_policy_id, sealed) VALUES ($1, $2, $3)")
            .bind(&secret.id)
            .bind(id)
            .bind(&secret.sealed)
            .execute(&mut *conn)
            .await
            .or_conflict(|| format!("secret '{}' exists already", secret.id))?;
    }
    let keep: Vec<&str> = new
        .secret_references
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    let existing: Vec<String> =
        sqlx::query_scalar("SELECT id FROM package_policy_secrets WHERE package_policy_id = $1")
            .bind(id)
            .fetch_all(&mut *conn)
            .await
            .db()?;
    for old in existing.iter().filter(|e| !keep.contains(&e.as_str())) {
        sqlx::query("DELETE FROM package_policy_secrets WHERE id = $1")
            .bind(old)
            .execute(&mut *conn)
            .await
            .db()?;
    }
    Ok(())
}
