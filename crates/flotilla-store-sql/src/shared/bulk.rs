//! Bulk actions: one action, applied a chunk of agents per transaction,
//! each agent's outcome a row of `action_targets`; and their progress.

use flotilla_domain::action::{progress_status, ActionProgress, ActionTarget, TargetOutcome};
use flotilla_store::BulkOperation;

use super::prelude::*;

fn in_list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|p| format!("${p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tracing::instrument(skip_all, fields(n = agent_ids.len()))]
pub(super) async fn apply_bulk_action(
    s: &Engine,
    action_id: &str,
    op: &BulkOperation,
    agent_ids: &[String],
    now: DateTime<Utc>,
) -> Result<u64> {
    let now_ms = ms(now);
    let mut ids: Vec<&str> = agent_ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(0);
    }
    let mut tx = s.begin_write().await?;
    let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM actions WHERE id = $1")
        .bind(action_id)
        .fetch_one(&mut *tx)
        .await
        .db()?;
    if exists == 0 {
        return Err(StoreError::not_found(Entity::Action, action_id));
    }
    // The policy's lock before the agents' (as enrolment takes it).
    if let BulkOperation::Reassign { policy_id } = op {
        if !policy_exists(&mut tx, policy_id).await? {
            return Err(StoreError::not_found(Entity::AgentPolicy, policy_id));
        }
    }
    // The agents' rows, locked in id order (no deadlock between bulk
    // actions sharing agents on PostgreSQL).
    let mut q = sqlx::query_as::<_, (String, String, bool, Option<i64>)>(sql!(
        "SELECT id, policy_id, active, unenrollment_started_at FROM agents \
         WHERE id IN ({}) ORDER BY id{FOR_UPDATE}",
        in_list(1, ids.len())
    ));
    for id in &ids {
        q = q.bind(*id);
    }
    let found: std::collections::HashMap<String, (String, bool, Option<i64>)> = q
        .fetch_all(&mut *tx)
        .await
        .db()?
        .into_iter()
        .map(|(id, p, active, u)| (id, (p, active, u)))
        .collect();
    // Each agent: applied, or refused with why.
    let mut ok: Vec<&str> = Vec::new();
    let mut outcome: Vec<(&str, Option<String>)> = Vec::with_capacity(ids.len());
    for id in &ids {
        let refusal = match found.get(*id) {
            None => Some("agent not found".to_owned()),
            Some((_, false, _)) => Some("agent is unenrolled".to_owned()),
            Some((p, true, _)) => match op {
                BulkOperation::Reassign { policy_id } if p == policy_id => {
                    Some(format!("agent is already assigned to policy '{policy_id}'"))
                }
                BulkOperation::Unenroll { revoke: false } if found[*id].2.is_some() => {
                    Some("agent is already unenrolling".to_owned())
                }
                _ => None,
            },
        };
        if refusal.is_none() {
            ok.push(id);
        }
        outcome.push((id, refusal));
    }
    if !ok.is_empty() {
        let list = in_list(3, ok.len());
        let stmt: Option<String> = match op {
            BulkOperation::Reassign { .. } => Some(format!(
                "UPDATE agents SET policy_id = $1, policy_revision = NULL, policy_revision_at = NULL, updated_at = $2 \
                 WHERE id IN ({list})"
            )),
            BulkOperation::Unenroll { revoke: false } => Some(format!(
                "UPDATE agents SET unenrollment_started_at = COALESCE(unenrollment_started_at, $2), \
                 updated_at = $2 WHERE id IN ({list}) AND $1 = $1"
            )),
            BulkOperation::Unenroll { revoke: true } => None,
            BulkOperation::UpdateTags { .. } => Some(format!(
                "UPDATE agents SET updated_at = $2 WHERE id IN ({list}) AND $1 = $1"
            )),
            BulkOperation::Settings => None,
        };
        if let Some(stmt) = stmt {
            let first = match op {
                BulkOperation::Reassign { policy_id } => policy_id.clone(),
                _ => String::new(),
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(stmt))
                .bind(first)
                .bind(now_ms);
            for id in &ok {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await.db()?;
        }
        if let BulkOperation::Unenroll { revoke: true } = op {
            // As one revoking unenrolment does: every key the agent holds
            // invalidated with it.
            for id in &ok {
                unenroll_in(&mut tx, id, now_ms).await?;
            }
        }
        if let BulkOperation::UpdateTags { add, remove } = op {
            if !remove.is_empty() {
                let mut q = sqlx::query(sql!(
                    "DELETE FROM agent_tags WHERE agent_id IN ({}) AND tag IN ({})",
                    in_list(1, ok.len()),
                    in_list(1 + ok.len(), remove.len())
                ));
                for id in &ok {
                    q = q.bind(*id);
                }
                for t in remove {
                    q = q.bind(t);
                }
                q.execute(&mut *tx).await.db()?;
            }
            let pairs: Vec<(&str, &str)> = ok
                .iter()
                .flat_map(|id| add.iter().map(move |t| (*id, t.as_str())))
                .collect();
            for part in pairs.chunks(BULK_ROWS) {
                let rows: Vec<String> = (0..part.len())
                    .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                    .collect();
                let mut q = sqlx::query(sql!(
                    "INSERT INTO agent_tags (agent_id, tag) VALUES {} ON CONFLICT DO NOTHING",
                    rows.join(", ")
                ));
                for (a, t) in part {
                    q = q.bind(*a).bind(*t);
                }
                q.execute(&mut *tx).await.db()?;
            }
        }
    }
    // Targets: refused ones failed at once; what the server applied itself
    // acked at once; the rest wait for the agent.
    let settled_by_server = matches!(
        op,
        BulkOperation::UpdateTags { .. } | BulkOperation::Unenroll { revoke: true }
    );
    for part in outcome.chunks(BULK_ROWS) {
        let rows: Vec<String> = (0..part.len())
            .map(|i| {
                format!(
                    "($1, ${}, ${}, ${}, ${})",
                    4 * i + 2,
                    4 * i + 3,
                    4 * i + 4,
                    4 * i + 5
                )
            })
            .collect();
        let mut q = sqlx::query(sql!(
            "INSERT INTO action_targets (action_id, agent_id, confirmed, acked_at, ack_error) \
             VALUES {} ON CONFLICT DO NOTHING",
            rows.join(", ")
        ))
        .bind(action_id);
        for (id, refusal) in part {
            // Applied by the server: delivered and acknowledged at once.
            let settled = refusal.is_none() && settled_by_server;
            let acked = (refusal.is_some() || settled).then_some(now_ms);
            q = q.bind(*id).bind(settled).bind(acked).bind(refusal.clone());
        }
        q.execute(&mut *tx).await.db()?;
    }
    tx.commit().await.db()?;
    let ok: Vec<String> = ok.into_iter().map(str::to_owned).collect();
    let applied = ok.len() as u64;
    if ok.len() <= 50 {
        for id in &ok {
            s.publish(StoreEvent::AgentChanged {
                agent_id: id.clone(),
            })
            .await;
        }
        s.publish(StoreEvent::ActionsCreated {
            agent_ids: Some(ok),
        })
        .await;
    } else {
        s.publish(StoreEvent::ActionsCreated { agent_ids: None })
            .await;
    }
    Ok(applied)
}

/// Target rows per statement (4 parameters each).
const BULK_ROWS: usize = 300;

type ProgressRow = (
    String,
    String,
    String,
    i64,
    Option<i64>,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
);

/// The counts of an action's targets; `{}` is the actions it reads (a
/// table, or a page of it as a subquery, so only that page's targets are
/// counted).
macro_rules! progress_select {
    () => {
        "SELECT a.id, a.action_type, a.data, a.created_at, a.expiration, \
         COUNT(t.agent_id), \
         COALESCE(SUM(CASE WHEN t.confirmed OR t.delivery_token IS NOT NULL THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN t.acked_at IS NOT NULL AND t.ack_error IS NULL THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN t.ack_error IS NOT NULL THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN NOT t.confirmed AND t.delivery_token IS NULL AND t.acked_at IS NULL \
         THEN 1 ELSE 0 END), 0), \
         MAX(t.acked_at) \
         FROM {} a LEFT JOIN action_targets t ON t.action_id = a.id"
    };
}
const GROUP: &str = " GROUP BY a.id, a.action_type, a.data, a.created_at, a.expiration";

fn progress(r: ProgressRow, now: DateTime<Utc>) -> Result<ActionProgress> {
    let (
        id,
        action_type,
        data,
        created_at,
        expiration,
        created,
        delivered,
        acked,
        failed,
        pending,
        last,
    ) = r;
    let row = ActionRow {
        id,
        action_type,
        data,
        created_at,
        expiration,
    };
    let action = row.into_action(vec![])?;
    let n = |v: i64| v.max(0) as u64;
    let status = progress_status(n(created), n(acked), n(failed), action.expiration, now);
    let done = n(acked) + n(failed) >= n(created) && created > 0;
    Ok(ActionProgress {
        action_id: action.id,
        action_type: action.action_type,
        status: status.to_owned(),
        nb_agents_action_created: n(created),
        nb_agents_actioned: n(created),
        nb_agents_delivered: n(delivered),
        nb_agents_ack: n(acked),
        nb_agents_failed: n(failed),
        nb_agents_pending: n(pending),
        creation_time: action.created_at,
        expiration: action.expiration,
        completion_time: if done { last.map(from_ms) } else { None },
        data: action.data,
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn action_progress(
    s: &Engine,
    page: Page,
    now: DateTime<Utc>,
) -> Result<Paged<ActionProgress>> {
    let rows: Vec<ProgressRow> = sqlx::query_as(sql!(
        concat!(progress_select!(), "{} ORDER BY a.created_at DESC, a.id"),
        "(SELECT * FROM actions ORDER BY created_at DESC, id LIMIT $1 OFFSET $2)",
        GROUP
    ))
    .bind(i64::from(page.per_page))
    .bind(page.offset())
    .fetch_all(&s.pool)
    .await
    .db()?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM actions")
        .fetch_one(&s.pool)
        .await
        .db()?;
    Ok(Paged {
        items: rows
            .into_iter()
            .map(|r| progress(r, now))
            .collect::<Result<_>>()?,
        total: total.max(0) as u64,
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_action_progress(
    s: &Engine,
    action_id: &str,
    now: DateTime<Utc>,
) -> Result<ActionProgress> {
    let row: Option<ProgressRow> = sqlx::query_as(sql!(
        concat!(progress_select!(), " WHERE a.id = $1{}"),
        "actions",
        GROUP
    ))
    .bind(action_id)
    .fetch_optional(&s.pool)
    .await
    .db()?;
    progress(
        row.ok_or_else(|| StoreError::not_found(Entity::Action, action_id))?,
        now,
    )
}

#[tracing::instrument(skip_all)]
pub(super) async fn action_targets(
    s: &Engine,
    action_id: &str,
    page: Page,
) -> Result<Paged<ActionTarget>> {
    let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM actions WHERE id = $1")
        .bind(action_id)
        .fetch_one(&s.pool)
        .await
        .db()?;
    if exists == 0 {
        return Err(StoreError::not_found(Entity::Action, action_id));
    }
    let mut args = Args::default();
    add(&mut args, action_id.to_owned())?;
    let (rows, total) = page_of::<(String, bool, Option<i64>, Option<String>)>(
        &s.pool,
        "SELECT agent_id, (confirmed OR delivery_token IS NOT NULL), acked_at, ack_error \
         FROM action_targets \
         WHERE action_id = $1 ORDER BY agent_id",
        "SELECT COUNT(*) FROM action_targets WHERE action_id = $1",
        args,
        page,
    )
    .await?;
    Ok(Paged {
        items: rows
            .into_iter()
            .map(|(agent_id, confirmed, acked_at, error)| ActionTarget {
                outcome: TargetOutcome::of(confirmed, acked_at.is_some(), error.is_some()),
                agent_id,
                acked_at: acked_at.map(from_ms),
                error,
            })
            .collect(),
        total,
    })
}
