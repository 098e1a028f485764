//! Agent policies and their revisions.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn create_policy(
    s: &Engine,
    new: &NewAgentPolicy,
    now: DateTime<Utc>,
) -> Result<AgentPolicy> {
    let mut tx = s.begin_write().await?;
    let policy = insert_policy(&mut tx, new, ms(now)).await?;
    tx.commit().await.db()?;
    Ok(policy)
}

/// Insert a policy in the caller's transaction.
pub(super) async fn insert_policy(
    tx: &mut Conn,
    new: &NewAgentPolicy,
    now: i64,
) -> Result<AgentPolicy> {
    if let Some(output) = &new.output_id {
        if !output_exists(&mut *tx, output).await? {
            return Err(StoreError::not_found(Entity::Output, output));
        }
    }
    // Above any revision an earlier policy with this id reached.
    sqlx::query(
                    "INSERT INTO agent_policies (id, name, namespace, description, output_id, inactivity_timeout, \
                     revision, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, \
                     COALESCE((SELECT revision FROM policy_revision_floors WHERE policy_id = $1), 0) + 1, $7, $7)",
                )
                .bind(&new.id)
                .bind(&new.name)
                .bind(&new.namespace)
                .bind(&new.description)
                .bind(&new.output_id)
                .bind(new.inactivity_timeout as i64)
                .bind(now)
                .execute(&mut *tx)
                .await
                .or_conflict(|| format!("an agent policy named '{}' or with id '{}' already exists", new.name, new.id))?;
    // On PostgreSQL the INSERT's subquery reads the snapshot its statement
    // began with: a delete committing meanwhile may have raised the floor.
    // A new statement sees it.
    sqlx::query(
        "UPDATE agent_policies SET revision = \
         (SELECT revision FROM policy_revision_floors WHERE policy_id = $1) + 1 \
         WHERE id = $1 AND revision <= \
         COALESCE((SELECT revision FROM policy_revision_floors WHERE policy_id = $1), 0)",
    )
    .bind(&new.id)
    .execute(&mut *tx)
    .await
    .db()?;
    fetch_policy(&mut *tx, &new.id).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_policy(s: &Engine, id: &str) -> Result<AgentPolicy> {
    fetch_policy(&mut *s.pool.acquire().await.db()?, id).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_policies(
    s: &Engine,
    filter: &PolicyFilter,
    page: Page,
) -> Result<Paged<AgentPolicy>> {
    const WHERE: &str = "FROM agent_policies WHERE ($1 IS NULL OR LOWER(name) LIKE $1 ESCAPE '\\')";
    let mut args = Args::default();
    add(&mut args, filter.name.as_deref().map(like_pattern))?;
    let (rows, total) = page_of::<PolicyRow>(
        &s.pool,
        &format!("SELECT {POLICY_COLS} {WHERE} ORDER BY created_at, id"),
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
pub(super) async fn update_policy(
    s: &Engine,
    id: &str,
    update: &AgentPolicyUpdate,
    now: DateTime<Utc>,
) -> Result<AgentPolicy> {
    let now = ms(now);
    let mut tx = s.begin_write().await?;
    policy_exists(&mut tx, id).await?; // row lock before reading
    let mut p = fetch_policy(&mut tx, id).await?;
    if let Some(name) = &update.name {
        p.name = name.clone();
    }
    if let Some(ns) = &update.namespace {
        p.namespace = ns.clone();
    }
    if let Some(d) = &update.description {
        p.description = d.clone();
    }
    if let Some(o) = &update.output_id {
        if let Some(o) = o {
            if !output_exists(&mut tx, o).await? {
                return Err(StoreError::not_found(Entity::Output, o));
            }
        }
        p.output_id = o.clone();
    }
    if let Some(t) = update.inactivity_timeout {
        p.inactivity_timeout = t;
    }
    sqlx::query(
                    "UPDATE agent_policies SET name = $2, namespace = $3, description = $4, output_id = $5, \
                     inactivity_timeout = $6, revision = revision + 1, updated_at = $7 WHERE id = $1",
                )
                .bind(id)
                .bind(&p.name)
                .bind(&p.namespace)
                .bind(&p.description)
                .bind(&p.output_id)
                .bind(p.inactivity_timeout as i64)
                .bind(now)
                .execute(&mut *tx)
                .await
                .or_conflict(|| format!("an agent policy named '{}' already exists", p.name))?;
    let policy = fetch_policy(&mut tx, id).await?;
    tx.commit().await.db()?;
    s.publish(StoreEvent::PolicyChanged {
        policy_id: Some(id.to_owned()),
    })
    .await;
    Ok(policy)
}

#[tracing::instrument(skip_all)]
pub(super) async fn delete_policy(s: &Engine, id: &str) -> Result<()> {
    let mut tx = s.begin_write().await?;
    if !policy_exists(&mut tx, id).await? {
        return Err(StoreError::not_found(Entity::AgentPolicy, id));
    }
    let agents = count(
        &mut tx,
        "SELECT COUNT(*) FROM agents WHERE policy_id = $1 AND active",
        id,
    )
    .await?;
    if agents > 0 {
        return Err(StoreError::Conflict(format!(
            "agent policy '{id}' has {agents} enrolled agents; unenroll or reassign them first"
        )));
    }
    execute_with_id(
        &mut tx,
        "INSERT INTO policy_revision_floors (policy_id, revision) \
                     SELECT id, revision FROM agent_policies WHERE id = $1 \
                     ON CONFLICT (policy_id) DO UPDATE SET revision = excluded.revision",
        id,
    )
    .await?;
    execute_with_id(&mut tx, "DELETE FROM agent_policies WHERE id = $1", id).await?;
    tx.commit().await.db()?;
    Ok(())
}
