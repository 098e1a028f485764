//! Agents' output keys: rotation, and retirement once an agent runs the revision.

use std::collections::{BTreeMap, HashMap};

use super::prelude::*;

// Group commit (see `Store::set_output_keys` and
// `Store::agents_run_policies`): a batch is a few set-wise statements, not
// a few per item. On SQLite's one writer each statement costs a round
// trip to its thread; at 256 items of four or five statements each, that
// was about 0.8 ms per item under load — the whole of a 10,000-agent
// fan-out's time. Within a round an agent appears once, so set-wise
// statements mean the same as the items one after the other; a later item
// for the same agent goes in a later round and sees the earlier one's
// writes.

/// Items per statement: 13 parameters a row stays well under both
/// engines' limits on bound parameters.
const CHUNK: usize = 200;

#[tracing::instrument(skip_all, fields(n = changes.len()))]
pub(super) async fn set_output_keys(
    s: &Engine,
    changes: &[(String, OutputKeyChange)],
) -> Result<Vec<bool>> {
    let mut out = vec![false; changes.len()];
    let mut tx = s.begin_write().await?;
    for round in rounds(changes, |c| c.0.as_str()) {
        for chunk in round.chunks(CHUNK) {
            install_output_keys(&mut tx, changes, chunk, &mut out).await?;
        }
    }
    tx.commit().await.db()?;
    Ok(out)
}

/// One chunk of a round: each change installed only when the agent is
/// active and still holds the key it replaces (compare-and-swap; of two
/// concurrent rotations one wins, the other learns it lost and writes
/// nothing).
async fn install_output_keys(
    tx: &mut Conn,
    changes: &[(String, OutputKeyChange)],
    chunk: &[usize],
    out: &mut [bool],
) -> Result<()> {
    let ids: Vec<&str> = chunk.iter().map(|i| changes[*i].0.as_str()).collect();
    // Locked in id order: two batches (on PostgreSQL, from two instances)
    // never wait on each other in a cycle.
    let mut lock = sqlx::query_as(sql!(
        "SELECT id, output_api_key_id FROM agents WHERE active AND id IN ({}) ORDER BY id{FOR_UPDATE}",
        seq_params(1, ids.len())
    ));
    for id in &ids {
        lock = lock.bind(*id);
    }
    let rows: Vec<(String, Option<String>)> = lock.fetch_all(&mut *tx).await.db()?;
    let current: HashMap<String, Option<String>> = rows.into_iter().collect();
    let winners: Vec<usize> = chunk
        .iter()
        .copied()
        .filter(|i| {
            let (agent, change) = &changes[*i];
            current
                .get(agent)
                .is_some_and(|held| *held == change.replaces)
        })
        .collect();
    if winners.is_empty() {
        return Ok(());
    }
    let mut update = sqlx::query(sql!(
        "UPDATE agents SET output_key_error = NULL, output_api_key_id = v.column2, \
         output_api_key_sealed = v.column3, output_permissions_hash = v.column4, \
         output_key_policy_id = v.column5, output_key_revision = v.column6 \
         FROM (VALUES {}) AS v WHERE agents.id = v.column1",
        seq_rows(winners.len(), 6)
    ));
    for i in &winners {
        let (agent, c) = &changes[*i];
        update = update
            .bind(agent)
            .bind(&c.key.id)
            .bind(&c.sealed_secret)
            .bind(&c.permissions_hash)
            .bind(&c.policy_id)
            .bind(c.revision);
    }
    update.execute(&mut *tx).await.db()?;
    // The keys they replace are marked before the new ones exist.
    let agents: Vec<&str> = winners.iter().map(|i| changes[*i].0.as_str()).collect();
    let mut mark = sqlx::query(sql!(
        "UPDATE api_keys SET retire_pending = TRUE \
         WHERE agent_id IN ({}) AND kind = 'output' AND invalidated_at IS NULL",
        seq_params(1, agents.len())
    ));
    for a in &agents {
        mark = mark.bind(*a);
    }
    mark.execute(&mut *tx).await.db()?;
    let keys: Vec<&ApiKeyRecord> = winners.iter().map(|i| &changes[*i].1.key).collect();
    insert_keys(&mut *tx, &keys).await?;
    for i in winners {
        out[i] = true;
    }
    Ok(())
}

/// The batch's items in rounds in which each agent appears once, each
/// round in the batch's order.
fn rounds<T>(items: &[T], agent: impl Fn(&T) -> &str) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let n = seen.entry(agent(item)).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds
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

