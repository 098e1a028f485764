//! The server's own tasks, on the same machinery as operators' — so each
//! runs on one instance at a time, not on every instance, and its failures
//! show in `_health` — and the types the test suite schedules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use flotilla_api::tasks::{ScheduleTaskRequest, TaskSchedule};
use flotilla_domain::agent::AgentStatus;
use flotilla_domain::task::Cost;
use flotilla_store::{AgentFilter, KeyProvider, Page};

use super::keys::ApiKeyStrategy;
use super::{
    Registry, RunContext, RunResult, TaskDefinition, TaskError, TaskManager, TaskRunner, TaskUser,
};
use crate::retention::Retention;

/// What the built-in tasks are configured with.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// Keys of deleted tasks are invalidated this long after (runs in
    /// flight may still use them).
    pub removal_delay: Duration,
    pub invalidate_interval: Duration,
    pub retention: Retention,
    pub retention_interval: Duration,
    /// How often agents past their policy's inactivity timeout are
    /// unenrolled (`None`: never).
    pub unenroll_inactive_interval: Option<Duration>,
    /// The audit trail of runs is kept this long.
    pub runs_kept: Duration,
    /// Actions (and agents' results) are kept this long, expired ones a
    /// day past their expiration.
    pub actions_kept: Duration,
    /// How often agents are counted by status (the status history).
    pub status_sample_interval: Duration,
    /// How long status samples are kept.
    pub status_history_kept: Duration,
    /// Register the `test:*` types (for the test suite and benchmarks).
    pub test_types: bool,
    /// The permission verifier's tasks (`None`: switched off).
    pub verifier: Option<Arc<crate::verifier::VerifierConfig>>,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            removal_delay: Duration::from_secs(3600),
            invalidate_interval: Duration::from_secs(300),
            retention: Retention::default(),
            retention_interval: Duration::from_secs(3600),
            unenroll_inactive_interval: Some(Duration::from_secs(600)),
            runs_kept: Duration::from_secs(7 * 86400),
            actions_kept: Duration::from_secs(30 * 86400),
            status_sample_interval: Duration::from_secs(60),
            status_history_kept: Duration::from_secs(14 * 86400),
            test_types: false,
            verifier: None,
        }
    }
}

pub const INVALIDATE_API_KEYS: &str = "task_manager:invalidate_api_keys";
pub const REMOTE_KEYS: &str = "fleet:invalidate_remote_keys";
pub const RETENTION: &str = "data:retention";
pub const UNENROLL_INACTIVE: &str = "fleet:unenroll_inactive_agents";
pub const PRUNE_RUNS: &str = "task_manager:prune_runs";
pub const EXPIRE_ACTIONS: &str = "fleet:expire_actions";
pub const SAMPLE_AGENT_STATUS: &str = "fleet:sample_agent_status";

/// The registry of built-in types.
pub fn registry(m: &Maintenance, strategy: Arc<dyn ApiKeyStrategy>) -> Registry {
    let mut r = Registry::default();
    let mut def = TaskDefinition::new(
        INVALIDATE_API_KEYS,
        "Invalidate the API keys of deleted tasks",
        Arc::new(InvalidateKeys {
            strategy,
            removal_delay: m.removal_delay,
        }),
    );
    def.cost = Cost::Tiny;
    def.max_concurrency = Some(1);
    r.register(def);
    let mut def = TaskDefinition::new(
        REMOTE_KEYS,
        "Invalidate agents' retired output keys in outputs' clusters",
        Arc::new(RemoteKeys),
    );
    def.cost = Cost::Tiny;
    def.max_concurrency = Some(1);
    r.register(def);
    let mut def = TaskDefinition::new(
        RETENTION,
        "Delete the embedded output's documents past their retention",
        Arc::new(EnforceRetention(m.retention.clone())),
    );
    def.cost = Cost::Large;
    def.max_concurrency = Some(1);
    def.timeout = Duration::from_secs(1800);
    r.register(def);
    let mut def = TaskDefinition::new(
        UNENROLL_INACTIVE,
        "Unenrol agents inactive for longer than their policy's inactivity timeout",
        Arc::new(UnenrollInactive),
    );
    def.max_concurrency = Some(1);
    def.schedulable = true;
    r.register(def);
    let mut def = TaskDefinition::new(
        PRUNE_RUNS,
        "Delete the audit trail of old task runs",
        Arc::new(PruneRuns(m.runs_kept)),
    );
    def.cost = Cost::Tiny;
    def.max_concurrency = Some(1);
    r.register(def);
    let mut def = TaskDefinition::new(
        EXPIRE_ACTIONS,
        "Delete old and expired actions with their results",
        Arc::new(ExpireActions(m.actions_kept)),
    );
    def.cost = Cost::Tiny;
    def.max_concurrency = Some(1);
    r.register(def);
    let mut def = TaskDefinition::new(
        SAMPLE_AGENT_STATUS,
        "Count agents by status for the status history",
        Arc::new(SampleAgentStatus(crate::status_history::Sampling {
            every: m.status_sample_interval,
            keep: m.status_history_kept,
        })),
    );
    def.cost = Cost::Tiny;
    def.max_concurrency = Some(1);
    r.register(def);
    if let Some(v) = &m.verifier {
        use crate::verifier::{VerifierStatus, VerifyPermissions, STATUS_TASK, VERIFY_TASK};
        let mut def = TaskDefinition::new(
            VERIFY_TASK,
            "Verify that cloud connectors hold the permissions their integrations need",
            Arc::new(VerifyPermissions(v.clone())),
        );
        def.max_concurrency = Some(1);
        def.max_attempts = 1;
        r.register(def);
        let mut def = TaskDefinition::new(
            STATUS_TASK,
            "Fold the permission verifier's results into the cloud connectors",
            Arc::new(VerifierStatus(v.clone())),
        );
        def.cost = Cost::Tiny;
        def.max_concurrency = Some(1);
        r.register(def);
    }
    if m.test_types {
        register_test_types(&mut r);
    }
    r
}

