//! The `Store` implementation shared by both engines.
//!
//! The SQL is portable (see the migration's header), so one text serves
//! SQLite and PostgreSQL; a macro stamps it out for each engine's concrete
//! sqlx types, which avoids both an ORM and sqlx's generic-database bounds.
//! Engine-specific behaviour (connection set-up, write transactions, and
//! later LISTEN/NOTIFY and SKIP LOCKED) lives in each engine's module.

/// Derives an agent's status from stored facts; `$7` is "now" in ms. The
/// rule is documented on `flotilla_domain::agent::OFFLINE_AFTER_SECS`.
macro_rules! agent_status_sql {
    () => {
        "CASE WHEN NOT a.active THEN 'unenrolled' \
         WHEN a.last_checkin IS NULL THEN \
            (CASE WHEN a.unenrollment_started_at IS NULL THEN 'enrolling' ELSE 'unenrolling' END) \
         WHEN a.last_checkin < $7 - COALESCE(p.inactivity_timeout, 1209600) * 1000 THEN 'inactive' \
         WHEN a.last_checkin < $7 - 300000 THEN 'offline' \
         WHEN a.unenrollment_started_at IS NOT NULL THEN 'unenrolling' \
         WHEN a.last_checkin_status IN ('error', 'failed') THEN 'error' \
         WHEN a.last_checkin_status = 'degraded' THEN 'degraded' \
         ELSE 'online' END"
    };
}

/// The agent query with its filters: `$1` policy, `$2` status, `$3` tag,
/// `$4` include inactive, `$7` now.
macro_rules! agent_where_sql {
    () => {
        concat!(" FROM agents a LEFT JOIN agent_policies p ON p.id = a.policy_id \
          WHERE ($1 IS NULL OR a.policy_id = $1) \
            AND ($2 IS NULL OR (", agent_status_sql!(), ") = $2) \
            AND ($3 IS NULL OR EXISTS (SELECT 1 FROM agent_tags t WHERE t.agent_id = a.id AND t.tag = $3)) \
            AND ($4 OR a.active OR $2 IS NOT NULL) \
            AND ($8 IS NULL OR a.id = $8)")
    };
}

macro_rules! agent_select_sql {
    () => {
        concat!("SELECT a.id, a.policy_id, a.policy_revision, a.active, a.local_metadata, a.last_checkin, \
                a.last_checkin_status, a.last_checkin_message, a.enrolled_at, \
                a.unenrollment_started_at, a.unenrolled_at, a.agent_version, a.components, \
                a.reported_policy_id, a.reported_policy_revision, (",
        agent_status_sql!(),
        ") AS status")
    };
}