#[tracing::instrument(skip_all, fields(n = runs.len()))]
pub(super) async fn agents_run_policies(
    s: &Engine,
    runs: &[flotilla_store::RunsPolicy],
    now: DateTime<Utc>,
) -> Result<Vec<Vec<String>>> {
    let mut out = vec![Vec::new(); runs.len()];
    let mut tx = s.begin_write().await?;
    for round in rounds(runs, |r| r.agent_id.as_str()) {
        for chunk in round.chunks(CHUNK) {
            runs_policies(&mut tx, runs, chunk, now, &mut out).await?;
        }
    }
    tx.commit().await.db()?;
    Ok(out)
}

/// One chunk of a round: each agent's revision recorded if newer (for its
/// current policy, and one the policy has had), and the keys marked for
/// retirement invalidated once it runs the revision that replaced them.
async fn runs_policies(
    tx: &mut Conn,
    runs: &[flotilla_store::RunsPolicy],
    chunk: &[usize],
    now: DateTime<Utc>,
    out: &mut [Vec<String>],
) -> Result<()> {
    let ids: Vec<&str> = chunk.iter().map(|i| runs[*i].agent_id.as_str()).collect();
    // Locked in id order (serialising with key rotation for these agents).
    let mut lock = sqlx::query_as::<_, FleetAgentRow>(sql!(
        "SELECT {FLEET_AGENT_COLS} FROM agents WHERE id IN ({}) ORDER BY id{FOR_UPDATE}",
        seq_params(1, ids.len())
    ));
    for id in &ids {
        lock = lock.bind(*id);
    }
    let agents: HashMap<String, FleetAgent> = lock
        .fetch_all(&mut *tx)
        .await
        .db()?
        .into_iter()
        .map(|r| {
            let a: FleetAgent = r.into();
            (a.id.clone(), a)
        })
        .collect();
    let mut policy_ids: Vec<&str> = chunk.iter().map(|i| runs[*i].policy_id.as_str()).collect();
    policy_ids.sort_unstable();
    policy_ids.dedup();
    let mut q = sqlx::query_as(sql!(
        "SELECT id, revision FROM agent_policies WHERE id IN ({})",
        seq_params(1, policy_ids.len())
    ));
    for p in &policy_ids {
        q = q.bind(*p);
    }
    let latest: HashMap<String, i64> = q.fetch_all(&mut *tx).await.db()?.into_iter().collect();
    // What each item changes, by revision (in a fleet acking one change,
    // one revision).
    let mut newer: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    let mut retiring: Vec<(usize, &str)> = Vec::new();
    for &i in chunk {
        let r = &runs[i];
        let Some(agent) = agents.get(&r.agent_id) else {
            continue;
        };
        if !agent.active || agent.policy_id != r.policy_id {
            continue;
        }
        // A revision the policy never had (a restored agent, a forged
        // ack) is not believed.
        if latest.get(&r.policy_id).is_none_or(|l| r.revision > *l) {
            continue;
        }
        if r.revision > agent.policy_revision.unwrap_or(-1) {
            newer.entry(r.revision).or_default().push(&r.agent_id);
        }
        if agent.output_key_policy_id.as_deref() == Some(r.policy_id.as_str())
            && agent.output_key_revision.is_some_and(|k| r.revision >= k)
        {
            retiring.push((i, &r.agent_id));
        }
    }
    for (revision, agents) in newer {
        let mut q = sqlx::query(sql!(
            "UPDATE agents SET policy_revision = {}, updated_at = {}, policy_revision_at = {}, \
             policy_change_failure = NULL WHERE id IN ({})",
            seq_param(1),
            seq_param(2),
            seq_param(3),
            seq_params(4, agents.len())
        ))
        .bind(revision)
        .bind(ms(now))
        .bind(ms(now));
        for a in agents {
            q = q.bind(a);
        }
        q.execute(&mut *tx).await.db()?;
    }
    if retiring.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::query_as(sql!(
        "UPDATE api_keys SET invalidated_at = {} \
         WHERE agent_id IN ({}) AND retire_pending AND invalidated_at IS NULL RETURNING agent_id, id",
        seq_param(1),
        seq_params(2, retiring.len())
    ))
    .bind(ms(now));
    for (_, a) in &retiring {
        q = q.bind(*a);
    }
    let invalidated: Vec<(String, String)> = q.fetch_all(&mut *tx).await.db()?;
    let mut by_agent: HashMap<String, Vec<String>> = HashMap::new();
    for (agent, key) in invalidated {
        by_agent.entry(agent).or_default().push(key);
    }
    for (i, agent) in retiring {
        if let Some(mut keys) = by_agent.remove(agent) {
            keys.sort();
            out[i] = keys;
        }
    }
    Ok(())
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
