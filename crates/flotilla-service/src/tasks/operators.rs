//! What operators do with tasks: schedule (granting keys for user-scoped
//! types), read, delete, run soon, enable and disable; and `_health`.

use chrono::{DateTime, TimeZone, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use flotilla_api::tasks::{
    ScheduleTaskRequest, Task, TaskBulkResults, TaskIdResult, TaskSchedule, TaskUserScope,
};
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::task::{parse_interval, validate_task_id};
use flotilla_domain::ValidationError;
use flotilla_store::{
    KeyProvider, NewTask, Page, Paged, Scheduled, TaskFilter, TaskRecord, TaskStatus, UserScope,
};

use super::keys::key_aad;
use super::TaskManager;
use crate::keys::Principal;
use crate::ServiceError;

pub use flotilla_api::tasks::ScheduleTaskRequest as ScheduleTask;
pub use flotilla_api::tasks::Task as TaskView;
pub use flotilla_api::tasks::TaskBulkResults as BulkResult;
/// `GET /api/task_manager/_health`'s body.
pub type TaskHealth = Value;

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn format_interval(ms: i64) -> String {
    let d = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// The API's view of a task: never its sealed keys.
pub(super) fn view(t: &TaskRecord) -> Task {
    Task {
        id: t.id.clone(),
        task_type: t.task_type.clone(),
        params: t.params.clone(),
        state: t.state.clone(),
        schedule: t.interval_ms.map(|ms| TaskSchedule {
            interval: format_interval(ms),
        }),
        run_at: t.run_at,
        scheduled_at: t.scheduled_at,
        started_at: t.started_at,
        retry_at: t.lease_expires_at,
        attempts: t.attempts,
        status: t.status.as_str().to_owned(),
        owner_id: t.owner.clone(),
        enabled: t.enabled,
        created_at: t.created_at,
        updated_at: t.updated_at,
        last_error: t.last_error.clone(),
        last_run_at: t.last_run_at,
        last_run_duration_ms: t.last_run_ms,
        runs: t.runs,
        user_scope: t.user.as_ref().map(|u| TaskUserScope {
            user_id: u.user_id.clone(),
            user_name: u.user_name.clone(),
            api_key_id: u.api_key_id.clone(),
            secondary_api_key_id: u.secondary_api_key_id.clone(),
        }),
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl TaskManager {
    /// Schedule a task for an operator (who, with the credential they
    /// authenticated with, for user-scoped types), or for the server
    /// itself (`None`: built-in maintenance).
    pub async fn schedule(
        &self,
        who: Option<(&OperatorApiKey, &SecretString)>,
        req: ScheduleTaskRequest,
    ) -> Result<(Task, bool), ServiceError> {
        let def = self.registry.get(&req.task_type).ok_or_else(|| {
            ServiceError::Invalid(ValidationError::new(
                "taskType",
                format!("task type '{}' is not registered", req.task_type),
            ))
        })?;
        if who.is_some() && !def.schedulable {
            return Err(ServiceError::Invalid(ValidationError::new(
                "taskType",
                format!(
                    "task type '{}' is the server's own and cannot be scheduled through the API",
                    req.task_type
                ),
            )));
        }
        let id = match req.id {
            Some(id) => {
                validate_task_id(&id)?;
                id
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let interval_ms = match &req.schedule {
            None => None,
            Some(s) => Some(
                i64::try_from(parse_interval("schedule.interval", &s.interval)?.as_millis())
                    .unwrap_or(i64::MAX),
            ),
        };
        let params = req.params.unwrap_or_else(|| json!({}));
        if !params.is_object() {
            return Err(ValidationError::new("params", "must be an object").into());
        }
        let state = req.state.unwrap_or_else(|| json!({}));
        if !state.is_object() {
            return Err(ValidationError::new("state", "must be an object").into());
        }
        let now = self.clock.now();
        let user = match (def.user_scoped, who) {
            (false, _) => None,
            (true, None) => {
                return Err(ServiceError::Invalid(ValidationError::new(
                    "taskType",
                    "a user-scoped task needs an operator to run as",
                )))
            }
            (true, Some((op, credential))) => {
                let principal = Principal::Operator(op.clone());
                let granted = self
                    .strategy
                    .grant(&self.services, &def.task_type, &id, &principal, credential)
                    .await?;
                let seal = |(key_id, secret): &(String, SecretString)| {
                    (
                        key_id.clone(),
                        self.services
                            .sealer
                            .seal(secret.expose_secret().as_bytes(), &key_aad(&id, key_id)),
                    )
                };
                let primary = granted.primary.as_ref().map(seal);
                let secondary = granted.secondary.as_ref().map(seal);
                Some(UserScope {
                    user_id: principal.id(),
                    user_name: principal.name(),
                    api_key_id: primary.as_ref().map(|p| p.0.clone()),
                    api_key_sealed: primary.map(|p| p.1),
                    secondary_api_key_id: secondary.as_ref().map(|s| s.0.clone()),
                    secondary_api_key_sealed: secondary.map(|s| s.1),
                })
            }
        };
        let new = NewTask {
            id: id.clone(),
            task_type: def.task_type.clone(),
            params,
            state,
            interval_ms,
            run_at: req.run_at.unwrap_or(now),
            enabled: req.enabled.unwrap_or(true),
            cost: def.cost.units(),
            user: user.clone(),
        };
        let stored = self.services.store.schedule_task(&new, now).await;
        // Keys granted for a task that was not stored (an error, or the id
        // already scheduled) are queued at once: nothing holds them.
        let unused = match &stored {
            Ok(Scheduled::Created(_)) => false,
            Ok(Scheduled::Existing(_)) | Err(_) => true,
        };
        if unused {
            if let Some(u) = &user {
                let mut keys = Vec::new();
                if let Some(k) = &u.api_key_id {
                    keys.push((KeyProvider::Primary, k.clone(), Some(id.clone())));
                }
                if let Some(k) = &u.secondary_api_key_id {
                    keys.push((KeyProvider::Secondary, k.clone(), Some(id.clone())));
                }
                if let Err(e) = self
                    .services
                    .store
                    .queue_keys_for_invalidation(&keys, now)
                    .await
                {
                    tracing::error!(error = %e, task = %id, "could not queue unused task keys for invalidation");
                }
            }
        }
        self.wake();
        match stored? {
            Scheduled::Created(t) => Ok((view(&t), true)),
            Scheduled::Existing(t) => Ok((view(&t), false)),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Task, ServiceError> {
        Ok(view(&self.services.store.get_task(id).await?))
    }

    pub async fn list(
        &self,
        task_type: Option<String>,
        status: Option<&str>,
        page: Page,
    ) -> Result<Paged<Task>, ServiceError> {
        let status =
            match status {
                None => None,
                Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
                    ValidationError::new("status", "one of idle, running or failed")
                })?),
            };
        let got = self
            .services
            .store
            .list_tasks(&TaskFilter { task_type, status }, page)
            .await?;
        Ok(Paged {
            items: got.items.iter().map(view).collect(),
            total: got.total,
        })
    }

    /// Delete tasks; every key they held is queued for invalidation in the
    /// same transaction (whether or not their sealed keys still open).
    pub async fn delete(&self, ids: &[String]) -> Result<TaskBulkResults, ServiceError> {
        if ids.is_empty() || ids.len() > 10_000 {
            return Err(ValidationError::new("ids", "between 1 and 10000 ids").into());
        }
        let deleted = self
            .services
            .store
            .delete_tasks(ids, self.clock.now())
            .await?;
        Ok(results(ids, &deleted))
    }

    pub async fn run_soon(&self, id: &str) -> Result<Task, ServiceError> {
        let t = self
            .services
            .store
            .run_task_soon(id, self.clock.now())
            .await?;
        self.wake();
        Ok(view(&t))
    }

    pub async fn set_enabled(
        &self,
        ids: &[String],
        enabled: bool,
    ) -> Result<TaskBulkResults, ServiceError> {
        if ids.is_empty() || ids.len() > 10_000 {
            return Err(ValidationError::new("ids", "between 1 and 10000 ids").into());
        }
        let found = self
            .services
            .store
            .set_tasks_enabled(ids, enabled, self.clock.now())
            .await?;
        self.wake();
        Ok(results(ids, &found))
    }

    /// The audit trail: runs, newest first (one task's, or all).
    pub async fn runs(
        &self,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Value>, ServiceError> {
        if limit == 0 || limit > 10_000 {
            return Err(ValidationError::new("limit", "between 1 and 10000").into());
        }
        let runs = self.services.store.task_runs(task_id, limit).await?;
        Ok(runs
            .into_iter()
            .map(|r| {
                json!({
                    "taskId": r.task_id,
                    "taskType": r.task_type,
                    "ownerId": r.owner,
                    "attempt": r.attempt,
                    "dueAt": r.due_at,
                    "startedAt": r.started_at,
                    "finishedAt": r.finished_at,
                    "outcome": r.outcome,
                    "error": r.error,
                })
            })
            .collect())
    }

    /// This instance's view: workload from the store, runtime from its
    /// own runs.
    pub async fn health(&self) -> Result<TaskHealth, ServiceError> {
        let now = self.clock.now();
        let counts = self.services.store.task_counts(now).await?;
        let mut by_type = serde_json::Map::new();
        let (mut total, mut overdue) = (0i64, 0i64);
        for c in &counts {
            total += c.count;
            overdue += c.overdue;
            let entry = by_type
                .entry(c.task_type.clone())
                .or_insert_with(|| json!({"count": 0, "overdue": 0, "status": {}}));
            entry["count"] = json!(entry["count"].as_i64().unwrap_or(0) + c.count);
            entry["overdue"] = json!(entry["overdue"].as_i64().unwrap_or(0) + c.overdue);
            entry["status"][c.status.as_str()] = json!(c.count);
        }
        let (used, running) = self.in_flight();
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut drift: Vec<i64> = stats.drift_ms.iter().copied().collect();
        drift.sort_unstable();
        let cutoff = std::time::Instant::now()
            .checked_sub(std::time::Duration::from_secs(60))
            .unwrap_or_else(std::time::Instant::now);
        let recent: Vec<bool> = stats
            .finished
            .iter()
            .filter(|(t, _)| *t >= cutoff)
            .map(|(_, ok)| *ok)
            .collect();
        let failures = recent.iter().filter(|ok| !**ok).count();
        let p99 = percentile(&drift, 99.0);
        let status = if p99 > 60_000 || (recent.len() >= 10 && failures * 10 >= recent.len() * 9) {
            "error"
        } else if p99 > 10_000 || overdue > 0 && p99 > 5_000 {
            "warn"
        } else {
            "OK"
        };
        let utilisation = if self.config.capacity > 0 {
            (used as f64 / self.config.capacity as f64 * 100.0).round()
        } else {
            0.0
        };
        metrics::gauge!("flotilla_task_capacity_used").set(used as f64);
        metrics::gauge!("flotilla_task_capacity").set(self.config.capacity as f64);
        metrics::gauge!("flotilla_task_overdue").set(overdue as f64);
        metrics::gauge!("flotilla_task_drift_p50_seconds")
            .set(percentile(&drift, 50.0) as f64 / 1000.0);
        metrics::gauge!("flotilla_task_drift_p99_seconds").set(p99 as f64 / 1000.0);
        metrics::gauge!("flotilla_task_runs_per_minute").set(recent.len() as f64);
        metrics::gauge!("flotilla_task_failures_per_minute").set(failures as f64);
        for c in &counts {
            metrics::gauge!("flotilla_tasks", "type" => c.task_type.clone(), "status" => c.status.as_str())
                .set(c.count as f64);
        }
        Ok(json!({
            "id": self.config.instance_id,
            "timestamp": now,
            "status": status,
            "last_update": now,
            "stats": {
                "configuration": {
                    "poll_interval_ms": self.config.poll_interval.as_millis() as u64,
                    "lease_ms": self.config.lease.as_millis() as u64,
                    "capacity": {"as_cost": self.config.capacity, "as_workers": self.config.capacity / 2},
                    "claim_strategy": if self.services.store.engine() == "postgres" { "skip_locked" } else { "single_writer" },
                },
                "workload": {
                    "count": total,
                    "overdue": overdue,
                    "task_types": by_type,
                },
                "runtime": {
                    "drift_ms": {
                        "p50": percentile(&drift, 50.0),
                        "p99": p99,
                        "samples": drift.len(),
                    },
                    "load": {"running": running, "capacity_used": used, "utilisation_percent": utilisation},
                    "runs_per_minute": recent.len(),
                    "failures_per_minute": failures,
                    "runs_total": stats.runs_total,
                    "failures_total": stats.failures_total,
                    "claims_total": stats.claims_total,
                    "last_successful_poll": stats.last_poll,
                },
            },
        }))
    }
}

fn results(asked: &[String], done: &[String]) -> TaskBulkResults {
    let done: std::collections::HashSet<&String> = done.iter().collect();
    TaskBulkResults {
        results: asked
            .iter()
            .map(|id| {
                let ok = done.contains(id);
                TaskIdResult {
                    id: id.clone(),
                    success: ok,
                    error: (!ok).then(|| format!("task '{id}' not found")),
                }
            })
            .collect(),
    }
}
