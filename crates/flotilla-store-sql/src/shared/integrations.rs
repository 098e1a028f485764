//! Integrations (package policies) on agent policies.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn create_package_policy(
    s: &Engine,
    new: &NewPackagePolicy,
    now: DateTime<Utc>,
) -> Result<PackagePolicy> {
    let now = ms(now);
    let mut tx = s.begin_write().await?;
    if !policy_exists(&mut tx, &new.policy_id).await? {
        return Err(StoreError::not_found(Entity::AgentPolicy, &new.policy_id));
    }
    super::packages::lock_package(&mut tx, &new.package.name, &new.package.version).await?;
    write_package_policy(&mut tx, true, &new.id, new, now).await?;
    super::packages::write_secrets(&mut tx, &new.id, new).await?;
    bump_policy(&mut tx, &new.policy_id, now).await?;
    let pp = fetch_package_policy(&mut tx, &new.id).await?;
    tx.commit().await.db()?;
    s.publish(StoreEvent::PolicyChanged {
        policy_id: Some(new.policy_id.clone()),
    })
    .await;
    Ok(pp)
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_package_policy(s: &Engine, id: &str) -> Result<PackagePolicy> {
    fetch_package_policy(&mut *s.pool.acquire().await.db()?, id).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_package_policies(
    s: &Engine,
    filter: &PackagePolicyFilter,
    page: Page,
) -> Result<Paged<PackagePolicy>> {
    const WHERE: &str = "FROM package_policies WHERE ($1 IS NULL OR policy_id = $1) \
                         AND ($2 IS NULL OR package_name = $2)";
    let mut args = Args::default();
    add(&mut args, filter.policy_id.clone())?;
    add(&mut args, filter.package_name.clone())?;
    let (rows, total) = page_of::<PackagePolicyRow>(
        &s.pool,
        &format!("SELECT {PP_COLS} {WHERE} ORDER BY created_at, id"),
        &format!("SELECT COUNT(*) {WHERE}"),
        args,
        page,
    )
    .await?;
    Ok(Paged {
        items: rows
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<_>>()?,
        total,
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn policy_integrations(s: &Engine, policy_id: &str) -> Result<Vec<PackagePolicy>> {
    let rows: Vec<PackagePolicyRow> = sqlx::query_as(sql!(
        "SELECT {PP_COLS} FROM package_policies WHERE policy_id = $1 ORDER BY created_at, id"
    ))
    .bind(policy_id)
    .fetch_all(&s.pool)
    .await
    .db()?;
    rows.into_iter().map(TryInto::try_into).collect()
}

#[tracing::instrument(skip_all)]
pub(super) async fn update_package_policy(
    s: &Engine,
    id: &str,
    new: &NewPackagePolicy,
    expected: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<PackagePolicy> {
    let now = ms(now);
    let mut tx = s.begin_write().await?;
    execute_with_id(
        &mut tx,
        "UPDATE package_policies SET updated_at = updated_at WHERE id = $1",
        id,
    )
    .await?;
    let old = fetch_package_policy(&mut tx, id).await?;
    if expected.is_some_and(|e| ms(e) != ms(old.updated_at)) {
        return Err(StoreError::Conflict(format!(
            "integration '{id}' changed concurrently; read it again and retry"
        )));
    }
    if old.policy_id != new.policy_id && !policy_exists(&mut tx, &new.policy_id).await? {
        return Err(StoreError::not_found(Entity::AgentPolicy, &new.policy_id));
    }
    super::packages::lock_package(&mut tx, &new.package.name, &new.package.version).await?;
    write_package_policy(&mut tx, false, id, new, now).await?;
    super::packages::write_secrets(&mut tx, id, new).await?;
    bump_policy(&mut tx, &old.policy_id, now).await?;
    if old.policy_id != new.policy_id {
        bump_policy(&mut tx, &new.policy_id, now).await?;
    }
    let pp = fetch_package_policy(&mut tx, id).await?;
    tx.commit().await.db()?;
    s.publish(StoreEvent::PolicyChanged {
        policy_id: Some(old.policy_id.clone()),
    })
    .await;
    if old.policy_id != new.policy_id {
        s.publish(StoreEvent::PolicyChanged {
            policy_id: Some(new.policy_id.clone()),
        })
        .await;
    }
    Ok(pp)
}

#[tracing::instrument(skip_all)]
pub(super) async fn delete_package_policy(s: &Engine, id: &str, now: DateTime<Utc>) -> Result<()> {
    let now = ms(now);
    let mut tx = s.begin_write().await?;
    // The policy it was on when deleted, not when read: a
    // concurrent move to another policy must bump that one.
    let policy_id: Option<String> =
        sqlx::query_scalar("DELETE FROM package_policies WHERE id = $1 RETURNING policy_id")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
    let Some(policy_id) = policy_id else {
        return Err(StoreError::not_found(Entity::Integration, id));
    };
    bump_policy(&mut tx, &policy_id, now).await?;
    tx.commit().await.db()?;
    s.publish(StoreEvent::PolicyChanged {
        policy_id: Some(policy_id),
    })
    .await;
    Ok(())
}
