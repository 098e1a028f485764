//! Claiming and running: the poll loop, the lease keeper, and what a run's
//! result does to its task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio::sync::{watch, Notify};

use flotilla_domain::task::{next_run_ms, retry_delay};
use flotilla_store::{ClaimRequest, RunOutcome, StoreEvent, TaskRecord};

use super::keys::{key_aad, ApiKeyStrategy};
use super::{Clock, Registry, RunContext, RunResult, TaskDefinition, TaskError, TaskUser};
use crate::Services;

/// How one instance claims and runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Unique per process: claim tokens and the audit trail name it.
    pub instance_id: String,
    pub poll_interval: Duration,
    /// Cost units this instance runs at once (a normal task costs 2).
    pub capacity: i64,
    /// How long a claim holds without renewal; renewed every third of it.
    /// An instance that dies loses its runs to another after this.
    pub lease: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            instance_id: uuid::Uuid::new_v4().to_string(),
            poll_interval: Duration::from_millis(500),
            capacity: 20,
            lease: Duration::from_secs(30),
        }
    }
}

struct InFlight {
    task_id: String,
    task_type: String,
    cost: i64,
    cancel: watch::Sender<bool>,
    /// The lease as last written: a run whose lease this instance could
    /// not renew stops before another instance may take it over.
    lease_until: DateTime<Utc>,
}

/// Figures `_health` and `/metrics` report.
#[derive(Default)]
pub(super) struct Stats {
    /// Start minus due, in ms, of the last runs.
    pub(super) drift_ms: VecDeque<i64>,
    /// When runs finished, and whether they succeeded (the last minute's).
    pub(super) finished: VecDeque<(Instant, bool)>,
    pub(super) runs_total: u64,
    pub(super) failures_total: u64,
    pub(super) claims_total: u64,
    pub(super) last_poll: Option<DateTime<Utc>>,
}

const DRIFT_SAMPLES: usize = 1000;

/// One instance's task manager.
pub struct TaskManager {
    pub(super) services: Services,
    pub(super) registry: Registry,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) config: ManagerConfig,
    pub(super) strategy: Arc<dyn ApiKeyStrategy>,
    inflight: Mutex<HashMap<String, InFlight>>,
    pub(super) stats: Mutex<Stats>,
    wake: Notify,
    idle: Notify,
}

impl TaskManager {
    pub fn new(
        services: Services,
        registry: Registry,
        clock: Arc<dyn Clock>,
        config: ManagerConfig,
        strategy: Arc<dyn ApiKeyStrategy>,
    ) -> Arc<Self> {
        Arc::new(TaskManager {
            services,
            registry,
            clock,
            config,
            strategy,
            inflight: Mutex::new(HashMap::new()),
            stats: Mutex::new(Stats::default()),
            wake: Notify::new(),
            idle: Notify::new(),
        })
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Claim now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) fn in_flight(&self) -> (i64, usize) {
        let f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        (f.values().map(|r| r.cost).sum(), f.len())
    }

