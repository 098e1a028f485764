//! The task manager's tables: tasks, their runs and the key-invalidation
//! queue. Claiming is one statement: a candidate set in due order (locked
//! with `SKIP LOCKED` on PostgreSQL, so instances claim disjoint sets
//! without waiting on each other; SQLite's single writer serialises
//! claims), cut to what fits the capacity by a running sum of cost.

use flotilla_store::{
    ClaimRequest, KeyProvider, NewTask, QueuedKey, RunOutcome, Scheduled, TaskCount, TaskFilter,
    TaskRecord, TaskRun, TaskStatus, TaskStore, UserScope,
};

use super::super::SKIP_LOCKED;
use super::prelude::*;

const TASK_COLS: &str = "id, task_type, params, state, interval_ms, run_at, scheduled_at, started_at, \
     lease_expires_at, attempts, status, owner, claim_token, enabled, cost, created_at, updated_at, \
     last_error, last_run_at, last_run_ms, runs, user_id, user_name, api_key_id, api_key, \
     secondary_api_key_id, secondary_api_key";

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: String,
    task_type: String,
    params: String,
    state: String,
    interval_ms: Option<i64>,
    run_at: i64,
    scheduled_at: i64,
    started_at: Option<i64>,
    lease_expires_at: Option<i64>,
    attempts: i32,
    status: String,
    owner: Option<String>,
    claim_token: Option<String>,
    enabled: bool,
    cost: i32,
    created_at: i64,
    updated_at: i64,
    last_error: Option<String>,
    last_run_at: Option<i64>,
    last_run_ms: Option<i64>,
    runs: i64,
    user_id: Option<String>,
    user_name: Option<String>,
    api_key_id: Option<String>,
    api_key: Option<String>,
    secondary_api_key_id: Option<String>,
    secondary_api_key: Option<String>,
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("corrupt {what} in storage: {detail}").into())
}