/// Schedule the built-in recurring tasks (idempotent: fixed ids).
pub async fn ensure_scheduled(
    tm: &TaskManager,
    m: &Maintenance,
) -> Result<(), crate::ServiceError> {
    let mut wanted = vec![
        (INVALIDATE_API_KEYS, m.invalidate_interval),
        (REMOTE_KEYS, Duration::from_secs(5)),
        (RETENTION, m.retention_interval),
        (PRUNE_RUNS, Duration::from_secs(3600)),
        (EXPIRE_ACTIONS, Duration::from_secs(3600)),
        (SAMPLE_AGENT_STATUS, m.status_sample_interval),
    ];
    if let Some(i) = m.unenroll_inactive_interval {
        wanted.push((UNENROLL_INACTIVE, i));
    }
    if let Some(v) = &m.verifier {
        wanted.push((crate::verifier::VERIFY_TASK, v.verify_interval));
        wanted.push((crate::verifier::STATUS_TASK, v.status_interval));
    }
    for (ty, every) in wanted {
        tm.schedule(
            None,
            ScheduleTaskRequest {
                id: Some(ty.to_owned()),
                task_type: ty.to_owned(),
                params: None,
                state: None,
                schedule: Some(TaskSchedule {
                    interval: humantime::format_duration(every)
                        .to_string()
                        .replace(' ', ""),
                }),
                run_at: None,
                enabled: None,
            },
        )
        .await?;
    }
    Ok(())
}

struct InvalidateKeys {
    strategy: Arc<dyn ApiKeyStrategy>,
    removal_delay: Duration,
}

#[async_trait]
impl TaskRunner for InvalidateKeys {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let store = &ctx.services.store;
        let before = ctx.now - chrono::Duration::from_std(self.removal_delay).unwrap_or_default();
        let mut invalidated = 0usize;
        let mut failed = 0usize;
        // Pages until the queue has nothing due; a failing provider's keys
        // stay queued for the next run.
        let mut skip: Vec<KeyProvider> = Vec::new();
        for _ in 0..100 {
            let due = store.keys_to_invalidate(before, 500).await?;
            let mut by: BTreeMap<KeyProvider, Vec<String>> = BTreeMap::new();
            for k in due.into_iter().filter(|k| !skip.contains(&k.provider)) {
                by.entry(k.provider).or_default().push(k.key_id);
            }
            if by.is_empty() {
                break;
            }
            for (provider, ids) in by {
                match self
                    .strategy
                    .invalidate(&ctx.services, provider, &ids)
                    .await
                {
                    Ok(done) => {
                        invalidated += done.len();
                        store.keys_invalidated(provider, &done).await?;
                        let left: Vec<String> =
                            ids.into_iter().filter(|i| !done.contains(i)).collect();
                        if !left.is_empty() {
                            failed += left.len();
                            store
                                .key_invalidation_failed(
                                    provider,
                                    &left,
                                    "not confirmed by the provider",
                                )
                                .await?;
                            skip.push(provider);
                        }
                    }
                    Err(e) => {
                        failed += ids.len();
                        tracing::warn!(provider = provider.as_str(), error = %e, "could not invalidate task keys; they stay queued");
                        store.key_invalidation_failed(provider, &ids, &e).await?;
                        skip.push(provider);
                    }
                }
            }
        }
        metrics::counter!("flotilla_task_keys_invalidated_total").increment(invalidated as u64);
        Ok(RunResult::with_state(
            json!({"invalidated": invalidated, "failed": failed}),
        ))
    }
}

struct RemoteKeys;

#[async_trait]
impl TaskRunner for RemoteKeys {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let n = ctx.services.fleet().invalidate_remote_keys().await?;
        Ok(RunResult::with_state(json!({"invalidated": n})))
    }
}

struct EnforceRetention(Retention);

#[async_trait]
impl TaskRunner for EnforceRetention {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let n = ctx.services.enforce_retention(&self.0, ctx.now).await?;
        Ok(RunResult::with_state(json!({"deleted": n})))
    }
}

struct SampleAgentStatus(crate::status_history::Sampling);

