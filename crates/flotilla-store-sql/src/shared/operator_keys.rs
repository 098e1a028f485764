//! Operator API keys.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn create_operator_key(
    s: &Engine,
    key: &OperatorApiKey,
    key_hash: &str,
) -> Result<OperatorApiKey> {
    sqlx::query(
        "INSERT INTO operator_api_keys (id, name, key_hash, hint, active, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&key.id)
    .bind(&key.name)
    .bind(key_hash)
    .bind(&key.hint)
    .bind(key.active)
    .bind(ms(key.created_at))
    .execute(&mut *s.write_conn().await?)
    .await
    .or_conflict(|| format!("an API key named '{}' already exists", key.name))?;
    Ok(key.clone())
}

#[tracing::instrument(skip_all)]
pub(super) async fn find_operator_key_by_hash(
    s: &Engine,
    key_hash: &str,
) -> Result<Option<OperatorApiKey>> {
    Ok(row_by::<OperatorKeyRow, _, _>(
        &s.pool,
        sql!("SELECT {OK_COLS} FROM operator_api_keys WHERE key_hash = $1 AND active"),
        key_hash.to_owned(),
    )
    .await?
    .map(Into::into))
}

#[tracing::instrument(skip_all)]
pub(super) async fn activate_operator_key(s: &Engine, key_hash: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE operator_api_keys SET active = TRUE WHERE key_hash = $1")
        .bind(key_hash)
        .execute(&mut *s.write_conn().await?)
        .await
        .db()?;
    Ok(done.rows_affected() > 0)
}

#[tracing::instrument(skip_all)]
pub(super) async fn active_operator_keys(s: &Engine) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operator_api_keys WHERE active")
        .fetch_one(&s.pool)
        .await
        .db()?;
    Ok(n.max(0) as u64)
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_operator_keys(s: &Engine, page: Page) -> Result<Paged<OperatorApiKey>> {
    let (rows, total) = page_of::<OperatorKeyRow>(
        &s.pool,
        &format!("SELECT {OK_COLS} FROM operator_api_keys ORDER BY created_at, id"),
        "SELECT COUNT(*) FROM operator_api_keys",
        Args::default(),
        page,
    )
    .await?;
    Ok(Paged {
        items: rows.into_iter().map(Into::into).collect(),
        total,
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn revoke_operator_key(s: &Engine, id: &str) -> Result<OperatorApiKey> {
    let done = sqlx::query("UPDATE operator_api_keys SET active = FALSE WHERE id = $1")
        .bind(id)
        .execute(&mut *s.write_conn().await?)
        .await
        .db()?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found(Entity::OperatorKey, id));
    }
    sqlx::query_as::<_, OperatorKeyRow>(sql!(
        "SELECT {OK_COLS} FROM operator_api_keys WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(&s.pool)
    .await
    .map(Into::into)
    .db()
}