impl TryFrom<TaskRow> for TaskRecord {
    type Error = StoreError;
    fn try_from(r: TaskRow) -> Result<Self> {
        let user = r.user_id.map(|user_id| UserScope {
            user_id,
            user_name: r.user_name.unwrap_or_default(),
            api_key_id: r.api_key_id,
            api_key_sealed: r.api_key,
            secondary_api_key_id: r.secondary_api_key_id,
            secondary_api_key_sealed: r.secondary_api_key,
        });
        Ok(TaskRecord {
            params: serde_json::from_str(&r.params).map_err(|e| corrupt("task params", e))?,
            state: serde_json::from_str(&r.state).map_err(|e| corrupt("task state", e))?,
            status: TaskStatus::parse(&r.status)
                .ok_or_else(|| corrupt("task status", &r.status))?,
            id: r.id,
            task_type: r.task_type,
            interval_ms: r.interval_ms,
            run_at: from_ms(r.run_at),
            scheduled_at: from_ms(r.scheduled_at),
            started_at: r.started_at.map(from_ms),
            lease_expires_at: r.lease_expires_at.map(from_ms),
            attempts: r.attempts,
            owner: r.owner,
            claim_token: r.claim_token,
            enabled: r.enabled,
            cost: r.cost,
            created_at: from_ms(r.created_at),
            updated_at: from_ms(r.updated_at),
            last_error: r.last_error,
            last_run_at: r.last_run_at.map(from_ms),
            last_run_ms: r.last_run_ms,
            runs: r.runs,
            user,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RunRow {
    task_id: String,
    claim_token: String,
    task_type: String,
    owner: String,
    attempt: i32,
    due_at: i64,
    started_at: i64,
    finished_at: Option<i64>,
    outcome: Option<String>,
    error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct QueuedRow {
    provider: String,
    key_id: String,
    task_id: Option<String>,
    queued_at: i64,
    attempts: i32,
    last_error: Option<String>,
}

fn sorted_unique(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.dedup();
    ids
}

/// `$from, $from+1, …` for `n` values.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn task_in(conn: &mut Conn, id: &str) -> Result<Option<TaskRecord>> {
    sqlx::query_as::<_, TaskRow>(sql!("SELECT {TASK_COLS} FROM tasks WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .db()?
        .map(TryInto::try_into)
        .transpose()
}

/// Queue what deleted rows held, in the deleting transaction.
async fn queue_in(
    conn: &mut Conn,
    keys: &[(KeyProvider, String, Option<String>)],
    now: i64,
) -> Result<()> {
    for (provider, key_id, task_id) in keys {
        sqlx::query(
            "INSERT INTO api_keys_to_invalidate (provider, key_id, task_id, queued_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (provider, key_id) DO NOTHING",
        )
        .bind(provider.as_str())
        .bind(key_id)
        .bind(task_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .db()?;
    }
    Ok(())
}

fn held_keys(
    id: String,
    primary: Option<String>,
    secondary: Option<String>,
) -> Vec<(KeyProvider, String, Option<String>)> {
    let mut out = Vec::new();
    if let Some(k) = primary {
        out.push((KeyProvider::Primary, k, Some(id.clone())));
    }
    if let Some(k) = secondary {
        out.push((KeyProvider::Secondary, k, Some(id)));
    }
    out
}

#[async_trait]
impl TaskStore for Engine {
    #[tracing::instrument(skip_all, fields(task = %new.id))]
    async fn schedule_task(&self, new: &NewTask, now: DateTime<Utc>) -> Result<Scheduled> {
        let mut tx = self.begin_write().await?;
        let user = new.user.as_ref();
        let inserted = sqlx::query(
            "INSERT INTO tasks (id, task_type, params, state, interval_ms, run_at, scheduled_at, \
               attempts, status, enabled, cost, created_at, updated_at, user_id, user_name, \
               api_key_id, api_key, secondary_api_key_id, secondary_api_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, 0, 'idle', $7, $8, $9, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.task_type)
        .bind(to_json(&new.params))
        .bind(to_json(&new.state))
        .bind(new.interval_ms)
        .bind(ms(new.run_at))
        .bind(new.enabled)
        .bind(new.cost)
        .bind(ms(now))
        .bind(user.map(|u| u.user_id.clone()))
        .bind(user.map(|u| u.user_name.clone()))
        .bind(user.and_then(|u| u.api_key_id.clone()))
        .bind(user.and_then(|u| u.api_key_sealed.clone()))
        .bind(user.and_then(|u| u.secondary_api_key_id.clone()))
        .bind(user.and_then(|u| u.secondary_api_key_sealed.clone()))
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
        let existing = task_in(&mut tx, &new.id)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Task, &new.id))?;
        let result = if inserted == 1 {
            Scheduled::Created(existing)
        } else if existing.task_type != new.task_type {
            return Err(StoreError::Conflict(format!(
                "task '{}' exists with type '{}'",
                new.id, existing.task_type
            )));
        } else {
            match (new.interval_ms, existing.interval_ms) {
                (Some(i), Some(old)) if i != old => {
                    // The interval changes whatever the task is doing; an
                    // idle task's next run moves with it (old − old + new),
                    // a running one's next run follows the new interval.
                    let run_at = ms(existing.run_at) - old + i;
                    sqlx::query(
                        "UPDATE tasks SET interval_ms = $2, updated_at = $4, \
                           run_at = CASE WHEN status = 'idle' THEN $3 ELSE run_at END, \
                           scheduled_at = CASE WHEN status = 'idle' THEN $3 ELSE scheduled_at END \
                         WHERE id = $1",
                    )
                    .bind(&new.id)
                    .bind(i)
                    .bind(run_at)
                    .bind(ms(now))
                    .execute(&mut *tx)
                    .await
                    .db()?;
                    let updated = task_in(&mut tx, &new.id)
                        .await?
                        .ok_or_else(|| StoreError::not_found(Entity::Task, &new.id))?;
                    Scheduled::Existing(updated)
                }
                _ => Scheduled::Existing(existing),
            }
        };
        tx.commit().await.db()?;
        self.publish(StoreEvent::TasksDue).await;
        Ok(result)
    }

    #[tracing::instrument(skip_all)]
    async fn get_task(&self, id: &str) -> Result<TaskRecord> {
        let mut conn = self.pool.acquire().await.db()?;
        task_in(&mut conn, id)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Task, id))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tasks(&self, filter: &TaskFilter, page: Page) -> Result<Paged<TaskRecord>> {
        let mut args = Args::default();
        add(&mut args, filter.task_type.clone())?;
        add(&mut args, filter.status.map(|s| s.as_str().to_owned()))?;
        let wh = "FROM tasks WHERE ($1 IS NULL OR task_type = $1) AND ($2 IS NULL OR status = $2)";
        let (rows, total) = page_of::<TaskRow>(
            &self.pool,
            &format!("SELECT {TASK_COLS} {wh} ORDER BY id"),
            &format!("SELECT COUNT(*) {wh}"),
            args,
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

    #[tracing::instrument(skip_all, fields(n = ids.len()))]
    async fn delete_tasks(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>> {
        // Locked in one order, so overlapping bulk deletes cannot deadlock.
        let ids = sorted_unique(ids);
        let mut tx = self.begin_write().await?;
        let mut deleted = Vec::new();
        for id in &ids {
            let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
                "DELETE FROM tasks WHERE id = $1 RETURNING id, api_key_id, secondary_api_key_id",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
            if let Some((id, p, s)) = row {
                queue_in(&mut tx, &held_keys(id.clone(), p, s), ms(now)).await?;
                deleted.push(id);
            }
        }
        tx.commit().await.db()?;
        Ok(deleted)
    }

    #[tracing::instrument(skip_all)]
    async fn run_task_soon(&self, id: &str, now: DateTime<Utc>) -> Result<TaskRecord> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE tasks SET status = 'idle', run_at = $2, scheduled_at = $2, updated_at = $2, \
               owner = NULL, lease_expires_at = NULL, started_at = NULL, \
               attempts = CASE WHEN status = 'failed' THEN 0 ELSE attempts END \
             WHERE id = $1 AND (status <> 'running' OR lease_expires_at <= $2)",
        )
        .bind(id)
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
        let task = task_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Task, id))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("task '{id}' is running")));
        }
        tx.commit().await.db()?;
        self.publish(StoreEvent::TasksDue).await;
        Ok(task)
    }

    #[tracing::instrument(skip_all, fields(n = ids.len(), enabled))]
    async fn set_tasks_enabled(
        &self,
        ids: &[String],
        enabled: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let ids = sorted_unique(ids);
        let mut tx = self.begin_write().await?;
        let mut found = Vec::new();
        for id in &ids {
            let n = sqlx::query("UPDATE tasks SET enabled = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(enabled)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .db()?
                .rows_affected();
            if n == 1 {
                found.push(id.clone());
            }
        }
        tx.commit().await.db()?;
        if enabled && !found.is_empty() {
            self.publish(StoreEvent::TasksDue).await;
        }
        Ok(found)
    }

    #[tracing::instrument(skip_all, fields(owner = %req.owner, limit = req.limit))]
    async fn claim_tasks(&self, req: &ClaimRequest) -> Result<Vec<TaskRecord>> {
        if req.types.is_empty() || req.limit == 0 || req.capacity <= 0 {
            return Ok(vec![]);
        }
        let types = placeholders(6, req.types.len());
        // A cap per limited type: `CASE task_type WHEN $k THEN $k+1 … END`.
        let mut next = 6 + req.types.len();
        let mut caps = String::new();
        for _ in &req.per_type {
            caps.push_str(&format!(" WHEN ${} THEN ${}", next, next + 1));
            next += 2;
        }
        let nonce_param = format!("${next}");
        let cap = if caps.is_empty() {
            "$3".to_owned()
        } else {
            format!("CASE task_type{caps} ELSE $3 END")
        };
        // $1 owner, $2 now, $3 limit, $4 capacity, $5 lease, $6… types,
        // then (type, cap) pairs.
        let statement = format!(
            "WITH cand AS ( \
               SELECT id, cost, run_at, task_type FROM tasks \
               WHERE enabled AND task_type IN ({types}) \
                 AND ((status = 'idle' AND run_at <= $2) \
                   OR (status = 'running' AND lease_expires_at <= $2)) \
               ORDER BY run_at, id LIMIT $3{SKIP_LOCKED} \
             ), capped AS ( \
               SELECT id, cost, run_at FROM ( \
                 SELECT id, cost, run_at, task_type, \
                   ROW_NUMBER() OVER (PARTITION BY task_type ORDER BY run_at, id) AS rn \
                 FROM cand) r \
               WHERE rn <= {cap} \
             ), fit AS ( \
               SELECT id FROM ( \
                 SELECT id, SUM(cost) OVER (ORDER BY run_at, id ROWS UNBOUNDED PRECEDING) AS used \
                 FROM capped) f \
               WHERE used <= $4 \
             ) \
             UPDATE tasks SET status = 'running', owner = $1, claims = claims + 1, \
               claim_token = $1 || ':' || $NONCE || ':' || id, \
               attempts = attempts + 1, started_at = $2, lease_expires_at = $5, \
               scheduled_at = CASE WHEN status = 'running' THEN lease_expires_at ELSE run_at END, \
               updated_at = $2 \
             WHERE id IN (SELECT id FROM fit) \
             RETURNING {TASK_COLS}"
        )
        .replace("$NONCE", &nonce_param);
        let mut args = Args::default();
        add(&mut args, req.owner.clone())?;
        add(&mut args, ms(req.now))?;
        add(&mut args, i64::from(req.limit))?;
        add(&mut args, req.capacity)?;
        add(&mut args, ms(req.lease_until))?;
        for t in &req.types {
            add(&mut args, t.clone())?;
        }
        for (t, n) in &req.per_type {
            add(&mut args, t.clone())?;
            add(&mut args, i64::from(*n))?;
        }
        // Unique per claim: with the task id, a token names one run even
        // when a task id is deleted and scheduled again.
        add(&mut args, uuid::Uuid::new_v4().simple().to_string())?;
        let mut tx = self.begin_write().await?;
        let rows: Vec<TaskRow> = sqlx::query_as_with(sqlx::AssertSqlSafe(statement), args)
            .fetch_all(&mut *tx)
            .await
            .db()?;
        let mut claimed: Vec<TaskRecord> = rows
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<_>>()?;
        for t in &claimed {
            sqlx::query(
                "INSERT INTO task_runs (task_id, claim_token, task_type, owner, attempt, due_at, started_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (task_id, claim_token) DO NOTHING",
            )
            .bind(&t.id)
            .bind(t.claim_token.as_deref().unwrap_or_default())
            .bind(&t.task_type)
            .bind(&req.owner)
            .bind(t.attempts)
            .bind(ms(t.scheduled_at))
            .bind(ms(req.now))
            .execute(&mut *tx)
            .await
            .db()?;
        }
        tx.commit().await.db()?;
        claimed.sort_by(|a, b| (a.scheduled_at, &a.id).cmp(&(b.scheduled_at, &b.id)));
        Ok(claimed)
    }

    #[tracing::instrument(skip_all, fields(n = tokens.len()))]
    async fn extend_task_leases(
        &self,
        owner: &str,
        tokens: &[String],
        until: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let mut held = Vec::new();
        let mut tx = self.begin_write().await?;
        for chunk in tokens.chunks(500) {
            let mut args = Args::default();
            add(&mut args, owner.to_owned())?;
            add(&mut args, ms(until))?;
            for t in chunk {
                add(&mut args, t.clone())?;
            }
            let rows: Vec<(Option<String>,)> = sqlx::query_as_with(
                sql!(
                    "UPDATE tasks SET lease_expires_at = $2 \
                     WHERE owner = $1 AND status = 'running' AND claim_token IN ({}) \
                     RETURNING claim_token",
                    placeholders(3, chunk.len())
                ),
                args,
            )
            .fetch_all(&mut *tx)
            .await
            .db()?;
            held.extend(rows.into_iter().filter_map(|(t,)| t));
        }
        tx.commit().await.db()?;
        Ok(held)
    }

    #[tracing::instrument(skip_all, fields(task = %id))]
    async fn finish_task_run(
        &self,
        id: &str,
        claim_token: &str,
        outcome: &RunOutcome,
        now: DateTime<Utc>,
        duration_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let now_ms = ms(now);
        let (held, audit_outcome, audit_error) = match outcome {
            RunOutcome::Reschedule {
                state,
                run_at,
                interval_ms,
                reset_attempts,
                disable,
                error,
            } => {
                let n = sqlx::query(
                    "UPDATE tasks SET status = 'idle', owner = NULL, lease_expires_at = NULL, \
                       started_at = NULL, state = COALESCE($3, state), run_at = $4, scheduled_at = $4, \
                       interval_ms = CASE WHEN $5 THEN $6 ELSE interval_ms END, \
                       attempts = CASE WHEN $7 THEN 0 ELSE attempts END, \
                       enabled = CASE WHEN $8 THEN FALSE ELSE enabled END, \
                       runs = runs + CASE WHEN $9 IS NULL THEN 1 ELSE 0 END, \
                       last_error = $9, last_run_at = $10, last_run_ms = $11, updated_at = $10 \
                     WHERE id = $1 AND claim_token = $2 AND status = 'running'",
                )
                .bind(id)
                .bind(claim_token)
                .bind(state.as_ref().map(to_json))
                .bind(ms(*run_at))
                .bind(interval_ms.is_some())
                .bind(interval_ms.flatten())
                .bind(*reset_attempts)
                .bind(*disable)
                .bind(error.clone())
                .bind(now_ms)
                .bind(duration_ms)
                .execute(&mut *tx)
                .await
                .db()?
                .rows_affected();
                let outcome = if error.is_some() {
                    "failed"
                } else {
                    "succeeded"
                };
                (n == 1, outcome, error.clone())
            }
            RunOutcome::Fail { error } => {
                let n = sqlx::query(
                    "UPDATE tasks SET status = 'failed', owner = NULL, lease_expires_at = NULL, \
                       started_at = NULL, last_error = $3, last_run_at = $4, last_run_ms = $5, updated_at = $4 \
                     WHERE id = $1 AND claim_token = $2 AND status = 'running'",
                )
                .bind(id)
                .bind(claim_token)
                .bind(error)
                .bind(now_ms)
                .bind(duration_ms)
                .execute(&mut *tx)
                .await
                .db()?
                .rows_affected();
                (n == 1, "failed", Some(error.clone()))
            }
            RunOutcome::Delete => {
                let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
                    "DELETE FROM tasks WHERE id = $1 AND claim_token = $2 AND status = 'running' \
                     RETURNING id, api_key_id, secondary_api_key_id",
                )
                .bind(id)
                .bind(claim_token)
                .fetch_optional(&mut *tx)
                .await
                .db()?;
                let held = row.is_some();
                if let Some((id, p, s)) = row {
                    queue_in(&mut tx, &held_keys(id, p, s), now_ms).await?;
                }
                (held, "succeeded", None)
            }
        };
        sqlx::query(
            "UPDATE task_runs SET finished_at = $3, outcome = $4, error = $5 \
             WHERE task_id = $1 AND claim_token = $2",
        )
        .bind(id)
        .bind(claim_token)
        .bind(now_ms)
        .bind(if held { audit_outcome } else { "lost" })
        .bind(audit_error)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()?;
        Ok(held)
    }

    #[tracing::instrument(skip_all)]
    async fn task_runs(&self, task_id: Option<&str>, limit: u32) -> Result<Vec<TaskRun>> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT task_id, claim_token, task_type, owner, attempt, due_at, started_at, finished_at, \
               outcome, error FROM task_runs WHERE ($1 IS NULL OR task_id = $1) \
             ORDER BY started_at DESC, claim_token DESC LIMIT $2",
        )
        .bind(task_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .db()?;
        Ok(rows
            .into_iter()
            .map(|r| TaskRun {
                task_id: r.task_id,
                claim_token: r.claim_token,
                task_type: r.task_type,
                owner: r.owner,
                attempt: r.attempt,
                due_at: from_ms(r.due_at),
                started_at: from_ms(r.started_at),
                finished_at: r.finished_at.map(from_ms),
                outcome: r.outcome,
                error: r.error,
            })
            .collect())
    }

