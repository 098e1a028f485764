//! Agents' output keys: rotation, and retirement once an agent runs the revision.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn set_output_key(
    s: &Engine,
    agent_id: &str,
    change: &OutputKeyChange,
) -> Result<()> {
    let mut tx = s.begin_write().await?;
    // Compare-and-swap on the current key: of two concurrent
    // rotations one wins, the other learns it lost.
    let done = sqlx::query(
                    "UPDATE agents SET output_key_error = NULL, output_api_key_id = $2, output_api_key_sealed = $3, output_permissions_hash = $4, \
                     output_key_policy_id = $5, output_key_revision = $6 WHERE id = $1 AND active \
                     AND (output_api_key_id = $7 OR (output_api_key_id IS NULL AND $7 IS NULL))",
                )
                .bind(agent_id)
                .bind(&change.key.id)
                .bind(&change.sealed_secret)
                .bind(&change.permissions_hash)
                .bind(&change.policy_id)
                .bind(change.revision)
                .bind(&change.replaces)
                .execute(&mut *tx)
                .await
                .db()?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "agent '{agent_id}' is inactive or its output key changed concurrently"
        )));
    }
    mark_output_keys_retiring(&mut tx, agent_id).await?;
    insert_key(&mut tx, &change.key).await?;
    tx.commit().await.db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn retire_output_key(
    s: &Engine,
    agent_id: &str,
    key_id: &str,
    policy_id: &str,
    revision: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    let mut tx = s.begin_write().await?;
    // Compare-and-swap, like a rotation: only the key it was asked
    // to retire.
    let done = sqlx::query(
                    "UPDATE agents SET output_api_key_id = NULL, output_api_key_sealed = NULL, \
                     output_permissions_hash = NULL, output_key_policy_id = $3, output_key_revision = $4 \
                     WHERE id = $1 AND active AND output_api_key_id = $2 AND policy_id = $3 \
                     AND EXISTS (SELECT 1 FROM agent_policies WHERE id = $3 AND revision = $4)",
                )
                .bind(agent_id)
                .bind(key_id)
                .bind(policy_id)
                .bind(revision)
                .execute(&mut *tx)
                .await
                .db()?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    mark_output_keys_retiring(&mut tx, agent_id).await?;
    // Already running that revision: nothing will come to retire
    // it later, so now.
    let runs: Option<i64> = sqlx::query_scalar("SELECT policy_revision FROM agents WHERE id = $1")
        .bind(agent_id)
        .fetch_one(&mut *tx)
        .await
        .db()?;
    if runs.is_some_and(|r| r >= revision) {
        invalidate_retiring_keys(&mut tx, agent_id, now).await?;
    }
    tx.commit().await.db()?;
    Ok(true)
}

#[tracing::instrument(skip_all)]
pub(super) async fn agents_run_policies(
    s: &Engine,
    runs: &[flotilla_store::RunsPolicy],
    now: DateTime<Utc>,
) -> Result<Vec<Vec<String>>> {
    // Agents' rows are locked in id order: two batches (on PostgreSQL,
    // from two instances) never wait on each other in a cycle.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|a, b| runs[*a].agent_id.cmp(&runs[*b].agent_id));
    let mut out = vec![Vec::new(); runs.len()];
    let mut tx = s.begin_write().await?;
    for i in order {
        let r = &runs[i];
        out[i] = runs_policy(&mut tx, &r.agent_id, &r.policy_id, r.revision, now).await?;
    }
    tx.commit().await.db()?;
    Ok(out)
}

async fn runs_policy(
    tx: &mut Conn,
    agent_id: &str,
    policy_id: &str,
    revision: i64,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    // Serialise with key rotation for this agent.
    lock_agent(&mut *tx, agent_id).await?;
    let Some(agent) = fetch_fleet_agent(&mut *tx, agent_id).await? else {
        return Ok(vec![]);
    };
    if !agent.active || agent.policy_id != policy_id {
        return Ok(vec![]);
    }
    // A revision the policy never had (a restored agent, a forged
    // ack) is not believed.
    let latest: Option<i64> =
        sqlx::query_scalar("SELECT revision FROM agent_policies WHERE id = $1")
            .bind(policy_id)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
    if latest.is_none_or(|latest| revision > latest) {
        return Ok(vec![]);
    }
    if revision > agent.policy_revision.unwrap_or(-1) {
        sqlx::query(
            "UPDATE agents SET policy_revision = $2, updated_at = $3, policy_change_failure = NULL WHERE id = $1",
        )
            .bind(agent_id)
            .bind(revision)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .db()?;
    }
    if agent.output_key_policy_id.as_deref() == Some(policy_id)
        && agent.output_key_revision.is_some_and(|r| revision >= r)
    {
        return invalidate_retiring_keys(&mut *tx, agent_id, now).await;
    }
    Ok(vec![])
}

/// The agent's valid output keys are marked for retirement (still valid).
async fn mark_output_keys_retiring(conn: &mut Conn, agent_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE api_keys SET retire_pending = TRUE \
         WHERE agent_id = $1 AND kind = 'output' AND invalidated_at IS NULL",
    )
    .bind(agent_id)
    .execute(&mut *conn)
    .await
    .db()?;
    Ok(())
}

/// Invalidate the keys marked for retirement; their ids.
async fn invalidate_retiring_keys(
    conn: &mut Conn,
    agent_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "UPDATE api_keys SET invalidated_at = $2 \
         WHERE agent_id = $1 AND retire_pending AND invalidated_at IS NULL RETURNING id",
    )
    .bind(agent_id)
    .bind(ms(now))
    .fetch_all(&mut *conn)
    .await
    .db()
}

#[tracing::instrument(skip_all)]
pub(super) async fn set_output_key_error(s: &Engine, agent_id: &str, error: &str) -> Result<()> {
    let mut tx = s.begin_write().await?;
    sqlx::query("UPDATE agents SET output_key_error = $2 WHERE id = $1")
        .bind(agent_id)
        .bind(error)
        .execute(&mut *tx)
        .await
        .db()?;
    tx.commit().await.db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn record_policy_change_failure(
    s: &Engine,
    agent_id: &str,
    failure: &serde_json::Value,
) -> Result<()> {
    let mut tx = s.begin_write().await?;
    sqlx::query("UPDATE agents SET policy_change_failure = $2 WHERE id = $1")
        .bind(agent_id)
        .bind(failure.to_string())
        .execute(&mut *tx)
        .await
        .db()?;
    tx.commit().await.db()?;
    Ok(())
}
