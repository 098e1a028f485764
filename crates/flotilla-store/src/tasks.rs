//! The task manager's records: tasks, their runs (the audit trail) and the
//! queue of keys to invalidate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Idle,
    Running,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Idle => "idle",
            TaskStatus::Running => "running",
            TaskStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "idle" => TaskStatus::Idle,
            "running" => TaskStatus::Running,
            "failed" => TaskStatus::Failed,
            _ => return None,
        })
    }
}

/// Which provider issued a key a task holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyProvider {
    Primary,
    Secondary,
}

impl KeyProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyProvider::Primary => "primary",
            KeyProvider::Secondary => "secondary",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "primary" => Some(KeyProvider::Primary),
            "secondary" => Some(KeyProvider::Secondary),
            _ => None,
        }
    }
}

/// Who a task runs as, and the keys granted on their behalf (sealed; the
/// ids in clear).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserScope {
    pub user_id: String,
    pub user_name: String,
    pub api_key_id: Option<String>,
    pub api_key_sealed: Option<String>,
    pub secondary_api_key_id: Option<String>,
    pub secondary_api_key_sealed: Option<String>,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub task_type: String,
    pub params: Value,
    pub state: Value,
    /// Recurring when set.
    pub interval_ms: Option<i64>,
    pub run_at: DateTime<Utc>,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub status: TaskStatus,
    pub owner: Option<String>,
    pub claim_token: Option<String>,
    pub enabled: bool,
    pub cost: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_run_ms: Option<i64>,
    pub runs: i64,
    pub user: Option<UserScope>,
}

/// A task to schedule.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub task_type: String,
    pub params: Value,
    pub state: Value,
    pub interval_ms: Option<i64>,
    pub run_at: DateTime<Utc>,
    pub enabled: bool,
    pub cost: i32,
    pub user: Option<UserScope>,
}

/// What [`TaskStore::schedule_task`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Scheduled {
    Created(TaskRecord),
    /// The id exists with the same type: its schedule was updated in place
    /// (when one was given) and nothing else changed.
    Existing(TaskRecord),
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub task_type: Option<String>,
    pub status: Option<TaskStatus>,
}

/// One claim: up to `limit` tasks of these types, fitting `capacity` cost
/// units in due order, and at most `per_type` of the types it names.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub owner: String,
    pub types: Vec<String>,
    pub per_type: Vec<(String, u32)>,
    pub limit: u32,
    pub capacity: i64,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

/// How a run ended, as written back with its claim token.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    /// Back to idle at `run_at` with the new state (a recurring task, a
    /// retry, or a task that rescheduled itself).
    Reschedule {
        state: Option<Value>,
        run_at: DateTime<Utc>,
        interval_ms: Option<Option<i64>>,
        reset_attempts: bool,
        disable: bool,
        error: Option<String>,
    },
    /// Out of attempts, or unrecoverable: kept as `failed` for operators.
    Fail { error: String },
    /// Done for good (a one-shot task that succeeded, or asked to be
    /// deleted): removed, its keys queued for invalidation.
    Delete,
}

/// A run's audit line.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRun {
    pub task_id: String,
    pub claim_token: String,
    pub task_type: String,
    pub owner: String,
    pub attempt: i32,
    pub due_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// Counts by type and status, for `_health`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCount {
    pub task_type: String,
    pub status: TaskStatus,
    pub count: i64,
    /// Idle and enabled with `run_at` in the past.
    pub overdue: i64,
}

/// A key waiting to be invalidated.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedKey {
    pub provider: KeyProvider,
    pub key_id: String,
    pub task_id: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub attempts: i32,
    pub last_error: Option<String>,
}