    /// Poll, claim and run until `stop`; then stop claiming and give runs
    /// in flight `drain` to finish (the rest are cancelled; their leases
    /// pass to another instance).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, drain: Duration) {
        let mut events = self.services.store.subscribe();
        // Leases are kept through the drain, until the runs are cancelled.
        let (keeper_stop, keeper_rx) = watch::channel(false);
        let keeper = tokio::spawn(self.clone().keep_leases(keeper_rx));
        let mut claim_now = true;
        loop {
            if claim_now {
                if let Err(e) = self.poll_once().await {
                    tracing::warn!(error = %e, "task claim failed");
                }
            }
            let jitter = rand::random::<f64>() * 0.1;
            let wait = self.config.poll_interval.mul_f64(1.0 + jitter);
            tokio::select! {
                _ = tokio::time::sleep(wait) => claim_now = true,
                // A run ended (or a task was scheduled here): claim once
                // half the capacity is free, or nothing runs — not for
                // every run that ends, which would make a claim statement
                // per task.
                _ = self.wake.notified() => {
                    let (used, running) = self.in_flight();
                    claim_now = running == 0 || used * 2 <= self.config.capacity;
                }
                ev = events.recv() => {
                    claim_now = matches!(
                        ev,
                        Ok(StoreEvent::TasksDue | StoreEvent::Resync)
                            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
                    );
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let deadline = tokio::time::Instant::now() + drain;
        while self.in_flight().1 > 0 {
            let idle = self.idle.notified();
            if self.in_flight().1 == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        for r in self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = r.cancel.send(true);
        }
        let _ = keeper_stop.send(true);
        let _ = keeper.await;
    }

    /// Claim what fits and start running it; returns how many were claimed.
    pub async fn poll_once(self: &Arc<Self>) -> Result<usize, crate::ServiceError> {
        let claimed = self.claim().await?;
        let n = claimed.len();
        for task in claimed {
            let me = self.clone();
            tokio::spawn(async move { me.execute(task).await });
        }
        Ok(n)
    }

    /// Claim what is due and run it to the end (tests and benchmarks).
    pub async fn run_due(self: &Arc<Self>) -> Result<usize, crate::ServiceError> {
        let claimed = self.claim().await?;
        let n = claimed.len();
        let runs: Vec<_> = claimed
            .into_iter()
            .map(|t| {
                let me = self.clone();
                tokio::spawn(async move { me.execute(t).await })
            })
            .collect();
        for r in runs {
            let _ = r.await;
        }
        Ok(n)
    }

    async fn claim(self: &Arc<Self>) -> Result<Vec<TaskRecord>, crate::ServiceError> {
        let now = self.clock.now();
        let lease_until = now + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        let (used, _) = self.in_flight();
        let free = self.config.capacity - used;
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_poll = Some(now);
        if free <= 0 {
            return Ok(vec![]);
        }
        let running_of = |ty: &str| {
            self.inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|r| r.task_type == ty)
                .count() as u32
        };
        // One statement for every type; a type with a concurrency limit is
        // capped at its free slots here (and left out when it has none).
        let mut types = Vec::new();
        let mut per_type = Vec::new();
        let mut cheapest = i64::MAX;
        for def in self.registry.types() {
            if let Some(max) = def.max_concurrency {
                let slots = max.saturating_sub(running_of(&def.task_type));
                if slots == 0 {
                    continue;
                }
                per_type.push((def.task_type.clone(), slots));
            }
            cheapest = cheapest.min(i64::from(def.cost.units().max(1)));
            types.push(def.task_type.clone());
        }
        if types.is_empty() || free < cheapest {
            return Ok(vec![]);
        }
        let claimed = self
            .services
            .store
            .claim_tasks(&ClaimRequest {
                owner: self.config.instance_id.clone(),
                types,
                per_type,
                limit: u32::try_from(free / cheapest).unwrap_or(u32::MAX),
                capacity: free,
                now,
                lease_until,
            })
            .await?;
        // Registered before the runs start, so the next claim counts them.
        {
            let mut f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            for t in &claimed {
                let (cancel, _) = watch::channel(false);
                f.insert(
                    t.claim_token.clone().unwrap_or_default(),
                    InFlight {
                        task_id: t.id.clone(),
                        task_type: t.task_type.clone(),
                        cost: i64::from(t.cost),
                        cancel,
                        lease_until,
                    },
                );
            }
        }
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.claims_total += claimed.len() as u64;
        for t in &claimed {
            let drift = (now - t.scheduled_at).num_milliseconds().max(0);
            if stats.drift_ms.len() == DRIFT_SAMPLES {
                stats.drift_ms.pop_front();
            }
            stats.drift_ms.push_back(drift);
            metrics::histogram!("flotilla_task_drift_seconds").record(drift as f64 / 1000.0);
        }
        metrics::counter!("flotilla_task_claims_total").increment(claimed.len() as u64);
        Ok(claimed)
    }

    /// Renew the leases of runs in flight; a run whose claim was lost
    /// (taken over, or its task deleted) is cancelled.
    async fn keep_leases(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.lease / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.renew_leases().await {
                tracing::warn!(error = %e, "could not renew task leases");
            }
            // Keeps the `/metrics` gauges (workload, overdue, load) fresh.
            if let Err(e) = self.health().await {
                tracing::debug!(error = %e, "could not refresh the task gauges");
            }
        }
    }

