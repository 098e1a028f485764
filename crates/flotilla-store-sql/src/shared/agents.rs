//! Agents as operators see them: listing, tags, reassignment, unenrolment requests.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn insert_agent(s: &Engine, agent: &NewAgent) -> Result<Agent> {
    let mut tx = s.begin_write().await?;
    insert_agent_row(&mut tx, agent).await?;
    tx.commit().await.db()?;
    agent_after_write(s, &agent.id, agent.enrolled_at).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_agent(s: &Engine, id: &str, now: DateTime<Utc>) -> Result<Agent> {
    agents_query(
        s,
        &AgentFilter::default(),
        Some(id),
        Page {
            page: 1,
            per_page: 1,
        },
        now,
    )
    .await?
    .items
    .pop()
    .ok_or_else(|| StoreError::not_found(Entity::Agent, id))
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_agents(
    s: &Engine,
    filter: &AgentFilter,
    page: Page,
    now: DateTime<Utc>,
) -> Result<Paged<Agent>> {
    agents_query(s, filter, None, page, now).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn policy_rollout(
    s: &Engine,
    policy_id: &str,
    revision: i64,
) -> Result<flotilla_store::Rollout> {
    let (agents, on_revision): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN policy_revision >= $2 THEN 1 ELSE 0 END), 0) \
         FROM agents WHERE policy_id = $1 AND active",
    )
    .bind(policy_id)
    .bind(revision)
    .fetch_one(&s.pool)
    .await
    .db()?;
    Ok(flotilla_store::Rollout {
        agents: agents.max(0) as u64,
        on_revision: on_revision.max(0) as u64,
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn policy_rollout_history(
    s: &Engine,
    policy_id: &str,
    revision: i64,
    since: DateTime<Utc>,
    buckets: u32,
) -> Result<flotilla_store::RolloutHistory> {
    let by_revision: Vec<(Option<i64>, i64)> = sqlx::query_as(
        "SELECT policy_revision, COUNT(*) FROM agents WHERE policy_id = $1 AND active \
         GROUP BY policy_revision ORDER BY policy_revision IS NULL, policy_revision DESC",
    )
    .bind(policy_id)
    .fetch_all(&s.pool)
    .await
    .db()?;
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(policy_revision_at) FROM agents \
         WHERE policy_id = $1 AND active AND policy_revision >= $2",
    )
    .bind(policy_id)
    .bind(revision)
    .fetch_one(&s.pool)
    .await
    .db()?;
    let from = ms(since);
    let mut reached = Vec::new();
    if let Some(last) = last {
        // Equal buckets from `since` through the last arrival; arrivals
        // before `since` (or with no time: set before times were kept)
        // fall in the first.
        let step = ((last - from).max(0) / i64::from(buckets.max(1))).max(1) + 1;
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT x.b, COUNT(*) FROM (SELECT CASE WHEN policy_revision_at IS NULL \
             OR policy_revision_at < $3 THEN 0 ELSE (policy_revision_at - $3) / $4 END AS b \
             FROM agents WHERE policy_id = $1 AND active AND policy_revision >= $2) x \
             GROUP BY x.b ORDER BY x.b",
        )
        .bind(policy_id)
        .bind(revision)
        .bind(from)
        .bind(step)
        .fetch_all(&s.pool)
        .await
        .db()?;
        for (b, n) in rows {
            reached.push((from_ms(from + b * step), n.max(0) as u64));
        }
    }
    Ok(flotilla_store::RolloutHistory {
        by_revision: by_revision
            .into_iter()
            .map(|(r, n)| (r, n.max(0) as u64))
            .collect(),
        reached,
        last_reached: last.map(from_ms),
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn set_agent_tags(
    s: &Engine,
    id: &str,
    tags: &[String],
    now: DateTime<Utc>,
) -> Result<Agent> {
    let mut tx = s.begin_write().await?;
    let done = sqlx::query("UPDATE agents SET updated_at = $2 WHERE id = $1")
        .bind(id)
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .db()?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found(Entity::Agent, id));
    }
    sqlx::query("DELETE FROM agent_tags WHERE agent_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .db()?;
    insert_tags(&mut tx, id, tags).await?;
    tx.commit().await.db()?;
    agent_after_write(s, id, now).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn reassign_agent(
    s: &Engine,
    id: &str,
    policy_id: &str,
    now: DateTime<Utc>,
) -> Result<Agent> {
    let mut tx = s.begin_write().await?;
    if !policy_exists(&mut tx, policy_id).await? {
        return Err(StoreError::not_found(Entity::AgentPolicy, policy_id));
    }
    let done = sqlx::query(
                    "UPDATE agents SET policy_id = $2, policy_revision = NULL, policy_revision_at = NULL, updated_at = $3 WHERE id = $1 AND active",
                )
                .bind(id)
                .bind(policy_id)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .db()?;
    tx.commit().await.db()?;
    if done.rows_affected() == 0 {
        return Err(agent_write_failed(s, id, now).await);
    }
    s.publish(StoreEvent::AgentChanged {
        agent_id: id.to_owned(),
    })
    .await;
    agent_after_write(s, id, now).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn start_agent_unenrollment(
    s: &Engine,
    id: &str,
    action: &NewAction,
    now: DateTime<Utc>,
) -> Result<Agent> {
    let mut tx = s.begin_write().await?;
    let done = sqlx::query(
        "UPDATE agents SET unenrollment_started_at = COALESCE(unenrollment_started_at, $2), \
                     updated_at = $2 WHERE id = $1 AND active",
    )
    .bind(id)
    .bind(ms(now))
    .execute(&mut *tx)
    .await
    .db()?;
    if done.rows_affected() == 0 {
        drop(tx);
        return Err(agent_write_failed(s, id, now).await);
    }
    insert_action(&mut tx, action).await?;
    tx.commit().await.db()?;
    s.publish(StoreEvent::ActionsCreated {
        agent_ids: Some(action.agent_ids.clone()),
    })
    .await;
    agent_after_write(s, id, now).await
}
