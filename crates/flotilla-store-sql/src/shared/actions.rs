//! Actions for agents: delivery, confirmation, acknowledgement.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn create_action(s: &Engine, action: &NewAction) -> Result<Action> {
    let mut tx = s.begin_write().await?;
    insert_action(&mut tx, action).await?;
    tx.commit().await.db()?;
    // NOTIFY payloads are small; many targets wake everyone instead.
    let agent_ids = (action.agent_ids.len() <= 50).then(|| action.agent_ids.clone());
    s.publish(StoreEvent::ActionsCreated { agent_ids }).await;
    Ok(Action {
        id: action.id.clone(),
        action_type: action.action_type,
        data: action.data.clone(),
        created_at: action.created_at,
        expiration: action.expiration,
        agents: action.agent_ids.clone(),
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn pending_actions(
    s: &Engine,
    agent_id: &str,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<Action>> {
    let rows: Vec<ActionRow> = sqlx::query_as(
        "SELECT a.id, a.action_type, a.data, a.created_at, a.expiration \
                     FROM action_targets t JOIN actions a ON a.id = t.action_id \
                     WHERE t.agent_id = $1 AND NOT t.confirmed AND t.acked_at IS NULL \
                       AND (a.expiration IS NULL OR a.expiration > $2) \
                     ORDER BY a.created_at, a.id LIMIT $3",
    )
    .bind(agent_id)
    .bind(ms(now))
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .db()?;
    rows.into_iter()
        .map(|r| r.into_action(vec![agent_id.to_owned()]))
        .collect()
}

/// The policy's revision beside the pending actions: a one-row select
/// joined to both, so no action and no policy still give one row.
#[tracing::instrument(skip_all)]
pub(super) async fn checkin_reads(
    s: &Engine,
    agent_id: &str,
    policy_id: &str,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<(Option<i64>, Vec<Action>)> {
    let rows: Vec<CheckinReadRow> = sqlx::query_as(
        "SELECT p.revision AS policy_revision, q.id, q.action_type, q.data, q.created_at, q.expiration \
         FROM (SELECT 1 AS one) AS o \
         LEFT JOIN agent_policies p ON p.id = $1 \
         LEFT JOIN (SELECT a.id, a.action_type, a.data, a.created_at, a.expiration \
                    FROM action_targets t JOIN actions a ON a.id = t.action_id \
                    WHERE t.agent_id = $2 AND NOT t.confirmed AND t.acked_at IS NULL \
                      AND (a.expiration IS NULL OR a.expiration > $3) \
                    ORDER BY a.created_at, a.id LIMIT $4) AS q ON 1 = 1 \
         ORDER BY q.created_at, q.id",
    )
    .bind(policy_id)
    .bind(agent_id)
    .bind(ms(now))
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .db()?;
    let revision = rows.first().and_then(|r| r.policy_revision);
    let actions = rows
        .into_iter()
        .filter_map(CheckinReadRow::action)
        .map(|r| r.into_action(vec![agent_id.to_owned()]))
        .collect::<Result<Vec<_>>>()?;
    Ok((revision, actions))
}

#[tracing::instrument(skip_all)]
pub(super) async fn mark_delivered(
    s: &Engine,
    agent_id: &str,
    action_ids: &[String],
    token: &str,
) -> Result<()> {
    let mut tx = s.begin_write().await?;
    for id in action_ids {
        sqlx::query(
            "UPDATE action_targets SET delivery_token = $3 WHERE agent_id = $1 AND action_id = $2",
        )
        .bind(agent_id)
        .bind(id)
        .bind(token)
        .execute(&mut *tx)
        .await
        .db()?;
    }
    tx.commit().await.db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn confirm_delivery(s: &Engine, agent_id: &str, token: &str) -> Result<()> {
    sqlx::query(
        "UPDATE action_targets SET confirmed = TRUE \
                     WHERE agent_id = $1 AND delivery_token = $2 AND NOT confirmed",
    )
    .bind(agent_id)
    .bind(token)
    .execute(&mut *s.write_conn().await?)
    .await
    .db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn agent_actions(
    s: &Engine,
    agent_id: &str,
    page: Page,
) -> Result<Paged<AgentActionStatus>> {
    let mut args = Args::default();
    add(&mut args, agent_id.to_owned())?;
    let (rows, total) = page_of::<(
        String,
        String,
        String,
        i64,
        Option<i64>,
        bool,
        Option<i64>,
        Option<String>,
    )>(
        &s.pool,
        "SELECT a.id, a.action_type, a.data, a.created_at, a.expiration, t.confirmed, t.acked_at, \
         t.ack_error FROM action_targets t JOIN actions a ON a.id = t.action_id \
         WHERE t.agent_id = $1 ORDER BY a.created_at DESC, a.id",
        "SELECT COUNT(*) FROM action_targets WHERE agent_id = $1",
        args,
        page,
    )
    .await?;
    let items = rows
        .into_iter()
        .map(
            |(id, action_type, data, created_at, expiration, confirmed, acked_at, ack_error)| {
                let action = ActionRow {
                    id,
                    action_type,
                    data,
                    created_at,
                    expiration,
                }
                .into_action(vec![agent_id.to_owned()])?;
                Ok(AgentActionStatus {
                    action,
                    delivered: confirmed || acked_at.is_some(),
                    acked_at: acked_at.map(from_ms),
                    ack_error,
                })
            },
        )
        .collect::<Result<Vec<_>>>()?;
    Ok(Paged { items, total })
}

#[tracing::instrument(skip_all)]
pub(super) async fn ack_action(
    s: &Engine,
    agent_id: &str,
    action_id: &str,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ActionAck> {
    let mut tx = s.begin_write().await?;
    let row: Option<(String, Option<i64>)> = sqlx::query_as(
                    "SELECT a.action_type, t.acked_at FROM action_targets t JOIN actions a ON a.id = t.action_id \
                     WHERE t.action_id = $1 AND t.agent_id = $2",
                )
                .bind(action_id)
                .bind(agent_id)
                .fetch_optional(&mut *tx)
                .await
                .db()?;
    let Some((action_type, acked_at)) = row else {
        let exists = count(
            &mut tx,
            "SELECT COUNT(*) FROM actions WHERE id = $1",
            action_id,
        )
        .await?;
        return Ok(if exists > 0 {
            ActionAck::OtherAgent
        } else {
            ActionAck::NotFound
        });
    };
    let action_type = ActionType::parse(&action_type)
        .ok_or_else(|| StoreError::Other(format!("corrupt action type {action_type}").into()))?;
    let mut first_time = false;
    if acked_at.is_none() {
        // Conditional, so of two concurrent acks one is first.
        let done = sqlx::query(
            "UPDATE action_targets SET acked_at = $3, ack_error = $4, confirmed = TRUE \
                         WHERE action_id = $1 AND agent_id = $2 AND acked_at IS NULL",
        )
        .bind(action_id)
        .bind(agent_id)
        .bind(ms(now))
        .bind(error)
        .execute(&mut *tx)
        .await
        .db()?;
        first_time = done.rows_affected() > 0;
    }
    tx.commit().await.db()?;
    Ok(ActionAck::Acked {
        action_type,
        first_time,
    })
}

/// Old and expired actions go, their targets with them (cascade).
#[tracing::instrument(skip_all)]
pub(super) async fn expire_actions(
    s: &Engine,
    created_before: DateTime<Utc>,
    expired_before: DateTime<Utc>,
) -> Result<u64> {
    let mut tx = s.begin_write().await?;
    sqlx::query(
        "DELETE FROM action_targets WHERE action_id IN \
           (SELECT id FROM actions WHERE created_at < $1 OR expiration < $2)",
    )
    .bind(ms(created_before))
    .bind(ms(expired_before))
    .execute(&mut *tx)
    .await
    .db()?;
    let n = sqlx::query("DELETE FROM actions WHERE created_at < $1 OR expiration < $2")
        .bind(ms(created_before))
        .bind(ms(expired_before))
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
    tx.commit().await.db()?;
    Ok(n)
}