    /// One renewal pass (also for tests).
    pub async fn renew_leases(&self) -> Result<(), crate::ServiceError> {
        let tokens: Vec<String> = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        if tokens.is_empty() {
            return Ok(());
        }
        let until =
            self.clock.now() + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        let renewed = self
            .services
            .store
            .extend_task_leases(&self.config.instance_id, &tokens, until)
            .await;
        let now = self.clock.now();
        let margin = chrono::Duration::from_std(self.config.lease / 6).unwrap_or_default();
        let mut f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(held) = &renewed {
            for t in &tokens {
                let Some(r) = f.get_mut(t) else { continue };
                if held.contains(t) {
                    r.lease_until = until;
                } else {
                    tracing::warn!(task = %r.task_id, "the task's lease was lost: cancelling its run");
                    let _ = r.cancel.send(true);
                }
            }
        }
        // Fencing: a run whose lease could not be renewed (the store is
        // unreachable from here) stops before the lease runs out, so it
        // is never running when another instance takes the task over.
        for r in f.values() {
            if r.lease_until - margin <= now && !*r.cancel.borrow() {
                tracing::warn!(task = %r.task_id, "the task's lease could not be renewed: cancelling its run");
                let _ = r.cancel.send(true);
            }
        }
        renewed.map(|_| ())?;
        Ok(())
    }

    /// The user a run acts as, from the task's sealed key.
    async fn user_for(&self, task: &TaskRecord) -> Result<Option<TaskUser>, TaskError> {
        let Some(scope) = &task.user else {
            return Ok(None);
        };
        let Some((provider, key_id, sealed)) = self.strategy.key_for_run(scope) else {
            return Err(TaskError::Unrecoverable(
                "the task runs as a user but holds no API key".into(),
            ));
        };
        let unopened =
            || TaskError::Unrecoverable(format!("the task's API key [{key_id}] cannot be opened"));
        let opened = self
            .services
            .sealer
            .open(&sealed, &key_aad(&task.id, &key_id))
            .map_err(|_| unopened())?;
        let credential = String::from_utf8(opened).map_err(|_| unopened())?;
        self.strategy
            .user_for_run(
                &self.services,
                provider,
                &key_id,
                SecretString::from(credential),
                &scope.user_name,
            )
            .await
            .map(Some)
    }

    /// The most a registered type costs: the capacity must hold it, or a
    /// due task of that type would block every claim behind it.
    pub fn max_cost(&self) -> i64 {
        self.registry
            .types()
            .map(|d| i64::from(d.cost.units()))
            .max()
            .unwrap_or(0)
    }

