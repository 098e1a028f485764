//! Helpers shared by the resource modules: statements used by several,
//! row locks, and the SQL fragments of the agent queries.

use super::prelude::*;

/// Derives an agent's status from stored facts; `$5` is "now" in ms, `$7`
/// the offline threshold in ms. The
/// rule is documented on `flotilla_domain::agent::OFFLINE_AFTER_SECS`.
macro_rules! agent_status_sql {
    () => {
        "CASE WHEN NOT a.active THEN 'unenrolled' \
         WHEN a.last_checkin IS NULL THEN \
            (CASE WHEN a.unenrollment_started_at IS NULL THEN 'enrolling' ELSE 'unenrolling' END) \
         WHEN a.last_checkin < $5 - COALESCE(p.inactivity_timeout, 1209600) * 1000 THEN 'inactive' \
         WHEN a.last_checkin < $5 - $7 THEN 'offline' \
         WHEN a.unenrollment_started_at IS NOT NULL THEN 'unenrolling' \
         WHEN a.last_checkin_status IN ('error', 'failed') THEN 'error' \
         WHEN a.last_checkin_status = 'degraded' THEN 'degraded' \
         ELSE 'online' END"
    };
}

/// The agent query with its filters: `$1` policy, `$2` status, `$3` tag,
/// `$4` include inactive, `$5` now, `$6` one agent's id, `$7` the offline
/// threshold, `$8` the enrollment key.
macro_rules! agent_where_sql {
    () => {
        concat!(" FROM agents a LEFT JOIN agent_policies p ON p.id = a.policy_id \
          LEFT JOIN agent_reports m ON m.agent_id = a.id \
          WHERE ($1 IS NULL OR a.policy_id = $1) \
            AND ($2 IS NULL OR (", agent_status_sql!(), ") = $2) \
            AND ($3 IS NULL OR EXISTS (SELECT 1 FROM agent_tags t WHERE t.agent_id = a.id AND t.tag = $3)) \
            AND ($4 OR a.active OR $2 IS NOT NULL) \
            AND ($8 IS NULL OR a.enrollment_api_key_id = $8) \
            AND ($6 IS NULL OR a.id = $6)")
    };
}

/// The same filter for one agent by id: `a.id = $6` as a term of its own,
/// so SQLite looks the row up by its key (inside `$6 IS NULL OR …` its
/// planner cannot, and every single-agent read scanned every agent).
macro_rules! agent_by_id_where_sql {
    () => {
        concat!(" FROM agents a LEFT JOIN agent_policies p ON p.id = a.policy_id \
          LEFT JOIN agent_reports m ON m.agent_id = a.id \
          WHERE a.id = $6 \
            AND ($1 IS NULL OR a.policy_id = $1) \
            AND ($2 IS NULL OR (", agent_status_sql!(), ") = $2) \
            AND ($3 IS NULL OR EXISTS (SELECT 1 FROM agent_tags t WHERE t.agent_id = a.id AND t.tag = $3)) \
            AND ($4 OR a.active OR $2 IS NOT NULL) \
            AND ($8 IS NULL OR a.enrollment_api_key_id = $8)")
    };
}

macro_rules! agent_select_sql {
    () => {
        concat!("SELECT a.id, a.policy_id, a.policy_revision, a.active, COALESCE(m.local_metadata, '{}') AS local_metadata, \
                a.last_checkin, a.last_checkin_status, a.last_checkin_message, a.enrolled_at, \
                a.unenrollment_started_at, a.unenrolled_at, a.agent_version, m.components, \
                a.reported_policy_id, a.reported_policy_revision, a.output_key_error, a.policy_change_failure, \
                a.enrollment_api_key_id, (",
        agent_status_sql!(),
        ") AS status")
    };
}

pub(crate) const OUTPUT_COLS: &str =
    "id, name, output_type, hosts, is_default, (key_credential IS NOT NULL) AS remote_keys, created_at, updated_at";
