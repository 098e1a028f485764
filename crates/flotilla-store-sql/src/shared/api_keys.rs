//! The key service's records.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn insert_api_key(s: &Engine, key: &ApiKeyRecord) -> Result<()> {
    let mut tx = s.begin_write().await?;
    insert_key(&mut tx, key).await?;
    tx.commit().await.db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_api_key(s: &Engine, id: &str) -> Result<Option<ApiKeyRecord>> {
    row_by::<ApiKeyRow, _, _>(
        &s.pool,
        sql!("SELECT {API_KEY_COLS} FROM api_keys WHERE id = $1"),
        id.to_owned(),
    )
    .await?
    .map(TryInto::try_into)
    .transpose()
}

#[tracing::instrument(skip_all)]
pub(super) async fn invalidate_api_keys(
    s: &Engine,
    ids: &[String],
    now: DateTime<Utc>,
) -> Result<u64> {
    let mut tx = s.begin_write().await?;
    let mut n = 0;
    for id in ids {
        n += sqlx::query(
            "UPDATE api_keys SET invalidated_at = $2 WHERE id = $1 AND invalidated_at IS NULL",
        )
        .bind(id)
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
    }
    tx.commit().await.db()?;
    Ok(n)
}