    async fn execute(self: Arc<Self>, task: TaskRecord) {
        let token = task.claim_token.clone().unwrap_or_default();
        let started = Instant::now();
        let outcome = self.outcome_of(&task, &token).await;
        let now = self.clock.now();
        let ok = matches!(
            &outcome,
            RunOutcome::Delete | RunOutcome::Reschedule { error: None, .. }
        );
        let elapsed = started.elapsed();
        let held = match self
            .services
            .store
            .finish_task_run(
                &task.id,
                &token,
                &outcome,
                now,
                i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            )
            .await
        {
            Ok(h) => h,
            Err(e) => {
                // The lease runs out and another claim repeats the run.
                tracing::warn!(task = %task.id, error = %e, "could not record a task's run");
                false
            }
        };
        if !held {
            tracing::info!(task = %task.id, "a run finished after losing its claim: its result is dropped");
        }
        let label = if ok { "success" } else { "failure" };
        metrics::counter!("flotilla_task_runs_total", "type" => task.task_type.clone(), "outcome" => label)
            .increment(1);
        metrics::histogram!("flotilla_task_run_seconds", "type" => task.task_type.clone())
            .record(elapsed.as_secs_f64());
        {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.runs_total += 1;
            if !ok {
                stats.failures_total += 1;
            }
            let cutoff = Instant::now()
                .checked_sub(Duration::from_secs(60))
                .unwrap_or_else(Instant::now);
            while stats.finished.front().is_some_and(|(t, _)| *t < cutoff) {
                stats.finished.pop_front();
            }
            stats.finished.push_back((Instant::now(), ok));
        }
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token);
        self.idle.notify_waiters();
        // A slot is free: look for more now.
        self.wake.notify_one();
    }

    /// Run the task (unless it cannot be) and decide what becomes of it.
    async fn outcome_of(&self, task: &TaskRecord, token: &str) -> RunOutcome {
        let Some(def) = self.registry.get(&task.task_type).cloned() else {
            return RunOutcome::Fail {
                error: format!(
                    "task type {} is not registered on this server",
                    task.task_type
                ),
            };
        };
        let attempt = u32::try_from(task.attempts.max(1)).unwrap_or(1);
        if task.interval_ms.is_none() && attempt > def.max_attempts {
            return RunOutcome::Fail {
                error: format!(
                    "out of attempts ({}): its runs never finished (their instances stopped)",
                    def.max_attempts
                ),
            };
        }
        let user = match self.user_for(task).await {
            Ok(u) => u,
            Err(TaskError::Unrecoverable(e)) => return RunOutcome::Fail { error: e },
            Err(e) => return self.decide(task, &def, attempt, Err(e)),
        };
        if def.user_scoped && user.is_none() {
            return RunOutcome::Fail {
                error: format!(
                    "task type {} runs as a user, and the task has none",
                    def.task_type
                ),
            };
        }
        let cancelled = {
            let f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match f.get(token) {
                Some(r) => r.cancel.subscribe(),
                None => watch::channel(false).1,
            }
        };
        let cancel_tx = {
            let f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            f.get(token).map(|r| r.cancel.clone())
        };
        let ctx = RunContext {
            task_id: task.id.clone(),
            task_type: task.task_type.clone(),
            params: task.params.clone(),
            state: task.state.clone(),
            attempt,
            now: self.clock.now(),
            user,
            services: self.services.clone(),
            cancelled: cancelled.clone(),
        };
        let mut lost = cancelled;
        let runner = def.runner.clone();
        // Its own task: a runner that panics fails its run, not the
        // manager (its slot and lease are released as for any failure).
        let mut handle = tokio::spawn(async move { runner.run(ctx).await });
        let result = tokio::select! {
            r = tokio::time::timeout(def.timeout, &mut handle) => match r {
                Ok(Ok(r)) => r,
                Ok(Err(e)) if e.is_panic() => Err(TaskError::Retry("the run panicked".into())),
                Ok(Err(_)) => Err(TaskError::Retry("the run was aborted".into())),
                Err(_) => {
                    if let Some(tx) = &cancel_tx {
                        let _ = tx.send(true);
                    }
                    Err(TaskError::Retry(format!(
                        "timed out after {}",
                        humantime::format_duration(def.timeout)
                    )))
                }
            },
            _ = lost.wait_for(|c| *c) => Err(TaskError::Retry("cancelled: the run's claim was lost or the server stopped".into())),
        };
        handle.abort();
        self.decide(task, &def, attempt, result)
    }

    fn decide(
        &self,
        task: &TaskRecord,
        def: &TaskDefinition,
        attempt: u32,
        result: Result<RunResult, TaskError>,
    ) -> RunOutcome {
        let now = self.clock.now();
        let started = task.started_at.unwrap_or(now);
        let next_on_schedule = |interval_ms: i64| {
            super::operators::from_ms(next_run_ms(
                interval_ms,
                task.scheduled_at.timestamp_millis(),
                started.timestamp_millis(),
                now.timestamp_millis(),
                i64::try_from(self.config.poll_interval.as_millis()).unwrap_or(500),
            ))
        };
        match result {
            Ok(r) => {
                if r.delete {
                    return RunOutcome::Delete;
                }
                let interval_ms = match r.interval {
                    Some(i) => i.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                    None => task.interval_ms,
                };
                let run_at = match (r.run_at, interval_ms) {
                    (Some(t), _) => t,
                    (None, Some(i)) => next_on_schedule(i),
                    // A one-shot task that succeeded is done (unless it
                    // asked to be kept, disabled).
                    (None, None) if !r.disable => return RunOutcome::Delete,
                    (None, None) => now,
                };
                RunOutcome::Reschedule {
                    state: r.state,
                    run_at,
                    interval_ms: r.interval.map(|_| interval_ms),
                    reset_attempts: true,
                    disable: r.disable,
                    error: None,
                }
            }
            Err(TaskError::Unrecoverable(error)) => RunOutcome::Fail { error },
            Err(TaskError::Retry(error)) => match task.interval_ms {
                // A recurring task keeps its schedule.
                Some(i) => RunOutcome::Reschedule {
                    state: None,
                    run_at: next_on_schedule(i),
                    interval_ms: None,
                    reset_attempts: false,
                    disable: false,
                    error: Some(error),
                },
                None if attempt < def.max_attempts => {
                    let delay = retry_delay(attempt, rand::random::<f64>());
                    RunOutcome::Reschedule {
                        state: None,
                        run_at: now + chrono::Duration::from_std(delay).unwrap_or_default(),
                        interval_ms: None,
                        reset_attempts: false,
                        disable: false,
                        error: Some(error),
                    }
                }
                None => RunOutcome::Fail {
                    error: format!("{error} (attempt {attempt} of {})", def.max_attempts),
                },
            },
        }
    }
}