#[async_trait]
impl TaskRunner for SampleAgentStatus {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let written = ctx.services.sample_agent_status(&self.0, ctx.now).await?;
        Ok(RunResult::with_state(json!({"written": written})))
    }
}

struct UnenrollInactive;

#[async_trait]
impl TaskRunner for UnenrollInactive {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let store = &ctx.services.store;
        let mut unenrolled = 0u64;
        loop {
            let page = store
                .list_agents(
                    &AgentFilter {
                        status: Some(AgentStatus::Inactive),
                        ..Default::default()
                    },
                    Page {
                        page: 1,
                        per_page: 500,
                    },
                    ctx.now,
                )
                .await?;
            if page.items.is_empty() {
                break;
            }
            for a in &page.items {
                store.unenroll_now(&a.id, ctx.now).await?;
                tracing::info!(agent = %a.id, "unenrolled an inactive agent");
                unenrolled += 1;
            }
            if *ctx.cancelled.borrow() {
                break;
            }
        }
        Ok(RunResult::with_state(json!({"unenrolled": unenrolled})))
    }
}

struct ExpireActions(Duration);

#[async_trait]
impl TaskRunner for ExpireActions {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let created_before = ctx.now - chrono::Duration::from_std(self.0).unwrap_or_default();
        let n = ctx
            .services
            .store
            .expire_actions(created_before, ctx.now - chrono::Duration::days(1))
            .await?;
        Ok(RunResult::with_state(json!({"deleted": n})))
    }
}

struct PruneRuns(Duration);

#[async_trait]
impl TaskRunner for PruneRuns {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let before = ctx.now - chrono::Duration::from_std(self.0).unwrap_or_default();
        let n = ctx.services.store.prune_task_runs(before).await?;
        Ok(RunResult::with_state(json!({"pruned": n})))
    }
}

/// `test:noop` counts its runs in its state; `test:sleep` waits
/// `params.ms`; `test:fail` fails its first `params.times` attempts
/// (`params.unrecoverable`: at once, for good); `test:whoami` (user
/// scoped) records which key it ran with and checks it works.
fn register_test_types(r: &mut Registry) {
    let mut def = TaskDefinition::new("test:noop", "Counts its runs", Arc::new(Noop));
    def.schedulable = true;
    def.cost = Cost::Tiny;
    r.register(def);
    let mut def = TaskDefinition::new("test:sleep", "Sleeps params.ms", Arc::new(Sleep));
    def.schedulable = true;
    r.register(def);
    let mut def = TaskDefinition::new("test:fail", "Fails params.times times", Arc::new(Fail));
    def.schedulable = true;
    r.register(def);
    let mut def = TaskDefinition::new("test:whoami", "Runs as its user", Arc::new(WhoAmI));
    def.schedulable = true;
    def.user_scoped = true;
    r.register(def);
}

struct Noop;

#[async_trait]
impl TaskRunner for Noop {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let n = ctx.state.get("runs").and_then(Value::as_i64).unwrap_or(0);
        Ok(RunResult::with_state(json!({"runs": n + 1})))
    }
}

struct Sleep;

#[async_trait]
impl TaskRunner for Sleep {
    async fn run(&self, mut ctx: RunContext) -> Result<RunResult, TaskError> {
        let wait = ctx.params.get("ms").and_then(Value::as_u64).unwrap_or(10);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = ctx.cancelled.wait_for(|c| *c) => return Err(TaskError::Retry("cancelled".into())),
        }
        Ok(RunResult::with_state(json!({"slept_ms": wait})))
    }
}

struct Fail;

#[async_trait]
impl TaskRunner for Fail {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let times = ctx
            .params
            .get("times")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        if ctx.params.get("unrecoverable").and_then(Value::as_bool) == Some(true) {
            return Err(TaskError::Unrecoverable("asked to fail for good".into()));
        }
        if u64::from(ctx.attempt) <= times {
            return Err(TaskError::Retry(format!("failing attempt {}", ctx.attempt)));
        }
        Ok(RunResult::with_state(
            json!({"succeeded_on_attempt": ctx.attempt}),
        ))
    }
}

struct WhoAmI;

#[async_trait]
impl TaskRunner for WhoAmI {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let Some(user) = &ctx.user else {
            return Err(TaskError::Unrecoverable("no user".into()));
        };
        // Prove the identity works where it lives.
        let verified = match user {
            TaskUser::Local { principal, .. } => principal.id(),
            TaskUser::Remote { session, .. } => {
                let v = session
                    .call(
                        reqwest::Method::GET,
                        "/_security/_authenticate",
                        Value::Null,
                    )
                    .await
                    .map_err(|e| TaskError::Retry(e.to_string()))?;
                v.pointer("/api_key/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            }
        };
        let runs = ctx.state.get("runs").and_then(Value::as_i64).unwrap_or(0) + 1;
        Ok(RunResult {
            state: Some(json!({
                "provider": user.provider().as_str(),
                "key_id": user.key_id(),
                "user_name": user.user_name(),
                "verified": verified,
                "runs": runs,
            })),
            // Kept (disabled) so its state can be read back.
            disable: true,
            ..Default::default()
        })
    }
}
