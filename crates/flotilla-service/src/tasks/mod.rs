//! The task manager: persistent background work on the project's own
//! storage, claimed by whichever instance has capacity, run exactly once
//! per claim, retried with backoff, and — for tasks an operator scheduled —
//! run as that operator through an API key granted on their behalf.
//!
//! - [`TaskDefinition`]s are registered in code ([`Registry`]): a type's
//!   timeout, attempts, cost and concurrency, and its [`TaskRunner`].
//! - [`TaskManager`] polls (woken early by [`flotilla_store::StoreEvent::TasksDue`]),
//!   claims what fits its capacity, runs each claim under a lease it keeps
//!   extending, and writes the outcome with the claim's token.
//! - [`keys::ApiKeyStrategy`] grants, picks and invalidates the keys of
//!   user-scoped tasks.
//! - [`builtin`] holds the server's own maintenance tasks.

pub mod builtin;
pub mod keys;
mod manager;
mod operators;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

pub use flotilla_domain::task::Cost;
pub use manager::{ManagerConfig, TaskManager};
pub use operators::{BulkResult, ScheduleTask, TaskHealth, TaskView};

use crate::keys::Principal;
use crate::Services;

/// The time tasks are due by. Tests drive a [`ManualClock`].
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(at))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += chrono::Duration::from_std(by).unwrap_or_default();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskError {
    /// Worth another attempt (with backoff).
    Retry(String),
    /// Will never work: the task fails at once.
    Unrecoverable(String),
}

impl TaskError {
    pub fn message(&self) -> &str {
        match self {
            TaskError::Retry(m) | TaskError::Unrecoverable(m) => m,
        }
    }
}

impl From<crate::ServiceError> for TaskError {
    fn from(e: crate::ServiceError) -> Self {
        TaskError::Retry(e.to_string())
    }
}

impl From<flotilla_store::StoreError> for TaskError {
    fn from(e: flotilla_store::StoreError) -> Self {
        TaskError::Retry(e.to_string())
    }
}

/// What a successful run returns: the state for its next run, and what
/// becomes of the task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunResult {
    pub state: Option<Value>,
    /// Run next at this time (instead of the schedule, or — for a one-shot
    /// task — instead of being done).
    pub run_at: Option<DateTime<Utc>>,
    /// A new schedule: `Some(None)` makes it one-shot.
    pub interval: Option<Option<Duration>>,
    pub disable: bool,
    pub delete: bool,
}

impl RunResult {
    pub fn with_state(state: Value) -> Self {
        RunResult {
            state: Some(state),
            ..Default::default()
        }
    }
}

/// Who a user-scoped run acts as. The key itself is never handed over: a
/// run gets the principal it authenticates as (primary keys), or a session
/// with the secondary provider that sends the key for it.
#[derive(Clone)]
pub enum TaskUser {
    Local {
        principal: Principal,
        key_id: String,
        user_name: String,
    },
    Remote {
        session: keys::RemoteSession,
        key_id: String,
        user_name: String,
    },
}

impl TaskUser {
    pub fn key_id(&self) -> &str {
        match self {
            TaskUser::Local { key_id, .. } | TaskUser::Remote { key_id, .. } => key_id,
        }
    }

    pub fn user_name(&self) -> &str {
        match self {
            TaskUser::Local { user_name, .. } | TaskUser::Remote { user_name, .. } => user_name,
        }
    }

    pub fn provider(&self) -> flotilla_store::KeyProvider {
        match self {
            TaskUser::Local { .. } => flotilla_store::KeyProvider::Primary,
            TaskUser::Remote { .. } => flotilla_store::KeyProvider::Secondary,
        }
    }
}

/// What a run is given.
pub struct RunContext {
    pub task_id: String,
    pub task_type: String,
    pub params: Value,
    pub state: Value,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub now: DateTime<Utc>,
    pub user: Option<TaskUser>,
    pub services: Services,
    /// Becomes `true` when the run should stop: its timeout passed, its
    /// lease was lost, or the server is stopping. Long runs check it.
    pub cancelled: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
pub trait TaskRunner: Send + Sync {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError>;
}

/// A task type.
#[derive(Clone)]
pub struct TaskDefinition {
    pub task_type: String,
    pub title: String,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub cost: Cost,
    /// At most this many runs at once on one instance.
    pub max_concurrency: Option<u32>,
    /// Operators may schedule it through the API.
    pub schedulable: bool,
    /// Runs as whoever scheduled it: scheduling grants keys.
    pub user_scoped: bool,
    pub runner: Arc<dyn TaskRunner>,
}

impl TaskDefinition {
    /// Defaults: 5 minutes, 3 attempts, normal cost, no concurrency limit,
    /// internal.
    pub fn new(task_type: &str, title: &str, runner: Arc<dyn TaskRunner>) -> Self {
        TaskDefinition {
            task_type: task_type.to_owned(),
            title: title.to_owned(),
            timeout: Duration::from_secs(300),
            max_attempts: 3,
            cost: Cost::Normal,
            max_concurrency: None,
            schedulable: false,
            user_scoped: false,
            runner,
        }
    }
}

/// The registered task types.
#[derive(Clone, Default)]
pub struct Registry {
    defs: std::collections::BTreeMap<String, TaskDefinition>,
}

impl Registry {
    /// Register a type; a second registration of a name is a programming
    /// error.
    pub fn register(&mut self, def: TaskDefinition) {
        let name = def.task_type.clone();
        assert!(
            self.defs.insert(name.clone(), def).is_none(),
            "task type {name} registered twice"
        );
    }

    pub fn get(&self, task_type: &str) -> Option<&TaskDefinition> {
        self.defs.get(task_type)
    }

    pub fn types(&self) -> impl Iterator<Item = &TaskDefinition> {
        self.defs.values()
    }
}
