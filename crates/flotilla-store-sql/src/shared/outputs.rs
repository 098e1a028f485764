//! Outputs: where agents send data; exactly one is the default.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn create_output(
    s: &Engine,
    id: &str,
    new: &NewOutput,
    now: DateTime<Utc>,
) -> Result<Output> {
    let now = ms(now);
    let mut tx = s.begin_write().await?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outputs")
        .fetch_one(&mut *tx)
        .await
        .db()?;
    let is_default = new.is_default || count == 0;
    if is_default {
        sqlx::query("UPDATE outputs SET is_default = FALSE, updated_at = $1 WHERE is_default")
            .bind(now)
            .execute(&mut *tx)
            .await
            .db()?;
    }
    sqlx::query(
        "INSERT INTO outputs (id, name, output_type, hosts, is_default, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(id)
    .bind(&new.name)
    .bind(new.output_type.as_str())
    .bind(to_json(&new.hosts))
    .bind(is_default)
    .bind(now)
    .execute(&mut *tx)
    .await
    .or_conflict(|| {
        format!(
            "an output named '{}' or with id '{id}' already exists",
            new.name
        )
    })?;
    if is_default {
        bump_output_policies(&mut tx, id, true, now).await?;
    }
    let out = fetch_output(&mut tx, id).await?;
    tx.commit().await.db()?;
    s.publish(StoreEvent::PolicyChanged { policy_id: None })
        .await;
    Ok(out)
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_output(s: &Engine, id: &str) -> Result<Output> {
    fetch_output(&mut *s.pool.acquire().await.db()?, id).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn default_output(s: &Engine) -> Result<Option<Output>> {
    sqlx::query_as::<_, OutputRow>(sql!("SELECT {OUTPUT_COLS} FROM outputs WHERE is_default"))
        .fetch_optional(&s.pool)
        .await
        .db()?
        .map(TryInto::try_into)
        .transpose()
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_outputs(s: &Engine, page: Page) -> Result<Paged<Output>> {
    let (rows, total) = page_of::<OutputRow>(
        &s.pool,
        &format!("SELECT {OUTPUT_COLS} FROM outputs ORDER BY created_at, id"),
        "SELECT COUNT(*) FROM outputs",
        Args::default(),
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
pub(super) async fn update_output(
    s: &Engine,
    id: &str,
    update: &OutputUpdate,
    now: DateTime<Utc>,
) -> Result<Output> {
    let now = ms(now);
    let mut tx = s.begin_write().await?;
    // Row lock first, so concurrent updates apply in turn.
    execute_with_id(
        &mut tx,
        "UPDATE outputs SET updated_at = updated_at WHERE id = $1",
        id,
    )
    .await?;
    let current = fetch_output(&mut tx, id).await?;
    if update.is_default == Some(false) && current.is_default {
        return Err(StoreError::Conflict(
            "the default output cannot be unset; make another output the default instead".into(),
        ));
    }
    let becomes_default = update.is_default == Some(true) && !current.is_default;
    if becomes_default {
        // Policies on the old default now send to this output.
        let old: Option<String> = sqlx::query_scalar("SELECT id FROM outputs WHERE is_default")
            .fetch_optional(&mut *tx)
            .await
            .db()?;
        sqlx::query("UPDATE outputs SET is_default = FALSE, updated_at = $1 WHERE is_default")
            .bind(now)
            .execute(&mut *tx)
            .await
            .db()?;
        if let Some(old) = old {
            bump_output_policies(&mut tx, &old, true, now).await?;
        }
    }
    let name = update.name.as_ref().unwrap_or(&current.name);
    let hosts = update.hosts.as_ref().unwrap_or(&current.hosts);
    sqlx::query(
                    "UPDATE outputs SET name = $2, output_type = $3, hosts = $4, is_default = $5, updated_at = $6 \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(name)
                .bind(update.output_type.unwrap_or(current.output_type).as_str())
                .bind(to_json(hosts))
                .bind(current.is_default || becomes_default)
                .bind(now)
                .execute(&mut *tx)
                .await
                .or_conflict(|| format!("an output named '{name}' already exists"))?;
    // Policies naming this output changed too (when it became the
    // default, those on the default were bumped above).
    bump_output_policies(&mut tx, id, current.is_default, now).await?;
    let out = fetch_output(&mut tx, id).await?;
    tx.commit().await.db()?;
    s.publish(StoreEvent::PolicyChanged { policy_id: None })
        .await;
    Ok(out)
}

#[tracing::instrument(skip_all)]
pub(super) async fn delete_output(s: &Engine, id: &str) -> Result<()> {
    let mut tx = s.begin_write().await?;
    // The statement itself checks: on PostgreSQL a concurrent
    // "make default" is re-checked against the row it commits,
    // so a read beforehand could not be trusted.
    let deleted = execute_with_id(
        &mut tx,
        "DELETE FROM outputs WHERE id = $1 AND NOT is_default \
                     AND NOT EXISTS (SELECT 1 FROM agent_policies WHERE output_id = $1)",
        id,
    )
    .await?;
    if deleted == 0 {
        let current = fetch_output(&mut tx, id).await?;
        if current.is_default {
            return Err(StoreError::Conflict(
                "the default output cannot be deleted; make another output the default first"
                    .into(),
            ));
        }
        let users = count(
            &mut tx,
            "SELECT COUNT(*) FROM agent_policies WHERE output_id = $1",
            id,
        )
        .await?;
        return Err(StoreError::Conflict(format!(
            "output '{id}' is used by {users} agent policies"
        )));
    }
    tx.commit().await.db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn set_output_key_credential(
    s: &Engine,
    id: &str,
    sealed: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Output> {
    let now = ms(now);
    let mut tx = s.begin_write().await?;
    let n = sqlx::query("UPDATE outputs SET key_credential = $2, updated_at = $3 WHERE id = $1")
        .bind(id)
        .bind(sealed)
        .bind(now)
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
    if n == 0 {
        return Err(StoreError::not_found(Entity::Output, id));
    }
    let out = fetch_output(&mut tx, id).await?;
    bump_output_policies(&mut tx, id, out.is_default, now).await?;
    tx.commit().await.db()?;
    s.publish(StoreEvent::PolicyChanged { policy_id: None })
        .await;
    Ok(out)
}

#[tracing::instrument(skip_all)]
pub(super) async fn output_key_credential(s: &Engine, id: &str) -> Result<Option<String>> {
    let v: Option<Option<String>> =
        sqlx::query_scalar("SELECT key_credential FROM outputs WHERE id = $1")
            .bind(id)
            .fetch_optional(&s.pool)
            .await
            .db()?;
    Ok(v.flatten())
}

#[tracing::instrument(skip_all)]
pub(super) async fn remote_keys_to_invalidate(
    s: &Engine,
    limit: u32,
) -> Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT id, remote_output FROM api_keys WHERE remote_output IS NOT NULL \
         AND invalidated_at IS NOT NULL AND remote_invalidated_at IS NULL ORDER BY invalidated_at LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .db()
}

#[tracing::instrument(skip_all)]
pub(super) async fn mark_remote_invalidated(
    s: &Engine,
    ids: &[String],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = s.begin_write().await?;
    for id in ids {
        sqlx::query("UPDATE api_keys SET remote_invalidated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .db()?;
    }
    tx.commit().await.db()?;
    Ok(())
}
