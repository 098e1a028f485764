//! Agents as the fleet protocol sees them: enrolment, check-ins, unenrolment.

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn get_fleet_agent(s: &Engine, id: &str) -> Result<Option<FleetAgent>> {
    fetch_fleet_agent(&mut *s.pool.acquire().await.db()?, id).await
}

/// One statement for both: a check-in (or ack) authenticates on every
/// call, and each statement is a hand-off to the engine's connection (on
/// SQLite a worker thread, on PostgreSQL a round trip and a pooled
/// connection).
#[tracing::instrument(skip_all)]
pub(super) async fn fleet_agent_and_key(
    s: &Engine,
    agent_id: &str,
    key_id: &str,
) -> Result<(Option<FleetAgent>, Option<ApiKeyRecord>)> {
    // Built once: agent requests run it on every call.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {} FROM (SELECT 1 AS one) AS o \
             LEFT JOIN agents a ON a.id = $1 LEFT JOIN api_keys k ON k.id = $2",
            crate::rows::agent_and_key_cols()
        )
    });
    let row: crate::rows::AgentAndKeyRow = sqlx::query_as(sqlx::AssertSqlSafe(
        std::borrow::Cow::Borrowed(SQL.as_str()),
    ))
    .bind(agent_id)
    .bind(key_id)
    .fetch_one(&s.pool)
    .await
    .db()?;
    row.try_into()
}