    #[tracing::instrument(skip_all)]
    async fn prune_task_runs(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM task_runs WHERE started_at < $1")
            .bind(ms(before))
            .execute(&mut *tx)
            .await
            .db()?
            .rows_affected();
        tx.commit().await.db()?;
        Ok(n)
    }

    #[tracing::instrument(skip_all)]
    async fn task_counts(&self, now: DateTime<Utc>) -> Result<Vec<TaskCount>> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT task_type, status, CAST(COUNT(*) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN enabled AND status = 'idle' AND run_at < $1 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM tasks GROUP BY task_type, status ORDER BY task_type, status",
        )
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.into_iter()
            .map(|(task_type, status, count, overdue)| {
                Ok(TaskCount {
                    status: TaskStatus::parse(&status)
                        .ok_or_else(|| corrupt("task status", &status))?,
                    task_type,
                    count,
                    overdue,
                })
            })
            .collect()
    }

    #[tracing::instrument(skip_all, fields(n = keys.len()))]
    async fn queue_keys_for_invalidation(
        &self,
        keys: &[(KeyProvider, String, Option<String>)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        queue_in(&mut tx, keys, ms(now)).await?;
        tx.commit().await.db()?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn keys_to_invalidate(
        &self,
        queued_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<QueuedKey>> {
        let rows: Vec<QueuedRow> = sqlx::query_as(
            "SELECT q.provider, q.key_id, q.task_id, q.queued_at, q.attempts, q.last_error \
             FROM api_keys_to_invalidate q \
             WHERE q.queued_at <= $1 \
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE \
                 (q.provider = 'primary' AND t.api_key_id = q.key_id) \
                 OR (q.provider = 'secondary' AND t.secondary_api_key_id = q.key_id)) \
             ORDER BY q.attempts, q.queued_at, q.key_id LIMIT $2",
        )
        .bind(ms(queued_before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.into_iter()
            .map(|r| {
                Ok(QueuedKey {
                    provider: KeyProvider::parse(&r.provider)
                        .ok_or_else(|| corrupt("key provider", &r.provider))?,
                    key_id: r.key_id,
                    task_id: r.task_id,
                    queued_at: from_ms(r.queued_at),
                    attempts: r.attempts,
                    last_error: r.last_error,
                })
            })
            .collect()
    }

    #[tracing::instrument(skip_all, fields(n = ids.len()))]
    async fn keys_invalidated(&self, provider: KeyProvider, ids: &[String]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for id in ids {
            sqlx::query("DELETE FROM api_keys_to_invalidate WHERE provider = $1 AND key_id = $2")
                .bind(provider.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await
                .db()?;
        }
        tx.commit().await.db()?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(n = ids.len()))]
    async fn key_invalidation_failed(
        &self,
        provider: KeyProvider,
        ids: &[String],
        error: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for id in ids {
            sqlx::query(
                "UPDATE api_keys_to_invalidate SET attempts = attempts + 1, last_error = $3 \
                 WHERE provider = $1 AND key_id = $2",
            )
            .bind(provider.as_str())
            .bind(id)
            .bind(error)
            .execute(&mut *tx)
            .await
            .db()?;
        }
        tx.commit().await.db()?;
        Ok(())
    }
}