pub(crate) const POLICY_COLS: &str =
            "id, name, namespace, description, output_id, inactivity_timeout, revision, created_at, updated_at";
pub(crate) const PP_COLS: &str =
    "id, name, description, policy_id, package_name, package_version, namespace, vars, \
                               inputs, cloud_connector_id, secret_references, created_at, updated_at";
pub(crate) const EK_COLS: &str =
    "id, name, policy_id, hint, active, created_at, expires_at, max_uses, uses";
pub(crate) const OK_COLS: &str = "id, name, hint, active, created_at";

pub(crate) fn like_pattern(s: &str) -> String {
    let escaped = s
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A connection, or a transaction (which derefs to one).
pub(crate) type Conn = <Db as sqlx::Database>::Connection;

/// A statement composed at run time. Every one here joins constant column
/// lists and placeholders; no value ever reaches SQL text (values are
/// bound), which is what sqlx asks us to assert.
macro_rules! sql {
    ($($t:tt)*) => {
        sqlx::AssertSqlSafe(format!($($t)*))
    };
}

/// The row `select` finds by one bound value, if any.
pub(crate) async fn row_by<'e, R, E, T>(
    executor: E,
    select: sqlx::AssertSqlSafe<String>,
    value: T,
) -> Result<Option<R>>
where
    E: sqlx::Executor<'e, Database = Db>,
    R: for<'r> sqlx::FromRow<'r, <Db as sqlx::Database>::Row> + Send + Unpin,
    T: 'static + for<'t> sqlx::Encode<'t, Db> + sqlx::Type<Db> + Send,
{
    sqlx::query_as::<_, R>(select)
        .bind(value)
        .fetch_optional(executor)
        .await
        .db()
}

/// Bind values for a statement run more than once (see [`page_of`]).
pub(crate) type Args = <Db as sqlx::Database>::Arguments;

pub(crate) fn add<T>(args: &mut Args, value: T) -> Result<()>
where
    T: for<'t> sqlx::Encode<'t, Db> + sqlx::Type<Db>,
{
    use sqlx::Arguments as _;
    args.add(value).map_err(StoreError::Other)
}

/// One page of `select` (ending in its ORDER BY) and the count of `count`,
/// both with the same `args` (LIMIT and OFFSET are appended after them).
pub(crate) async fn page_of<R>(
    pool: &sqlx::Pool<Db>,
    select: &str,
    count: &str,
    args: Args,
    page: Page,
) -> Result<(Vec<R>, u64)>
where
    R: for<'r> sqlx::FromRow<'r, <Db as sqlx::Database>::Row> + Send + Unpin,
{
    use sqlx::Arguments as _;
    let n = args.len();
    let mut paged = args.clone();
    add(&mut paged, i64::from(page.per_page))?;
    add(&mut paged, page.offset())?;
    let rows: Vec<R> =
        sqlx::query_as_with(sql!("{select} LIMIT ${} OFFSET ${}", n + 1, n + 2), paged)
            .fetch_all(pool)
            .await
            .db()?;
    let total: i64 = sqlx::query_scalar_with(sqlx::AssertSqlSafe(count.to_owned()), args)
        .fetch_one(pool)
        .await
        .db()?;
    Ok((rows, total.max(0) as u64))
}

pub(crate) async fn bump_policy(conn: &mut Conn, policy_id: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE agent_policies SET revision = revision + 1, updated_at = $2 WHERE id = $1")
        .bind(policy_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .db()?;
    Ok(())
}

/// Bump every policy whose data goes to this output (explicitly, or
/// implicitly through the default).
pub(crate) async fn bump_output_policies(
    conn: &mut Conn,
    output_id: &str,
    is_default: bool,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE agent_policies SET revision = revision + 1, updated_at = $2 \
                 WHERE output_id = $1 OR (output_id IS NULL AND $3)",
    )
    .bind(output_id)
    .bind(now)
    .bind(is_default)
    .execute(&mut *conn)
    .await
    .db()?;
    Ok(())
}