macro_rules! impl_store {
    ($store:ty, $db:ty, $engine:literal) => {
        use async_trait::async_trait;
        use chrono::{DateTime, Utc};

        use flotilla_domain::agent::Agent;
        use flotilla_domain::apikey::OperatorApiKey;
        use flotilla_domain::enrollment::EnrollmentApiKey;
        use flotilla_domain::output::{NewOutput, Output, OutputUpdate};
        use flotilla_domain::package_policy::{NewPackagePolicy, PackagePolicy};
        use flotilla_domain::policy::{AgentPolicy, AgentPolicyUpdate, NewAgentPolicy};
        use flotilla_domain::action::{Action, ActionType, AgentActionStatus};
        use flotilla_store::{
            ActionAck, AgentFilter, ApiKeyRecord, CheckinRecord, EnrollmentKeyFilter, FleetAgent, NewAction,
            NewAgent, OutputKeyChange, Page, Paged, PackagePolicyFilter, PolicyFilter, Result, Store, StoreError,
            StoreEvent,
        };

        use crate::rows::*;

        const OUTPUT_COLS: &str = "id, name, output_type, hosts, is_default, created_at, updated_at";
        const POLICY_COLS: &str =
            "id, name, namespace, description, output_id, inactivity_timeout, revision, created_at, updated_at";
        const PP_COLS: &str = "id, name, description, policy_id, package_name, package_version, namespace, vars, \
                               inputs, cloud_connector_id, created_at, updated_at";
        const EK_COLS: &str = "id, name, policy_id, hint, active, created_at";
        const OK_COLS: &str = "id, name, hint, active, created_at";

        fn like_pattern(s: &str) -> String {
            let escaped = s.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{escaped}%")
        }

        type Tx<'a> = sqlx::Transaction<'a, $db>;

        async fn bump_policy(tx: &mut Tx<'_>, policy_id: &str, now: i64) -> Result<()> {
            sqlx::query("UPDATE agent_policies SET revision = revision + 1, updated_at = $2 WHERE id = $1")
                .bind(policy_id)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(other)?;
            Ok(())
        }

        /// Bump every policy whose data goes to this output (explicitly, or
        /// implicitly through the default).
        async fn bump_output_policies(tx: &mut Tx<'_>, output_id: &str, is_default: bool, now: i64) -> Result<()> {
            sqlx::query(
                "UPDATE agent_policies SET revision = revision + 1, updated_at = $2 \
                 WHERE output_id = $1 OR (output_id IS NULL AND $3)",
            )
            .bind(output_id)
            .bind(now)
            .bind(is_default)
            .execute(&mut **tx)
            .await
            .map_err(other)?;
            Ok(())
        }

        async fn fetch_output(tx: &mut Tx<'_>, id: &str) -> Result<Output> {
            sqlx::query_as::<_, OutputRow>(&format!("SELECT {OUTPUT_COLS} FROM outputs WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(other)?
                .ok_or_else(|| StoreError::NotFound(format!("output '{id}'")))?
                .try_into()
        }

        async fn fetch_policy(tx: &mut Tx<'_>, id: &str) -> Result<AgentPolicy> {
            sqlx::query_as::<_, PolicyRow>(&format!("SELECT {POLICY_COLS} FROM agent_policies WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(other)?
                .map(Into::into)
                .ok_or_else(|| StoreError::NotFound(format!("agent policy '{id}'")))
        }

        /// Whether the policy exists, holding its row lock until the
        /// transaction ends (a no-op update takes the lock on PostgreSQL;
        /// SQLite serialises writers anyway), so a concurrent delete cannot
        /// slip between this check and what the transaction writes.
        async fn policy_exists(tx: &mut Tx<'_>, id: &str) -> Result<bool> {
            let done = sqlx::query("UPDATE agent_policies SET revision = revision WHERE id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(other)?;
            Ok(done.rows_affected() > 0)
        }

        async fn count(tx: &mut Tx<'_>, sql: &str, id: &str) -> Result<i64> {
            sqlx::query_scalar(sql).bind(id).fetch_one(&mut **tx).await.map_err(other)
        }

        async fn execute_with_id(tx: &mut Tx<'_>, sql: &str, id: &str) -> Result<u64> {
            Ok(sqlx::query(sql).bind(id).execute(&mut **tx).await.map_err(other)?.rows_affected())
        }

        /// Take the agent's row lock for the rest of the transaction.
        async fn lock_agent(tx: &mut Tx<'_>, id: &str) -> Result<()> {
            sqlx::query("UPDATE agents SET updated_at = updated_at WHERE id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(other)?;
            Ok(())
        }

        async fn output_exists(tx: &mut Tx<'_>, id: &str) -> Result<bool> {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outputs WHERE id = $1")
                .bind(id)
                .fetch_one(&mut **tx)
                .await
                .map_err(other)?;
            Ok(n > 0)
        }

        async fn write_package_policy(
            tx: &mut Tx<'_>,
            insert: bool,
            id: &str,
            new: &NewPackagePolicy,
            now: i64,
        ) -> Result<()> {
            let sql = if insert {
                "INSERT INTO package_policies (id, name, description, policy_id, package_name, package_version, \
                 namespace, vars, inputs, cloud_connector_id, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)"
            } else {
                "UPDATE package_policies SET name = $2, description = $3, policy_id = $4, package_name = $5, \
                 package_version = $6, namespace = $7, vars = $8, inputs = $9, cloud_connector_id = $10, \
                 updated_at = $11 WHERE id = $1"
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
                .execute(&mut **tx)
                .await
                .map_err(|e| db_err(e, || format!("an integration named '{}' already exists", new.name)))?;
            Ok(())
        }

        async fn fetch_package_policy(tx: &mut Tx<'_>, id: &str) -> Result<PackagePolicy> {
            sqlx::query_as::<_, PackagePolicyRow>(&format!("SELECT {PP_COLS} FROM package_policies WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(other)?
                .ok_or_else(|| StoreError::NotFound(format!("integration '{id}'")))?
                .try_into()
        }

        async fn insert_key(tx: &mut Tx<'_>, key: &ApiKeyRecord) -> Result<()> {
            sqlx::query(
                "INSERT INTO api_keys (id, name, kind, agent_id, secret_hash, role_descriptors, metadata, created_at, \
                 retire_pending, invalidated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.kind)
            .bind(&key.agent_id)
            .bind(&key.secret_hash)
            .bind(to_json(&key.role_descriptors))
            .bind(to_json(&key.metadata))
            .bind(ms(key.created_at))
            .bind(key.retire_pending)
            .bind(key.invalidated_at.map(ms))
            .execute(&mut **tx)
            .await
            .map_err(|e| db_err(e, || format!("API key '{}' already exists", key.id)))?;
            Ok(())
        }

        async fn insert_tags(tx: &mut Tx<'_>, agent_id: &str, tags: &[String]) -> Result<()> {
            for tag in tags {
                sqlx::query("INSERT INTO agent_tags (agent_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(agent_id)
                    .bind(tag)
                    .execute(&mut **tx)
                    .await
                    .map_err(other)?;
            }
            Ok(())
        }

        async fn insert_agent_row(tx: &mut Tx<'_>, agent: &NewAgent) -> Result<()> {
            sqlx::query(
                "INSERT INTO agents (id, policy_id, active, local_metadata, enrolled_at, updated_at, \
                 access_api_key_id, enrollment_id, replace_token_hash, enroll_type, agent_version) \
                 VALUES ($1, $2, TRUE, $3, $4, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&agent.id)
            .bind(&agent.policy_id)
            .bind(to_json(&agent.local_metadata))
            .bind(ms(agent.enrolled_at))
            .bind(&agent.access_api_key_id)
            .bind(&agent.enrollment_id)
            .bind(&agent.replace_token_hash)
            .bind(&agent.enroll_type)
            .bind(&agent.agent_version)
            .execute(&mut **tx)
            .await
            .map_err(|e| db_err(e, || format!("agent '{}' already exists", agent.id)))?;
            insert_tags(tx, &agent.id, &agent.tags).await
        }

        async fn invalidate_agent_keys(tx: &mut Tx<'_>, agent_id: &str, now: i64) -> Result<()> {
            sqlx::query("UPDATE api_keys SET invalidated_at = $2 WHERE agent_id = $1 AND invalidated_at IS NULL")
                .bind(agent_id)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(other)?;
            Ok(())
        }

        async fn remove_agent(tx: &mut Tx<'_>, agent_id: &str, now: i64) -> Result<()> {
            invalidate_agent_keys(tx, agent_id, now).await?;
            for sql in [
                "DELETE FROM action_targets WHERE agent_id = $1",
                "DELETE FROM agent_tags WHERE agent_id = $1",
                "DELETE FROM agents WHERE id = $1",
            ] {
                sqlx::query(sql).bind(agent_id).execute(&mut **tx).await.map_err(other)?;
            }
            Ok(())
        }

/// Marks the agent unenrolled and invalidates every key it holds; whether
        /// it exists.
        async fn unenroll_in(tx: &mut Tx<'_>, agent_id: &str, now: i64) -> Result<bool> {
            let done = sqlx::query(
                "UPDATE agents SET active = FALSE, unenrolled_at = COALESCE(unenrolled_at, $2), updated_at = $2 \
                 WHERE id = $1",
            )
            .bind(agent_id)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(other)?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            invalidate_agent_keys(tx, agent_id, now).await?;
            Ok(true)
        }

async fn insert_action(tx: &mut Tx<'_>, action: &NewAction) -> Result<()> {
            sqlx::query("INSERT INTO actions (id, action_type, data, created_at, expiration) VALUES ($1, $2, $3, $4, $5)")
                .bind(&action.id)
                .bind(action.action_type.as_str())
                .bind(to_json(&action.data))
                .bind(ms(action.created_at))
                .bind(action.expiration.map(ms))
                .execute(&mut **tx)
                .await
                .map_err(|e| db_err(e, || format!("action '{}' already exists", action.id)))?;
            for agent in &action.agent_ids {
                sqlx::query("INSERT INTO action_targets (action_id, agent_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(&action.id)
                    .bind(agent)
                    .execute(&mut **tx)
                    .await
                    .map_err(other)?;
            }
            Ok(())
        }

        async fn fetch_fleet_agent(tx: &mut Tx<'_>, id: &str) -> Result<Option<FleetAgent>> {
            Ok(sqlx::query_as::<_, FleetAgentRow>(&format!("SELECT {FLEET_AGENT_COLS} FROM agents WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(other)?
                .map(Into::into))
        }

        impl $store {
            async fn agents_query(
                &self,
                filter: &AgentFilter,
                id: Option<&str>,
                page: Page,
                now: DateTime<Utc>,
            ) -> Result<Paged<Agent>> {
                let status = filter.status.map(|s| s.as_str());
                let rows: Vec<AgentRow> = sqlx::query_as(concat!(
                    agent_select_sql!(),
                    agent_where_sql!(),
                    " ORDER BY a.enrolled_at DESC, a.id LIMIT $5 OFFSET $6"
                ))
                .bind(&filter.policy_id)
                .bind(status)
                .bind(&filter.tag)
                .bind(filter.show_inactive || id.is_some())
                .bind(i64::from(page.per_page))
                .bind(page.offset())
                .bind(ms(now))
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
                let total: i64 = if id.is_some() {
                    rows.len() as i64
                } else {
                    // $5 and $6 are unused here but bound to keep numbering.
                    sqlx::query_scalar(concat!(
                        "SELECT COUNT(*)",
                        agent_where_sql!(),
                        " AND $5 >= 0 AND $6 >= 0"
                    ))
                    .bind(&filter.policy_id)
                    .bind(status)
                    .bind(&filter.tag)
                    .bind(filter.show_inactive)
                    .bind(i64::from(page.per_page))
                    .bind(page.offset())
                    .bind(ms(now))
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(other)?
                };
                let mut tags: std::collections::HashMap<String, Vec<String>> = Default::default();
                if !rows.is_empty() {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT agent_id, tag FROM agent_tags WHERE agent_id IN (");
                    let mut sep = qb.separated(", ");
                    for r in &rows {
                        sep.push_bind(r.id.clone());
                    }
                    qb.push(") ORDER BY agent_id, tag");
                    let pairs: Vec<(String, String)> =
                        qb.build_query_as().fetch_all(&self.pool).await.map_err(other)?;
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
                Ok(Paged { items, total: total.max(0) as u64 })
            }

            async fn agent_after_write(&self, id: &str, now: DateTime<Utc>) -> Result<Agent> {
                self.get_agent(id, now).await
            }

            async fn agent_write_failed(&self, id: &str, now: DateTime<Utc>) -> StoreError {
                match self.get_agent(id, now).await {
                    Ok(a) if !a.active => StoreError::Conflict(format!("agent '{id}' is unenrolled")),
                    Ok(_) => StoreError::Conflict(format!("agent '{id}' changed concurrently")),
                    Err(e) => e,
                }
            }
        }

        #[async_trait]
        impl Store for $store {
            fn engine(&self) -> &'static str {
                $engine
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await.map_err(other)?;
                Ok(())
            }

            // --- outputs ---------------------------------------------------

            async fn create_output(&self, id: &str, new: &NewOutput, now: DateTime<Utc>) -> Result<Output> {
                let now = ms(now);
                let mut tx = self.begin_write().await?;
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outputs")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(other)?;
                let is_default = new.is_default || count == 0;
                if is_default {
                    sqlx::query("UPDATE outputs SET is_default = FALSE, updated_at = $1 WHERE is_default")
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(other)?;
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
                .map_err(|e| db_err(e, || format!("an output named '{}' or with id '{id}' already exists", new.name)))?;
                if is_default {
                    bump_output_policies(&mut tx, id, true, now).await?;
                }
                let out = fetch_output(&mut tx, id).await?;
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::PolicyChanged { policy_id: None }).await;
                Ok(out)
            }

            async fn get_output(&self, id: &str) -> Result<Output> {
                sqlx::query_as::<_, OutputRow>(&format!("SELECT {OUTPUT_COLS} FROM outputs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(other)?
                    .ok_or_else(|| StoreError::NotFound(format!("output '{id}'")))?
                    .try_into()
            }

            async fn default_output(&self) -> Result<Option<Output>> {
                sqlx::query_as::<_, OutputRow>(&format!("SELECT {OUTPUT_COLS} FROM outputs WHERE is_default"))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(other)?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn list_outputs(&self, page: Page) -> Result<Paged<Output>> {
                let rows: Vec<OutputRow> = sqlx::query_as(&format!(
                    "SELECT {OUTPUT_COLS} FROM outputs ORDER BY created_at, id LIMIT $1 OFFSET $2"
                ))
                .bind(i64::from(page.per_page))
                .bind(page.offset())
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outputs")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(other)?;
                Ok(Paged {
                    items: rows.into_iter().map(TryInto::try_into).collect::<Result<_>>()?,
                    total: total as u64,
                })
            }

            async fn update_output(&self, id: &str, update: &OutputUpdate, now: DateTime<Utc>) -> Result<Output> {
                let now = ms(now);
                let mut tx = self.begin_write().await?;
                // Row lock first, so concurrent updates apply in turn.
                execute_with_id(&mut tx, "UPDATE outputs SET updated_at = updated_at WHERE id = $1", id).await?;
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
                        .map_err(other)?;
                    sqlx::query("UPDATE outputs SET is_default = FALSE, updated_at = $1 WHERE is_default")
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(other)?;
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
                .map_err(|e| db_err(e, || format!("an output named '{name}' already exists")))?;
                // Policies naming this output changed too (when it became the
                // default, those on the default were bumped above).
                bump_output_policies(&mut tx, id, current.is_default, now).await?;
                let out = fetch_output(&mut tx, id).await?;
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::PolicyChanged { policy_id: None }).await;
                Ok(out)
            }

            async fn delete_output(&self, id: &str) -> Result<()> {
                let mut tx = self.begin_write().await?;
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
                            "the default output cannot be deleted; make another output the default first".into(),
                        ));
                    }
                    let users = count(&mut tx, "SELECT COUNT(*) FROM agent_policies WHERE output_id = $1", id).await?;
                    return Err(StoreError::Conflict(format!(
                        "output '{id}' is used by {users} agent policies"
                    )));
                }
                tx.commit().await.map_err(other)?;
                Ok(())
            }

            // --- agent policies --------------------------------------------

            async fn create_policy(&self, new: &NewAgentPolicy, now: DateTime<Utc>) -> Result<AgentPolicy> {
                let now = ms(now);
                let mut tx = self.begin_write().await?;
                if let Some(output) = &new.output_id {
                    if !output_exists(&mut tx, output).await? {
                        return Err(StoreError::NotFound(format!("output '{output}'")));
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
                .map_err(|e| {
                    db_err(e, || format!("an agent policy named '{}' or with id '{}' already exists", new.name, new.id))
                })?;
                let policy = fetch_policy(&mut tx, &new.id).await?;
                tx.commit().await.map_err(other)?;
                Ok(policy)
            }

            async fn get_policy(&self, id: &str) -> Result<AgentPolicy> {
                sqlx::query_as::<_, PolicyRow>(&format!("SELECT {POLICY_COLS} FROM agent_policies WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(other)?
                    .map(Into::into)
                    .ok_or_else(|| StoreError::NotFound(format!("agent policy '{id}'")))
            }

            async fn list_policies(&self, filter: &PolicyFilter, page: Page) -> Result<Paged<AgentPolicy>> {
                let pattern = filter.name.as_deref().map(like_pattern);
                let rows: Vec<PolicyRow> = sqlx::query_as(&format!(
                    "SELECT {POLICY_COLS} FROM agent_policies WHERE ($1 IS NULL OR LOWER(name) LIKE $1 ESCAPE '\\') \
                     ORDER BY created_at, id LIMIT $2 OFFSET $3"
                ))
                .bind(&pattern)
                .bind(i64::from(page.per_page))
                .bind(page.offset())
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
                let total: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM agent_policies WHERE ($1 IS NULL OR LOWER(name) LIKE $1 ESCAPE '\\')",
                )
                .bind(&pattern)
                .fetch_one(&self.pool)
                .await
                .map_err(other)?;
                Ok(Paged {
                    items: rows.into_iter().map(Into::into).collect(),
                    total: total as u64,
                })
            }

            async fn update_policy(&self, id: &str, update: &AgentPolicyUpdate, now: DateTime<Utc>) -> Result<AgentPolicy> {
                let now = ms(now);
                let mut tx = self.begin_write().await?;
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
                            return Err(StoreError::NotFound(format!("output '{o}'")));
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
                .map_err(|e| db_err(e, || format!("an agent policy named '{}' already exists", p.name)))?;
                let policy = fetch_policy(&mut tx, id).await?;
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::PolicyChanged { policy_id: Some(id.to_owned()) }).await;
                Ok(policy)
            }

            async fn delete_policy(&self, id: &str) -> Result<()> {
                let mut tx = self.begin_write().await?;
                if !policy_exists(&mut tx, id).await? {
                    return Err(StoreError::NotFound(format!("agent policy '{id}'")));
                }
                let agents = count(&mut tx, "SELECT COUNT(*) FROM agents WHERE policy_id = $1 AND active", id).await?;
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
                tx.commit().await.map_err(other)?;
                Ok(())
            }

            // --- package policies ------------------------------------------

            async fn create_package_policy(&self, new: &NewPackagePolicy, now: DateTime<Utc>) -> Result<PackagePolicy> {
                let now = ms(now);
                let mut tx = self.begin_write().await?;
                if !policy_exists(&mut tx, &new.policy_id).await? {
                    return Err(StoreError::NotFound(format!("agent policy '{}'", new.policy_id)));
                }
                write_package_policy(&mut tx, true, &new.id, new, now).await?;
                bump_policy(&mut tx, &new.policy_id, now).await?;
                let pp = fetch_package_policy(&mut tx, &new.id).await?;
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::PolicyChanged { policy_id: Some(new.policy_id.clone()) }).await;
                Ok(pp)
            }

            async fn get_package_policy(&self, id: &str) -> Result<PackagePolicy> {
                sqlx::query_as::<_, PackagePolicyRow>(&format!("SELECT {PP_COLS} FROM package_policies WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(other)?
                    .ok_or_else(|| StoreError::NotFound(format!("integration '{id}'")))?
                    .try_into()
            }

            async fn list_package_policies(&self, filter: &PackagePolicyFilter, page: Page) -> Result<Paged<PackagePolicy>> {
                let rows: Vec<PackagePolicyRow> = sqlx::query_as(&format!(
                    "SELECT {PP_COLS} FROM package_policies WHERE ($1 IS NULL OR policy_id = $1) \
                     AND ($2 IS NULL OR package_name = $2) ORDER BY created_at, id LIMIT $3 OFFSET $4"
                ))
                .bind(&filter.policy_id)
                .bind(&filter.package_name)
                .bind(i64::from(page.per_page))
                .bind(page.offset())
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
                let total: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM package_policies WHERE ($1 IS NULL OR policy_id = $1) \
                     AND ($2 IS NULL OR package_name = $2)",
                )
                .bind(&filter.policy_id)
                .bind(&filter.package_name)
                .fetch_one(&self.pool)
                .await
                .map_err(other)?;
                Ok(Paged {
                    items: rows.into_iter().map(TryInto::try_into).collect::<Result<_>>()?,
                    total: total as u64,
                })
            }

            async fn policy_integrations(&self, policy_id: &str) -> Result<Vec<PackagePolicy>> {
                let rows: Vec<PackagePolicyRow> = sqlx::query_as(&format!(
                    "SELECT {PP_COLS} FROM package_policies WHERE policy_id = $1 ORDER BY created_at, id"
                ))
                .bind(policy_id)
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn update_package_policy(
                &self,
                id: &str,
                new: &NewPackagePolicy,
                expected: Option<DateTime<Utc>>,
                now: DateTime<Utc>,
            ) -> Result<PackagePolicy> {
                let now = ms(now);
                let mut tx = self.begin_write().await?;
                execute_with_id(&mut tx, "UPDATE package_policies SET updated_at = updated_at WHERE id = $1", id).await?;
                let old = fetch_package_policy(&mut tx, id).await?;
                if expected.is_some_and(|e| ms(e) != ms(old.updated_at)) {
                    return Err(StoreError::Conflict(format!(
                        "integration '{id}' changed concurrently; read it again and retry"
                    )));
                }
                if old.policy_id != new.policy_id && !policy_exists(&mut tx, &new.policy_id).await? {
                    return Err(StoreError::NotFound(format!("agent policy '{}'", new.policy_id)));
                }
                write_package_policy(&mut tx, false, id, new, now).await?;
                bump_policy(&mut tx, &old.policy_id, now).await?;
                if old.policy_id != new.policy_id {
                    bump_policy(&mut tx, &new.policy_id, now).await?;
                }
                let pp = fetch_package_policy(&mut tx, id).await?;
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::PolicyChanged { policy_id: Some(old.policy_id.clone()) }).await;
                if old.policy_id != new.policy_id {
                    self.publish(StoreEvent::PolicyChanged { policy_id: Some(new.policy_id.clone()) }).await;
                }
                Ok(pp)
            }

            async fn delete_package_policy(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
                let now = ms(now);
                let mut tx = self.begin_write().await?;
                // The policy it was on when deleted, not when read: a
                // concurrent move to another policy must bump that one.
                let policy_id: Option<String> =
                    sqlx::query_scalar("DELETE FROM package_policies WHERE id = $1 RETURNING policy_id")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(other)?;
                let Some(policy_id) = policy_id else {
                    return Err(StoreError::NotFound(format!("integration '{id}'")));
                };
                bump_policy(&mut tx, &policy_id, now).await?;
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::PolicyChanged { policy_id: Some(policy_id) }).await;
                Ok(())
            }

            // --- enrollment keys -------------------------------------------

            async fn create_enrollment_key(&self, key: &EnrollmentApiKey, token_hash: &str) -> Result<EnrollmentApiKey> {
                let mut tx = self.begin_write().await?;
                if !policy_exists(&mut tx, &key.policy_id).await? {
                    return Err(StoreError::NotFound(format!("agent policy '{}'", key.policy_id)));
                }
                sqlx::query(
                    "INSERT INTO enrollment_api_keys (id, name, policy_id, token_hash, hint, active, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&key.id)
                .bind(&key.name)
                .bind(&key.policy_id)
                .bind(token_hash)
                .bind(&key.hint)
                .bind(key.active)
                .bind(ms(key.created_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err(e, || format!("enrollment key '{}' already exists", key.id)))?;
                tx.commit().await.map_err(other)?;
                self.get_enrollment_key(&key.id).await
            }

            async fn get_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey> {
                sqlx::query_as::<_, EnrollmentKeyRow>(&format!("SELECT {EK_COLS} FROM enrollment_api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(other)?
                    .map(Into::into)
                    .ok_or_else(|| StoreError::NotFound(format!("enrollment key '{id}'")))
            }

            async fn list_enrollment_keys(&self, filter: &EnrollmentKeyFilter, page: Page) -> Result<Paged<EnrollmentApiKey>> {
                let rows: Vec<EnrollmentKeyRow> = sqlx::query_as(&format!(
                    "SELECT {EK_COLS} FROM enrollment_api_keys WHERE ($1 IS NULL OR policy_id = $1) \
                     ORDER BY created_at, id LIMIT $2 OFFSET $3"
                ))
                .bind(&filter.policy_id)
                .bind(i64::from(page.per_page))
                .bind(page.offset())
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
                let total: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM enrollment_api_keys WHERE ($1 IS NULL OR policy_id = $1)")
                        .bind(&filter.policy_id)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(other)?;
                Ok(Paged {
                    items: rows.into_iter().map(Into::into).collect(),
                    total: total as u64,
                })
            }

            async fn find_enrollment_key_by_hash(&self, token_hash: &str) -> Result<Option<EnrollmentApiKey>> {
                Ok(sqlx::query_as::<_, EnrollmentKeyRow>(&format!(
                    "SELECT {EK_COLS} FROM enrollment_api_keys WHERE token_hash = $1"
                ))
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(other)?
                .map(Into::into))
            }

            async fn revoke_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey> {
                let done = sqlx::query("UPDATE enrollment_api_keys SET active = FALSE WHERE id = $1")
                    .bind(id)
                    .execute(self.write_pool())
                    .await
                    .map_err(other)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("enrollment key '{id}'")));
                }
                self.get_enrollment_key(id).await
            }

            // --- agents ----------------------------------------------------

            async fn insert_agent(&self, agent: &NewAgent) -> Result<Agent> {
                let mut tx = self.begin_write().await?;
                insert_agent_row(&mut tx, agent).await?;
                tx.commit().await.map_err(other)?;
                self.agent_after_write(&agent.id, agent.enrolled_at).await
            }

            async fn get_agent(&self, id: &str, now: DateTime<Utc>) -> Result<Agent> {
                self.agents_query(&AgentFilter::default(), Some(id), Page { page: 1, per_page: 1 }, now)
                    .await?
                    .items
                    .pop()
                    .ok_or_else(|| StoreError::NotFound(format!("agent '{id}'")))
            }

            async fn list_agents(&self, filter: &AgentFilter, page: Page, now: DateTime<Utc>) -> Result<Paged<Agent>> {
                self.agents_query(filter, None, page, now).await
            }

            async fn set_agent_tags(&self, id: &str, tags: &[String], now: DateTime<Utc>) -> Result<Agent> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query("UPDATE agents SET updated_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(ms(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(other)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("agent '{id}'")));
                }
                sqlx::query("DELETE FROM agent_tags WHERE agent_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(other)?;
                insert_tags(&mut tx, id, tags).await?;
                tx.commit().await.map_err(other)?;
                self.agent_after_write(id, now).await
            }

            async fn reassign_agent(&self, id: &str, policy_id: &str, now: DateTime<Utc>) -> Result<Agent> {
                let mut tx = self.begin_write().await?;
                if !policy_exists(&mut tx, policy_id).await? {
                    return Err(StoreError::NotFound(format!("agent policy '{policy_id}'")));
                }
                let done = sqlx::query(
                    "UPDATE agents SET policy_id = $2, policy_revision = NULL, updated_at = $3 WHERE id = $1 AND active",
                )
                .bind(id)
                .bind(policy_id)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(other)?;
                tx.commit().await.map_err(other)?;
                if done.rows_affected() == 0 {
                    return Err(self.agent_write_failed(id, now).await);
                }
                self.publish(StoreEvent::AgentChanged { agent_id: id.to_owned() }).await;
                self.agent_after_write(id, now).await
            }

            async fn start_agent_unenrollment(&self, id: &str, action: &NewAction, now: DateTime<Utc>) -> Result<Agent> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE agents SET unenrollment_started_at = COALESCE(unenrollment_started_at, $2), \
                     updated_at = $2 WHERE id = $1 AND active",
                )
                .bind(id)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(other)?;
                if done.rows_affected() == 0 {
                    drop(tx);
                    return Err(self.agent_write_failed(id, now).await);
                }
                insert_action(&mut tx, action).await?;
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::ActionsCreated { agent_ids: Some(action.agent_ids.clone()) }).await;
                self.agent_after_write(id, now).await
            }

            // --- fleet protocol ----------------------------------------------

            fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
                self.events.subscribe()
            }

            async fn get_fleet_agent(&self, id: &str) -> Result<Option<FleetAgent>> {
                Ok(sqlx::query_as::<_, FleetAgentRow>(&format!("SELECT {FLEET_AGENT_COLS} FROM agents WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(other)?
                    .map(Into::into))
            }

            async fn find_agent_by_enrollment_id(&self, enrollment_id: &str) -> Result<Option<FleetAgent>> {
                Ok(sqlx::query_as::<_, FleetAgentRow>(&format!(
                    "SELECT {FLEET_AGENT_COLS} FROM agents WHERE enrollment_id = $1 ORDER BY enrolled_at DESC LIMIT 1"
                ))
                .bind(enrollment_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(other)?
                .map(Into::into))
            }

            async fn enroll_agent(&self, agent: &NewAgent, access_key: &ApiKeyRecord, replace: &[String]) -> Result<Agent> {
                let now = ms(agent.enrolled_at);
                let mut tx = self.begin_write().await?;
                if !policy_exists(&mut tx, &agent.policy_id).await? {
                    return Err(StoreError::NotFound(format!("agent policy '{}'", agent.policy_id)));
                }
                for old in replace {
                    remove_agent(&mut tx, old, now).await?;
                }
                let mut changed: Vec<String> = replace.to_vec();
                // At most one active agent per enrollment id, decided inside
                // this transaction (a unique index backs it: of two
                // concurrent enrolments on PostgreSQL one gets a conflict).
                if let Some(eid) = &agent.enrollment_id {
                    let same: Vec<FleetAgentRow> = sqlx::query_as(&format!(
                        "SELECT {FLEET_AGENT_COLS} FROM agents WHERE enrollment_id = $1 AND active AND id <> $2"
                    ))
                    .bind(eid)
                    .bind(&agent.id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(other)?;
                    for old in same.into_iter().map(FleetAgent::from) {
                        if old.last_checkin.is_none() && old.policy_id == agent.policy_id {
                            // Never checked in: a failed earlier attempt.
                            remove_agent(&mut tx, &old.id, now).await?;
                        } else {
                            unenroll_in(&mut tx, &old.id, now).await?;
                        }
                        changed.push(old.id);
                    }
                }
                insert_key(&mut tx, access_key).await?;
                insert_agent_row(&mut tx, agent).await?;
                tx.commit().await.map_err(other)?;
                for old in changed {
                    self.publish(StoreEvent::AgentChanged { agent_id: old }).await;
                }
                match self.agent_after_write(&agent.id, agent.enrolled_at).await {
                    // Replaced since by a concurrent enrolment with the same
                    // enrollment id.
                    Err(StoreError::NotFound(_)) => Err(StoreError::Conflict(format!(
                        "agent '{}' was replaced by a concurrent enrolment",
                        agent.id
                    ))),
                    other => other,
                }
            }

            async fn delete_agent(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
                let mut tx = self.begin_write().await?;
                remove_agent(&mut tx, id, ms(now)).await?;
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::AgentChanged { agent_id: id.to_owned() }).await;
                Ok(())
            }

            async fn record_checkins(&self, batch: &[CheckinRecord]) -> Result<()> {
                if batch.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin_write().await?;
                for c in batch {
                    sqlx::query(
                        "UPDATE agents SET last_checkin = $2, last_checkin_status = $3, last_checkin_message = $4, \
                         local_metadata = COALESCE($5, local_metadata), components = COALESCE($6, components), \
                         agent_version = COALESCE($7, agent_version), \
                         reported_policy_id = COALESCE($8, reported_policy_id), \
                         reported_policy_revision = COALESCE($9, reported_policy_revision), \
                         audit_unenrolled_reason = NULL, \
                         audit_unenrolled_time = NULL, unenrolled_at = NULL, updated_at = $2 \
                         WHERE id = $1 AND active AND (last_checkin IS NULL OR last_checkin <= $2)",
                    )
                    .bind(&c.agent_id)
                    .bind(ms(c.at))
                    .bind(&c.status)
                    .bind(&c.message)
                    .bind(c.local_metadata.as_ref().map(to_json))
                    .bind(c.components.as_ref().map(to_json))
                    .bind(&c.agent_version)
                    .bind(c.reported_policy.as_ref().map(|(p, _)| p))
                    .bind(c.reported_policy.as_ref().map(|(_, r)| *r))
                    .execute(&mut *tx)
                    .await
                    .map_err(other)?;
                }
                tx.commit().await.map_err(other)?;
                Ok(())
            }

            async fn set_output_key(&self, agent_id: &str, change: &OutputKeyChange) -> Result<()> {
                let mut tx = self.begin_write().await?;
                // Compare-and-swap on the current key: of two concurrent
                // rotations one wins, the other learns it lost.
                let done = sqlx::query(
                    "UPDATE agents SET output_api_key_id = $2, output_api_key_sealed = $3, output_permissions_hash = $4, \
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
                .map_err(other)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!(
                        "agent '{agent_id}' is inactive or its output key changed concurrently"
                    )));
                }
                sqlx::query(
                    "UPDATE api_keys SET retire_pending = TRUE \
                     WHERE agent_id = $1 AND kind = 'output' AND invalidated_at IS NULL",
                )
                .bind(agent_id)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
                insert_key(&mut tx, &change.key).await?;
                tx.commit().await.map_err(other)?;
                Ok(())
            }

            async fn retire_output_key(&self, agent_id: &str, key_id: &str, policy_id: &str, revision: i64, now: DateTime<Utc>) -> Result<bool> {
                let mut tx = self.begin_write().await?;
                // Compare-and-swap, like a rotation: only the key it was asked
                // to retire.
                let done = sqlx::query(
                    "UPDATE agents SET output_api_key_id = NULL, output_api_key_sealed = NULL, \
                     output_permissions_hash = NULL, output_key_policy_id = $3, output_key_revision = $4 \
                     WHERE id = $1 AND active AND output_api_key_id = $2 AND policy_id = $3",
                )
                .bind(agent_id)
                .bind(key_id)
                .bind(policy_id)
                .bind(revision)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE api_keys SET retire_pending = TRUE \
                     WHERE agent_id = $1 AND kind = 'output' AND invalidated_at IS NULL",
                )
                .bind(agent_id)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
                // Already running that revision: nothing will come to retire
                // it later, so now.
                sqlx::query(
                    "UPDATE api_keys SET invalidated_at = $3 \
                     WHERE agent_id = $1 AND retire_pending AND invalidated_at IS NULL \
                     AND EXISTS (SELECT 1 FROM agents WHERE id = $1 AND policy_revision >= $2)",
                )
                .bind(agent_id)
                .bind(revision)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(other)?;
                tx.commit().await.map_err(other)?;
                Ok(true)
            }

            async fn agent_runs_policy(&self, agent_id: &str, policy_id: &str, revision: i64, now: DateTime<Utc>) -> Result<Vec<String>> {
                let mut tx = self.begin_write().await?;
                // Serialise with key rotation for this agent.
                lock_agent(&mut tx, agent_id).await?;
                let Some(agent) = fetch_fleet_agent(&mut tx, agent_id).await? else {
                    return Ok(vec![]);
                };
                if !agent.active || agent.policy_id != policy_id {
                    return Ok(vec![]);
                }
                // A revision the policy never had (a restored agent, a forged
                // ack) is not believed.
                let latest: Option<i64> = sqlx::query_scalar("SELECT revision FROM agent_policies WHERE id = $1")
                    .bind(policy_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(other)?;
                if latest.is_none_or(|latest| revision > latest) {
                    return Ok(vec![]);
                }
                if revision > agent.policy_revision.unwrap_or(-1) {
                    sqlx::query("UPDATE agents SET policy_revision = $2, updated_at = $3 WHERE id = $1")
                        .bind(agent_id)
                        .bind(revision)
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await
                        .map_err(other)?;
                }
                let mut retired = Vec::new();
                if agent.output_key_policy_id.as_deref() == Some(policy_id)
                    && agent.output_key_revision.is_some_and(|r| revision >= r)
                {
                    retired = sqlx::query_scalar(
                        "SELECT id FROM api_keys WHERE agent_id = $1 AND retire_pending AND invalidated_at IS NULL",
                    )
                    .bind(agent_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(other)?;
                    sqlx::query(
                        "UPDATE api_keys SET invalidated_at = $2 \
                         WHERE agent_id = $1 AND retire_pending AND invalidated_at IS NULL",
                    )
                    .bind(agent_id)
                    .bind(ms(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(other)?;
                }
                tx.commit().await.map_err(other)?;
                Ok(retired)
            }

            async fn unenroll_now(&self, agent_id: &str, now: DateTime<Utc>) -> Result<()> {
                let now_ms = ms(now);
                let mut tx = self.begin_write().await?;
                if !unenroll_in(&mut tx, agent_id, now_ms).await? {
                    return Err(StoreError::NotFound(format!("agent '{agent_id}'")));
                }
                tx.commit().await.map_err(other)?;
                self.publish(StoreEvent::AgentChanged { agent_id: agent_id.to_owned() }).await;
                Ok(())
            }

            async fn audit_unenroll(&self, agent_id: &str, reason: &str, time: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
                let mut tx = self.begin_write().await?;
                lock_agent(&mut tx, agent_id).await?; // row lock before reading
                let agent = fetch_fleet_agent(&mut tx, agent_id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("agent '{agent_id}'")))?;
                if agent.audit_unenrolled_reason.as_deref() == Some("orphaned") {
                    return Err(StoreError::Conflict("agent document contains audit_unenroll_reason".into()));
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
                .map_err(other)?;
                tx.commit().await.map_err(other)?;
                Ok(())
            }

            async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
                let mut tx = self.begin_write().await?;
                insert_key(&mut tx, key).await?;
                tx.commit().await.map_err(other)?;
                Ok(())
            }

            async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
                sqlx::query_as::<_, ApiKeyRow>(&format!("SELECT {API_KEY_COLS} FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(other)?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn invalidate_api_keys(&self, ids: &[String], now: DateTime<Utc>) -> Result<u64> {
                let mut tx = self.begin_write().await?;
                let mut n = 0;
                for id in ids {
                    n += sqlx::query("UPDATE api_keys SET invalidated_at = $2 WHERE id = $1 AND invalidated_at IS NULL")
                        .bind(id)
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await
                        .map_err(other)?
                        .rows_affected();
                }
                tx.commit().await.map_err(other)?;
                Ok(n)
            }

            async fn create_action(&self, action: &NewAction) -> Result<Action> {
                let mut tx = self.begin_write().await?;
                insert_action(&mut tx, action).await?;
                tx.commit().await.map_err(other)?;
                // NOTIFY payloads are small; many targets wake everyone instead.
                let agent_ids = (action.agent_ids.len() <= 50).then(|| action.agent_ids.clone());
                self.publish(StoreEvent::ActionsCreated { agent_ids }).await;
                Ok(Action {
                    id: action.id.clone(),
                    action_type: action.action_type,
                    data: action.data.clone(),
                    created_at: action.created_at,
                    expiration: action.expiration,
                    agents: action.agent_ids.clone(),
                })
            }

            async fn pending_actions(&self, agent_id: &str, now: DateTime<Utc>, limit: u32) -> Result<Vec<Action>> {
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
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
                rows.into_iter().map(|r| r.into_action(vec![agent_id.to_owned()])).collect()
            }

            async fn mark_delivered(&self, agent_id: &str, action_ids: &[String], token: &str) -> Result<()> {
                let mut tx = self.begin_write().await?;
                for id in action_ids {
                    sqlx::query("UPDATE action_targets SET delivery_token = $3 WHERE agent_id = $1 AND action_id = $2")
                        .bind(agent_id)
                        .bind(id)
                        .bind(token)
                        .execute(&mut *tx)
                        .await
                        .map_err(other)?;
                }
                tx.commit().await.map_err(other)?;
                Ok(())
            }

            async fn confirm_delivery(&self, agent_id: &str, token: &str) -> Result<()> {
                sqlx::query(
                    "UPDATE action_targets SET confirmed = TRUE \
                     WHERE agent_id = $1 AND delivery_token = $2 AND NOT confirmed",
                )
                .bind(agent_id)
                .bind(token)
                .execute(self.write_pool())
                .await
                .map_err(other)?;
                Ok(())
            }

            async fn agent_actions(&self, agent_id: &str, page: Page) -> Result<Paged<AgentActionStatus>> {
                let rows: Vec<(String, String, String, i64, Option<i64>, bool, Option<i64>, Option<String>)> =
                    sqlx::query_as(
                        "SELECT a.id, a.action_type, a.data, a.created_at, a.expiration, t.confirmed, t.acked_at, \
                         t.ack_error FROM action_targets t JOIN actions a ON a.id = t.action_id \
                         WHERE t.agent_id = $1 ORDER BY a.created_at DESC, a.id LIMIT $2 OFFSET $3",
                    )
                    .bind(agent_id)
                    .bind(i64::from(page.per_page))
                    .bind(page.offset())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(other)?;
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM action_targets WHERE agent_id = $1")
                    .bind(agent_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(other)?;
                let items = rows
                    .into_iter()
                    .map(|(id, action_type, data, created_at, expiration, confirmed, acked_at, ack_error)| {
                        let action = ActionRow { id, action_type, data, created_at, expiration }
                            .into_action(vec![agent_id.to_owned()])?;
                        Ok(AgentActionStatus {
                            action,
                            delivered: confirmed || acked_at.is_some(),
                            acked_at: acked_at.map(from_ms),
                            ack_error,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Paged { items, total: total.max(0) as u64 })
            }

            async fn ack_action(&self, agent_id: &str, action_id: &str, error: Option<&str>, now: DateTime<Utc>) -> Result<ActionAck> {
                let mut tx = self.begin_write().await?;
                let row: Option<(String, Option<i64>)> = sqlx::query_as(
                    "SELECT a.action_type, t.acked_at FROM action_targets t JOIN actions a ON a.id = t.action_id \
                     WHERE t.action_id = $1 AND t.agent_id = $2",
                )
                .bind(action_id)
                .bind(agent_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(other)?;
                let Some((action_type, acked_at)) = row else {
                    let exists = count(&mut tx, "SELECT COUNT(*) FROM actions WHERE id = $1", action_id).await?;
                    return Ok(if exists > 0 { ActionAck::OtherAgent } else { ActionAck::NotFound });
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
                    .map_err(other)?;
                    first_time = done.rows_affected() > 0;
                }
                tx.commit().await.map_err(other)?;
                Ok(ActionAck::Acked { action_type, first_time })
            }

            // --- operator keys ---------------------------------------------

            async fn create_operator_key(&self, key: &OperatorApiKey, key_hash: &str) -> Result<OperatorApiKey> {
                sqlx::query(
                    "INSERT INTO operator_api_keys (id, name, key_hash, hint, active, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&key.id)
                .bind(&key.name)
                .bind(key_hash)
                .bind(&key.hint)
                .bind(key.active)
                .bind(ms(key.created_at))
                .execute(self.write_pool())
                .await
                .map_err(|e| db_err(e, || format!("an API key named '{}' already exists", key.name)))?;
                Ok(key.clone())
            }

            async fn find_operator_key_by_hash(&self, key_hash: &str) -> Result<Option<OperatorApiKey>> {
                Ok(sqlx::query_as::<_, OperatorKeyRow>(&format!(
                    "SELECT {OK_COLS} FROM operator_api_keys WHERE key_hash = $1 AND active"
                ))
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(other)?
                .map(Into::into))
            }

            async fn activate_operator_key(&self, key_hash: &str) -> Result<bool> {
                let done = sqlx::query("UPDATE operator_api_keys SET active = TRUE WHERE key_hash = $1")
                    .bind(key_hash)
                    .execute(self.write_pool())
                    .await
                    .map_err(other)?;
                Ok(done.rows_affected() > 0)
            }

            async fn active_operator_keys(&self) -> Result<u64> {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operator_api_keys WHERE active")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(other)?;
                Ok(n.max(0) as u64)
            }

            async fn list_operator_keys(&self, page: Page) -> Result<Paged<OperatorApiKey>> {
                let rows: Vec<OperatorKeyRow> = sqlx::query_as(&format!(
                    "SELECT {OK_COLS} FROM operator_api_keys ORDER BY created_at, id LIMIT $1 OFFSET $2"
                ))
                .bind(i64::from(page.per_page))
                .bind(page.offset())
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operator_api_keys")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(other)?;
                Ok(Paged {
                    items: rows.into_iter().map(Into::into).collect(),
                    total: total as u64,
                })
            }

            async fn revoke_operator_key(&self, id: &str) -> Result<OperatorApiKey> {
                let done = sqlx::query("UPDATE operator_api_keys SET active = FALSE WHERE id = $1")
                    .bind(id)
                    .execute(self.write_pool())
                    .await
                    .map_err(other)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("API key '{id}'")));
                }
                sqlx::query_as::<_, OperatorKeyRow>(&format!("SELECT {OK_COLS} FROM operator_api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map(Into::into)
                    .map_err(other)
            }
        }
    };
}