/// [`fleet_agent_and_key`] and `actions::checkin_reads` for the policy the
/// agent's record names, in one statement: the agent-and-key row repeated
/// beside each pending action (once, with none).
#[tracing::instrument(skip_all)]
pub(super) async fn checkin_context(
    s: &Engine,
    agent_id: &str,
    key_id: &str,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<flotilla_store::CheckinContext> {
    // Built once: every check-in runs it.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {}, p.revision AS policy_revision, q.id, q.action_type, q.data, q.created_at, \
         q.expiration FROM (SELECT 1 AS one) AS o \
         LEFT JOIN agents a ON a.id = $1 LEFT JOIN api_keys k ON k.id = $2 \
         LEFT JOIN agent_policies p ON p.id = a.policy_id \
         LEFT JOIN (SELECT x.id, x.action_type, x.data, x.created_at, x.expiration \
                    FROM action_targets t JOIN actions x ON x.id = t.action_id \
                    WHERE t.agent_id = $1 AND NOT t.confirmed AND t.acked_at IS NULL \
                      AND (x.expiration IS NULL OR x.expiration > $3) \
                    ORDER BY x.created_at, x.id LIMIT $4) AS q ON a.id IS NOT NULL \
         ORDER BY q.created_at, q.id",
            crate::rows::agent_and_key_cols()
        )
    });
    let rows: Vec<crate::rows::CheckinContextRow> = sqlx::query_as(sqlx::AssertSqlSafe(
        std::borrow::Cow::Borrowed(SQL.as_str()),
    ))
    .bind(agent_id)
    .bind(key_id)
    .bind(ms(now))
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .db()?;
    let mut rows = rows.into_iter();
    let Some(first) = rows.next() else {
        return Err(StoreError::Other(
            "the check-in read returned no row".into(),
        ));
    };
    let policy_revision = first.reads.policy_revision;
    let mut actions = Vec::new();
    let (agent, key) = first.agent_and_key.try_into()?;
    for r in std::iter::once(first.reads).chain(rows.map(|r| r.reads)) {
        if let Some(a) = r.action() {
            actions.push(a.into_action(vec![agent_id.to_owned()])?);
        }
    }
    Ok(flotilla_store::CheckinContext {
        agent,
        key,
        policy_revision,
        actions,
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn enroll_agent(
    s: &Engine,
    agent: &NewAgent,
    access_key: &ApiKeyRecord,
    replace: &[String],
    key_use: &KeyUse,
) -> Result<Agent> {
    let now = ms(agent.enrolled_at);
    let mut tx = s.begin_write().await?;
    if !policy_exists(&mut tx, &agent.policy_id).await? {
        return Err(StoreError::not_found(Entity::AgentPolicy, &agent.policy_id));
    }
    // The key's row lock after the policy's (the set-wise path takes them
    // in the same order), held to the end: the use is counted, or the
    // enrolment refused, in the transaction that inserts the agent.
    match key_use {
        KeyUse::None => {}
        KeyUse::Counted(key) => count_key_uses(&mut tx, key, 1).await?,
        KeyUse::Limited(key) => take_key_use(&mut tx, key, now).await?,
    }
    for old in replace {
        remove_agent(&mut tx, old, now).await?;
    }
    let mut changed: Vec<String> = replace.to_vec();
    // At most one active agent per enrollment id, decided inside
    // this transaction (a unique index backs it: of two
    // concurrent enrolments on PostgreSQL one gets a conflict).
    if let Some(eid) = &agent.enrollment_id {
        let same: Vec<FleetAgentRow> = sqlx::query_as(sql!(
                        "SELECT {FLEET_AGENT_COLS} FROM agents WHERE enrollment_id = $1 AND active AND id <> $2"
                    ))
                    .bind(eid)
                    .bind(&agent.id)
                    .fetch_all(&mut *tx)
                    .await
                    .db()?;
        for old in same.into_iter().map(FleetAgent::from) {
            // Never checked in, on this policy: a failed earlier attempt,
            // removed. Anything else is a live agent an enrollment token
            // must not be able to displace.
            if old.last_checkin.is_some() || old.policy_id != agent.policy_id {
                return Err(StoreError::InUse(format!(
                    "enrollment id '{eid}' belongs to active agent '{}'; unenrol it first",
                    old.id
                )));
            }
            remove_agent(&mut tx, &old.id, now).await?;
            changed.push(old.id);
        }
    }
    insert_key(&mut tx, access_key).await?;
    insert_agent_row(&mut tx, agent).await?;
    tx.commit().await.db()?;
    for old in changed {
        s.publish(StoreEvent::AgentChanged { agent_id: old }).await;
    }
    match agent_after_write(s, &agent.id, agent.enrolled_at).await {
        // Replaced since by a concurrent enrolment with the same
        // enrollment id.
        Err(StoreError::NotFound { .. }) => Err(StoreError::Conflict(format!(
            "agent '{}' was replaced by a concurrent enrolment",
            agent.id
        ))),
        other => other,
    }
}

/// Group-committed enrolments. Plain ones (a fresh agent: nothing to
/// replace, no enrollment id, its id once in the batch) are written
/// set-wise in one transaction: the policies' row locks in id order, then
/// multi-row inserts of keys, agents, reports and tags. The rest are
/// [`enroll_agent`]s of their own afterwards, in order.
#[tracing::instrument(skip_all, fields(n = items.len()))]
pub(super) async fn enroll_agents(s: &Engine, items: &[Enrolment]) -> Result<Vec<Result<()>>> {
    let mut out: Vec<Option<Result<()>>> = (0..items.len()).map(|_| None).collect();
    let mut seen = std::collections::HashSet::new();
    let plain: Vec<usize> = (0..items.len())
        .filter(|&i| {
            let e = &items[i];
            e.replace.is_empty()
                && e.agent.enrollment_id.is_none()
                && !matches!(e.key_use, KeyUse::Limited(_))
                && seen.insert(e.agent.id.as_str())
        })
        .collect();
    if !plain.is_empty() {
        let mut policies: Vec<&str> = plain
            .iter()
            .map(|&i| items[i].agent.policy_id.as_str())
            .collect();
        policies.sort_unstable();
        policies.dedup();
        let mut tx = s.begin_write().await?;
        let mut missing = std::collections::HashSet::new();
        for p in policies {
            if !policy_exists(&mut tx, p).await? {
                missing.insert(p);
            }
        }
        let mut written: Vec<&Enrolment> = Vec::with_capacity(plain.len());
        for &i in &plain {
            let e = &items[i];
            if missing.contains(e.agent.policy_id.as_str()) {
                out[i] = Some(Err(StoreError::not_found(
                    Entity::AgentPolicy,
                    &e.agent.policy_id,
                )));
            } else {
                written.push(e);
                out[i] = Some(Ok(()));
            }
        }
        // Unlimited enrollment keys' uses, one statement per key in id
        // order (after the policies' locks, as `enroll_agent`).
        let mut uses: std::collections::BTreeMap<&str, i64> = Default::default();
        for e in &written {
            if let KeyUse::Counted(key) = &e.key_use {
                *uses.entry(key.as_str()).or_default() += 1;
            }
        }
        for (key, n) in uses {
            count_key_uses(&mut tx, key, n).await?;
        }
        for chunk in written.chunks(ENROL_CHUNK) {
            let keys: Vec<&ApiKeyRecord> = chunk.iter().map(|e| &e.access_key).collect();
            insert_keys(&mut tx, &keys).await?;
            insert_agent_rows(&mut tx, chunk).await?;
        }
        tx.commit().await.db()?;
    }
    for (i, e) in items.iter().enumerate() {
        if out[i].is_none() {
            out[i] = Some(
                enroll_agent(s, &e.agent, &e.access_key, &e.replace, &e.key_use)
                    .await
                    .map(|_| ()),
            );
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every enrolment answered"))
        .collect())
}

/// Enrolments per statement: 13 parameters a key, 9 an agent.
const ENROL_CHUNK: usize = 200;

/// Raise an unlimited key's use count (a key revoked meanwhile still
/// counts: the enrolment was granted before).
async fn count_key_uses(tx: &mut Conn, key: &str, n: i64) -> Result<()> {
    sqlx::query("UPDATE enrollment_api_keys SET uses = uses + $2 WHERE id = $1")
        .bind(key)
        .bind(n)
        .execute(&mut *tx)
        .await
        .db()?;
    Ok(())
}

/// Take one of a limited key's uses, or refuse: the update applies only
/// while the key is active, unexpired at `now` and has a use left, so two
/// enrolments racing for the last use (on one instance or several) cannot
/// both commit — under PostgreSQL the second waits on the row lock, then
/// re-evaluates the condition against the committed count.
async fn take_key_use(tx: &mut Conn, key: &str, now: i64) -> Result<()> {
    let done = sqlx::query(
        "UPDATE enrollment_api_keys SET uses = uses + 1 WHERE id = $1 AND active \
         AND (max_uses IS NULL OR uses < max_uses) AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(key)
    .bind(now)
    .execute(&mut *tx)
    .await
    .db()?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let found: Option<EnrollmentKeyRow> = row_by(
        &mut *tx,
        sql!("SELECT {EK_COLS} FROM enrollment_api_keys WHERE id = $1"),
        key.to_owned(),
    )
    .await?;
    let Some(found) = found else {
        return Err(StoreError::not_found(Entity::EnrollmentKey, key));
    };
    let found = EnrollmentApiKey::from(found);
    let why = found
        .refusal(from_ms(now))
        .unwrap_or(flotilla_domain::enrollment::EnrollRefusal::Revoked);
    Err(StoreError::KeyRefused {
        why,
        message: found.refusal_message(why),
    })
}

/// [`insert_agent_row`] for many agents: a statement per table.
async fn insert_agent_rows(tx: &mut Conn, chunk: &[&Enrolment]) -> Result<()> {
    let mut q = sqlx::query(sql!(
        "INSERT INTO agents (id, policy_id, active, enrolled_at, updated_at, \
         access_api_key_id, enrollment_id, replace_token_hash, enroll_type, agent_version, \
         enrollment_api_key_id) \
         SELECT v.column1, v.column2, TRUE, v.column3, v.column3, v.column4, v.column5, \
         v.column6, v.column7, v.column8, v.column9 FROM (VALUES {}) AS v",
        seq_rows(chunk.len(), 9)
    ));
    for e in chunk {
        let a = &e.agent;
        q = q
            .bind(&a.id)
            .bind(&a.policy_id)
            .bind(ms(a.enrolled_at))
            .bind(&a.access_api_key_id)
            .bind(&a.enrollment_id)
            .bind(&a.replace_token_hash)
            .bind(&a.enroll_type)
            .bind(&a.agent_version)
            .bind(&a.enrollment_api_key_id);
    }
    q.execute(&mut *tx)
        .await
        .or_conflict(|| "an enrolled agent already exists".to_owned())?;
    let mut q = sqlx::query(sql!(
        "INSERT INTO agent_reports (agent_id, local_metadata) VALUES {}",
        seq_rows(chunk.len(), 2)
    ));
    for e in chunk {
        q = q.bind(&e.agent.id).bind(to_json(&e.agent.local_metadata));
    }
    q.execute(&mut *tx).await.db()?;
    let tags: Vec<(&str, &str)> = chunk
        .iter()
        .flat_map(|e| {
            e.agent
                .tags
                .iter()
                .map(|t| (e.agent.id.as_str(), t.as_str()))
        })
        .collect();
    for part in tags.chunks(ENROL_CHUNK * 4) {
        let mut q = sqlx::query(sql!(
            "INSERT INTO agent_tags (agent_id, tag) VALUES {} ON CONFLICT DO NOTHING",
            seq_rows(part.len(), 2)
        ));
        for (agent, tag) in part {
            q = q.bind(*agent).bind(*tag);
        }
        q.execute(&mut *tx).await.db()?;
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn record_checkins(s: &Engine, batch: &[CheckinRecord]) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    // Set-wise, like the other group commits (see `output_keys`): one
    // statement per chunk, in rounds in which each agent appears once (a
    // later check-in of the same agent applies after an earlier one).
    let mut ordered: Vec<&CheckinRecord> = batch.iter().collect();
    ordered.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let mut rounds: Vec<Vec<&CheckinRecord>> = Vec::new();
    let mut last: Option<&str> = None;
    let mut n = 0;
    for c in ordered {
        n = if last == Some(c.agent_id.as_str()) {
            n + 1
        } else {
            0
        };
        last = Some(c.agent_id.as_str());
        if rounds.len() <= n {
            rounds.push(Vec::new());
        }
        rounds[n].push(c);
    }
    let mut tx = s.begin_write().await?;
    for round in &rounds {
        for chunk in round.chunks(CHECKIN_CHUNK) {
            record_checkin_chunk(&mut tx, chunk).await?;
        }
    }
    tx.commit().await.db()?;
    Ok(())
}

/// Rows per statement: 7 parameters a row.
const CHECKIN_CHUNK: usize = 200;

async fn record_checkin_chunk(tx: &mut Conn, chunk: &[&CheckinRecord]) -> Result<()> {
    if !FOR_UPDATE.is_empty() {
        // Rows in one order on every instance, so two batches sharing
        // agents cannot deadlock on PostgreSQL.
        let mut lock = sqlx::query(sql!(
            "SELECT id FROM agents WHERE id IN ({}) ORDER BY id{FOR_UPDATE}",
            seq_params(1, chunk.len())
        ));
        for c in chunk {
            lock = lock.bind(&c.agent_id);
        }
        lock.fetch_all(&mut *tx).await.db()?;
    }
    let mut q = sqlx::query_scalar(sql!(
        "UPDATE agents SET last_checkin = v.column2, last_checkin_status = v.column3, \
         last_checkin_message = v.column4, \
         agent_version = COALESCE(v.column5, agents.agent_version), \
         reported_policy_id = COALESCE(v.column6, agents.reported_policy_id), \
         reported_policy_revision = COALESCE(v.column7, agents.reported_policy_revision), \
         audit_unenrolled_reason = NULL, audit_unenrolled_time = NULL, unenrolled_at = NULL, \
         updated_at = v.column2 \
         FROM (VALUES {}) AS v \
         WHERE agents.id = v.column1 AND agents.active \
         AND (agents.last_checkin IS NULL OR agents.last_checkin <= v.column2) \
         RETURNING agents.id",
        seq_rows(chunk.len(), 7)
    ));
    for c in chunk {
        q = q
            .bind(&c.agent_id)
            .bind(ms(c.at))
            .bind(&c.status)
            .bind(&c.message)
            .bind(&c.agent_version)
            .bind(c.reported_policy.as_ref().map(|(p, _)| p))
            .bind(c.reported_policy.as_ref().map(|(_, r)| *r));
    }
    let applied: std::collections::HashSet<String> =
        q.fetch_all(&mut *tx).await.db()?.into_iter().collect();
    // What agents report about themselves, only where they sent it (a
    // heartbeat sends neither) and the check-in applied.
    let reports: Vec<&&CheckinRecord> = chunk
        .iter()
        .filter(|c| {
            (c.local_metadata.is_some() || c.components.is_some()) && applied.contains(&c.agent_id)
        })
        .collect();
    if reports.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::query(sql!(
        "UPDATE agent_reports SET local_metadata = COALESCE(v.column2, agent_reports.local_metadata), \
         components = COALESCE(v.column3, agent_reports.components) \
         FROM (VALUES {}) AS v WHERE agent_reports.agent_id = v.column1",
        seq_rows(reports.len(), 3)
    ));
    for c in reports {
        q = q
            .bind(&c.agent_id)
            .bind(c.local_metadata.as_ref().map(to_json))
            .bind(c.components.as_ref().map(to_json));
    }
    q.execute(&mut *tx).await.db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn unenroll_now(s: &Engine, agent_id: &str, now: DateTime<Utc>) -> Result<()> {
    let now_ms = ms(now);
    let mut tx = s.begin_write().await?;
    if !unenroll_in(&mut tx, agent_id, now_ms).await? {
        return Err(StoreError::not_found(Entity::Agent, agent_id));
    }
    tx.commit().await.db()?;
    s.publish(StoreEvent::AgentChanged {
        agent_id: agent_id.to_owned(),
    })
    .await;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn audit_unenroll(
    s: &Engine,
    agent_id: &str,
    reason: &str,
    time: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = s.begin_write().await?;
    lock_agent(&mut tx, agent_id).await?; // row lock before reading
    let agent = fetch_fleet_agent(&mut tx, agent_id)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Agent, agent_id))?;
    if agent.audit_unenrolled_reason.as_deref() == Some("orphaned") {
        return Err(StoreError::Conflict(
            "agent document contains audit_unenroll_reason".into(),
        ));
    }
    sqlx::query(
                    "UPDATE agents SET audit_unenrolled_reason = $2, audit_unenrolled_time = $3, unenrolled_at = $4, \
                     updated_at = $4 WHERE id = $1",
                )
                .bind(agent_id)
                .bind(reason)
                .bind(ms(time))
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .db()?;
    tx.commit().await.db()?;
    Ok(())
}
