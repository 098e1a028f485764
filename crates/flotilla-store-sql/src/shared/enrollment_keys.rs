//! Enrollment API keys (stored as hashes).

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn create_enrollment_key(
    s: &Engine,
    key: &EnrollmentApiKey,
    token_hash: &str,
) -> Result<EnrollmentApiKey> {
    let mut tx = s.begin_write().await?;
    if !policy_exists(&mut tx, &key.policy_id).await? {
        return Err(StoreError::not_found(Entity::AgentPolicy, &key.policy_id));
    }
    sqlx::query(
                    "INSERT INTO enrollment_api_keys (id, name, policy_id, token_hash, hint, active, created_at, \
                     expires_at, max_uses) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&key.id)
                .bind(&key.name)
                .bind(&key.policy_id)
                .bind(token_hash)
                .bind(&key.hint)
                .bind(key.active)
                .bind(ms(key.created_at))
                .bind(key.expiration.map(ms))
                .bind(key.max_uses.map(|m| i64::try_from(m).unwrap_or(i64::MAX)))
                .execute(&mut *tx)
                .await
                .or_conflict(|| format!("enrollment key '{}' already exists", key.id))?;
    tx.commit().await.db()?;
    s.get_enrollment_key(&key.id).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_enrollment_key(s: &Engine, id: &str) -> Result<EnrollmentApiKey> {
    row_by::<EnrollmentKeyRow, _, _>(
        &s.pool,
        sql!("SELECT {EK_COLS} FROM enrollment_api_keys WHERE id = $1"),
        id.to_owned(),
    )
    .await?
    .map(Into::into)
    .ok_or_else(|| StoreError::not_found(Entity::EnrollmentKey, id))
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_enrollment_keys(
    s: &Engine,
    filter: &EnrollmentKeyFilter,
    page: Page,
) -> Result<Paged<EnrollmentApiKey>> {
    const WHERE: &str = "FROM enrollment_api_keys WHERE ($1 IS NULL OR policy_id = $1)";
    let mut args = Args::default();
    add(&mut args, filter.policy_id.clone())?;
    let (rows, total) = page_of::<EnrollmentKeyRow>(
        &s.pool,
        &format!("SELECT {EK_COLS} {WHERE} ORDER BY created_at, id"),
        &format!("SELECT COUNT(*) {WHERE}"),
        args,
        page,
    )
    .await?;
    Ok(Paged {
        items: rows.into_iter().map(Into::into).collect(),
        total,
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn find_enrollment_key_by_hash(
    s: &Engine,
    token_hash: &str,
) -> Result<Option<EnrollmentApiKey>> {
    Ok(row_by::<EnrollmentKeyRow, _, _>(
        &s.pool,
        sql!("SELECT {EK_COLS} FROM enrollment_api_keys WHERE token_hash = $1"),
        token_hash.to_owned(),
    )
    .await?
    .map(Into::into))
}

#[tracing::instrument(skip_all)]
pub(super) async fn revoke_enrollment_key(s: &Engine, id: &str) -> Result<EnrollmentApiKey> {
    let done = sqlx::query("UPDATE enrollment_api_keys SET active = FALSE WHERE id = $1")
        .bind(id)
        .execute(&mut *s.write_conn().await?)
        .await
        .db()?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found(Entity::EnrollmentKey, id));
    }
    s.get_enrollment_key(id).await
}