pub(crate) async fn fetch_output(conn: &mut Conn, id: &str) -> Result<Output> {
    row_by::<OutputRow, _, _>(
        &mut *conn,
        sql!("SELECT {OUTPUT_COLS} FROM outputs WHERE id = $1"),
        id.to_owned(),
    )
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Output, id))?
    .try_into()
}

pub(crate) async fn fetch_policy(conn: &mut Conn, id: &str) -> Result<AgentPolicy> {
    row_by::<PolicyRow, _, _>(
        &mut *conn,
        sql!("SELECT {POLICY_COLS} FROM agent_policies WHERE id = $1"),
        id.to_owned(),
    )
    .await?
    .map(Into::into)
    .ok_or_else(|| StoreError::not_found(Entity::AgentPolicy, id))
}

/// Whether the policy exists, holding its row lock until the
/// transaction ends (a no-op update takes the lock on PostgreSQL;
/// SQLite serialises writers anyway), so a concurrent delete cannot
/// slip between this check and what the transaction writes.
pub(crate) async fn policy_exists(conn: &mut Conn, id: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE agent_policies SET revision = revision WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .db()?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn count(conn: &mut Conn, sql: &'static str, id: &str) -> Result<i64> {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .db()
}

pub(crate) async fn execute_with_id(conn: &mut Conn, sql: &'static str, id: &str) -> Result<u64> {
    Ok(sqlx::query(sql)
        .bind(id)
        .execute(&mut *conn)
        .await
        .db()?
        .rows_affected())
}

/// Take the agent's row lock for the rest of the transaction.
pub(crate) async fn lock_agent(conn: &mut Conn, id: &str) -> Result<()> {
    sqlx::query("UPDATE agents SET updated_at = updated_at WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .db()?;
    Ok(())
}

pub(crate) async fn output_exists(conn: &mut Conn, id: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outputs WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn write_package_policy(
    conn: &mut Conn,
    insert: bool,
    id: &str,
    new: &NewPackagePolicy,
    now: i64,
) -> Result<()> {
    // The connector's row lock, held to the end of the transaction: a
    // concurrent delete of the connector waits, then sees this integration.
    if let Some(c) = &new.cloud_connector_id {
        if !super::connectors::lock_connector(&mut *conn, c).await? {
            return Err(StoreError::not_found(Entity::CloudConnector, c));
        }
    }
    let sql = if insert {
        "INSERT INTO package_policies (id, name, description, policy_id, package_name, package_version, \
                 namespace, vars, inputs, cloud_connector_id, secret_references, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $11, $11)"
    } else {
        "UPDATE package_policies SET name = $2, description = $3, policy_id = $4, package_name = $5, \
                 package_version = $6, namespace = $7, vars = $8, inputs = $9, cloud_connector_id = $10, \
                 secret_references = $12, updated_at = $11 WHERE id = $1"
    };
    sqlx::query(sql)
        .bind(id)
        .bind(&new.name)
        .bind(&new.description)
        .bind(&new.policy_id)
        .bind(&new.package.name)
        .bind(&new.package.version)
        .bind(&new.namespace)
        .bind(to_json(&new.vars))
        .bind(to_json(&new.inputs))
        .bind(&new.cloud_connector_id)
        .bind(now)
        .bind(to_json(&new.secret_references))
        .execute(&mut *conn)
        .await
        .or_conflict(|| format!("an integration named '{}' already exists", new.name))?;
    Ok(())
}

pub(crate) async fn fetch_package_policy(conn: &mut Conn, id: &str) -> Result<PackagePolicy> {
    row_by::<PackagePolicyRow, _, _>(
        &mut *conn,
        sql!("SELECT {PP_COLS} FROM package_policies WHERE id = $1"),
        id.to_owned(),
    )
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Integration, id))?
    .try_into()
}

pub(crate) async fn insert_key(conn: &mut Conn, key: &ApiKeyRecord) -> Result<()> {
    sqlx::query(
                "INSERT INTO api_keys (id, name, kind, agent_id, secret_hash, role_descriptors, metadata, created_at, \
                 retire_pending, invalidated_at, owner, expires_at, remote_output) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(&key.id)
            .bind(&key.name)
            .bind(key.kind.as_str())
            .bind(&key.agent_id)
            .bind(&key.secret_hash)
            .bind(to_json(&key.role_descriptors))
            .bind(to_json(&key.metadata))
            .bind(ms(key.created_at))
            .bind(key.retire_pending)
            .bind(key.invalidated_at.map(ms))
            .bind(&key.owner)
            .bind(key.expires_at.map(ms))
            .bind(&key.remote_output)
            .execute(&mut *conn)
            .await
            .or_conflict(|| format!("API key '{}' already exists", key.id))?;
    Ok(())
}

/// [`insert_key`] for many keys in one statement (the caller keeps the
/// number of bound parameters, 13 a key, within the engines' limits).
pub(crate) async fn insert_keys(conn: &mut Conn, keys: &[&ApiKeyRecord]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::query(sql!(
        "INSERT INTO api_keys (id, name, kind, agent_id, secret_hash, role_descriptors, metadata, created_at, \
         retire_pending, invalidated_at, owner, expires_at, remote_output) VALUES {}",
        seq_rows(keys.len(), 13)
    ));
    for key in keys {
        q = q
            .bind(&key.id)
            .bind(&key.name)
            .bind(key.kind.as_str())
            .bind(&key.agent_id)
            .bind(&key.secret_hash)
            .bind(to_json(&key.role_descriptors))
            .bind(to_json(&key.metadata))
            .bind(ms(key.created_at))
            .bind(key.retire_pending)
            .bind(key.invalidated_at.map(ms))
            .bind(&key.owner)
            .bind(key.expires_at.map(ms))
            .bind(&key.remote_output);
    }
    q.execute(&mut *conn)
        .await
        .or_conflict(|| "an API key of the batch already exists".to_owned())?;
    Ok(())
}

pub(crate) async fn insert_tags(conn: &mut Conn, agent_id: &str, tags: &[String]) -> Result<()> {
    for tag in tags {
        sqlx::query(
            "INSERT INTO agent_tags (agent_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(agent_id)
        .bind(tag)
        .execute(&mut *conn)
        .await
        .db()?;
    }
    Ok(())
}

pub(crate) async fn insert_agent_row(conn: &mut Conn, agent: &NewAgent) -> Result<()> {
    sqlx::query(
        "INSERT INTO agents (id, policy_id, active, enrolled_at, updated_at, \
                 access_api_key_id, enrollment_id, replace_token_hash, enroll_type, agent_version, \
                 enrollment_api_key_id) \
                 VALUES ($1, $2, TRUE, $3, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&agent.id)
    .bind(&agent.policy_id)
    .bind(ms(agent.enrolled_at))
    .bind(&agent.access_api_key_id)
    .bind(&agent.enrollment_id)
    .bind(&agent.replace_token_hash)
    .bind(&agent.enroll_type)
    .bind(&agent.agent_version)
    .bind(&agent.enrollment_api_key_id)
    .execute(&mut *conn)
    .await
    .or_conflict(|| format!("agent '{}' already exists", agent.id))?;
    sqlx::query("INSERT INTO agent_reports (agent_id, local_metadata) VALUES ($1, $2)")
        .bind(&agent.id)
        .bind(to_json(&agent.local_metadata))
        .execute(&mut *conn)
        .await
        .db()?;
    insert_tags(conn, &agent.id, &agent.tags).await
}

pub(crate) async fn invalidate_agent_keys(conn: &mut Conn, agent_id: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE api_keys SET invalidated_at = $2 WHERE agent_id = $1 AND invalidated_at IS NULL",
    )
    .bind(agent_id)
    .bind(now)
    .execute(&mut *conn)
    .await
    .db()?;
    Ok(())
}

pub(crate) async fn remove_agent(conn: &mut Conn, agent_id: &str, now: i64) -> Result<()> {
    invalidate_agent_keys(conn, agent_id, now).await?;
    for sql in [
        "DELETE FROM action_targets WHERE agent_id = $1",
        "DELETE FROM agent_tags WHERE agent_id = $1",
        "DELETE FROM agents WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(agent_id)
            .execute(&mut *conn)
            .await
            .db()?;
    }
    Ok(())
}

/// Marks the agent unenrolled and invalidates every key it holds; whether
/// it exists.
pub(crate) async fn unenroll_in(conn: &mut Conn, agent_id: &str, now: i64) -> Result<bool> {
    let done = sqlx::query(
                "UPDATE agents SET active = FALSE, unenrolled_at = COALESCE(unenrolled_at, $2), updated_at = $2 \
                 WHERE id = $1",
            )
            .bind(agent_id)
            .bind(now)
            .execute(&mut *conn)
            .await
            .db()?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    invalidate_agent_keys(conn, agent_id, now).await?;
    Ok(true)
}

pub(crate) async fn insert_action(conn: &mut Conn, action: &NewAction) -> Result<()> {
    sqlx::query("INSERT INTO actions (id, action_type, data, created_at, expiration) VALUES ($1, $2, $3, $4, $5)")
                .bind(&action.id)
                .bind(action.action_type.as_str())
                .bind(to_json(&action.data))
                .bind(ms(action.created_at))
                .bind(action.expiration.map(ms))
                .execute(&mut *conn)
                .await
                .or_conflict(|| format!("action '{}' already exists", action.id))?;
    for agent in &action.agent_ids {
        sqlx::query("INSERT INTO action_targets (action_id, agent_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(&action.id)
                    .bind(agent)
                    .execute(&mut *conn)
                    .await
                    .db()?;
    }
    Ok(())
}

pub(crate) async fn fetch_fleet_agent(conn: &mut Conn, id: &str) -> Result<Option<FleetAgent>> {
    Ok(row_by::<FleetAgentRow, _, _>(
        &mut *conn,
        sql!("SELECT {FLEET_AGENT_COLS} FROM agents WHERE id = $1"),
        id.to_owned(),
    )
    .await?
    .map(Into::into))
}

pub(crate) async fn agents_query(
    s: &Engine,
    filter: &AgentFilter,
    id: Option<&str>,
    page: Page,
    now: DateTime<Utc>,
) -> Result<Paged<Agent>> {
    let mut args = Args::default();
    add(&mut args, filter.policy_id.clone())?;
    add(&mut args, filter.status.map(|s| s.as_str().to_owned()))?;
    add(&mut args, filter.tag.clone())?;
    let asks_status = filter
        .kuery
        .as_ref()
        .is_some_and(|k| k.mentions(flotilla_domain::kuery::Field::Status));
    add(
        &mut args,
        filter.show_inactive || id.is_some() || asks_status,
    )?;
    add(&mut args, ms(now))?;
    add(&mut args, id.map(str::to_owned))?;
    add(
        &mut args,
        s.offline_after_ms
            .load(std::sync::atomic::Ordering::Relaxed),
    )?;
    add(&mut args, filter.enrollment_api_key_id.clone())?;
    let (rows, total) = if id.is_some() {
        let rows: Vec<AgentRow> =
            sqlx::query_as_with(concat!(agent_select_sql!(), agent_by_id_where_sql!()), args)
                .fetch_all(&s.pool)
                .await
                .db()?;
        let n = rows.len() as u64;
        (rows, n)
    } else {
        let mut kuery = match &filter.kuery {
            Some(k) => format!(" AND ({})", super::kuery::compile(k, &mut args, 9)?),
            None => String::new(),
        };
        if filter.policy_change_failed {
            kuery.push_str(" AND a.policy_change_failure IS NOT NULL");
        }
        page_of::<AgentRow>(
            &s.pool,
            &format!(
                "{}{}{kuery} ORDER BY {}",
                agent_select_sql!(),
                agent_where_sql!(),
                super::kuery::order_by(filter.sort)
            ),
            &format!("SELECT COUNT(*){}{kuery}", agent_where_sql!()),
            args,
            page,
        )
        .await?
    };
    let mut tags: std::collections::HashMap<String, Vec<String>> = Default::default();
    if !rows.is_empty() {
        let mut qb = sqlx::QueryBuilder::<Db>::new(
            "SELECT agent_id, tag FROM agent_tags WHERE agent_id IN (",
        );
        let mut sep = qb.separated(", ");
        for r in &rows {
            sep.push_bind(r.id.clone());
        }
        qb.push(") ORDER BY agent_id, tag");
        let pairs: Vec<(String, String)> = qb.build_query_as().fetch_all(&s.pool).await.db()?;
        for (agent, tag) in pairs {
            tags.entry(agent).or_default().push(tag);
        }
    }
    let items = rows
        .into_iter()
        .map(|r| {
            let t = tags.remove(&r.id).unwrap_or_default();
            r.into_agent(t)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Paged { items, total })
}

/// The ids of the agents `filter` selects after `after`, in id order.
pub(crate) async fn agent_ids(
    s: &Engine,
    filter: &AgentFilter,
    after: Option<&str>,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let mut args = Args::default();
    add(&mut args, filter.policy_id.clone())?;
    add(&mut args, filter.status.map(|s| s.as_str().to_owned()))?;
    add(&mut args, filter.tag.clone())?;
    let asks_status = filter
        .kuery
        .as_ref()
        .is_some_and(|k| k.mentions(flotilla_domain::kuery::Field::Status));
    add(&mut args, filter.show_inactive || asks_status)?;
    add(&mut args, ms(now))?;
    add(&mut args, None::<String>)?;
    add(
        &mut args,
        s.offline_after_ms
            .load(std::sync::atomic::Ordering::Relaxed),
    )?;
    add(&mut args, filter.enrollment_api_key_id.clone())?;
    add(&mut args, after.map(str::to_owned))?;
    add(&mut args, i64::from(limit))?;
    let mut kuery = match &filter.kuery {
        Some(k) => format!(" AND ({})", super::kuery::compile(k, &mut args, 11)?),
        None => String::new(),
    };
    if filter.policy_change_failed {
        kuery.push_str(" AND a.policy_change_failure IS NOT NULL");
    }
    sqlx::query_scalar_with(
        sql!(
            "SELECT a.id{}{kuery} AND ($9 IS NULL OR a.id > $9) ORDER BY a.id LIMIT $10",
            agent_where_sql!()
        ),
        args,
    )
    .fetch_all(&s.pool)
    .await
    .db()
}

pub(crate) async fn agent_after_write(s: &Engine, id: &str, now: DateTime<Utc>) -> Result<Agent> {
    s.get_agent(id, now).await
}

pub(crate) async fn agent_write_failed(s: &Engine, id: &str, now: DateTime<Utc>) -> StoreError {
    match s.get_agent(id, now).await {
        Ok(a) if !a.active => StoreError::Conflict(format!("agent '{id}' is unenrolled")),
        Ok(_) => StoreError::Conflict(format!("agent '{id}' changed concurrently")),
        Err(e) => e,
    }
}

/// `n` parameters from the `from`th, comma-separated, for a statement
/// whose parameters each appear once, in the order they are bound (plain
/// `?` on SQLite: see `seq_param`). Batch statements use these.
pub(crate) fn seq_params(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|p| seq_param(p).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rows` rows of `cols` parameters, `(…), (…)`, as [`seq_params`].
pub(crate) fn seq_rows(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", seq_params(r * cols + 1, cols)))
        .collect::<Vec<_>>()
        .join(", ")
}
