-- The task manager: persistent background work claimed by server instances.
--
-- A task is due when it is enabled and idle with `run_at` passed, or running
-- with its lease (`lease_expires_at`) passed — its instance died. Claiming
-- sets `owner`, a fresh `claim_token` and the lease; every later write of
-- that run (lease extension, completion) names the token, so a run whose
-- lease was taken over can change nothing.
CREATE TABLE tasks (
    id                   TEXT PRIMARY KEY,
    task_type            TEXT NOT NULL,
    params               TEXT NOT NULL,
    state                TEXT NOT NULL,
    -- Recurring when set (milliseconds); a one-shot task otherwise.
    interval_ms          BIGINT,
    run_at               BIGINT NOT NULL,
    -- When the current (or last) run was due: drift is start − this.
    scheduled_at         BIGINT NOT NULL,
    started_at           BIGINT,
    lease_expires_at     BIGINT,
    attempts             INTEGER NOT NULL DEFAULT 0,
    status               TEXT NOT NULL,
    owner                TEXT,
    claim_token          TEXT,
    -- How many times it was claimed. The claim token is
    -- `<owner>:<claim nonce>:<id>`, unique per run.
    claims               BIGINT NOT NULL DEFAULT 0,
    enabled              BOOLEAN NOT NULL,
    cost                 INTEGER NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    last_error           TEXT,
    last_run_at          BIGINT,
    last_run_ms          BIGINT,
    runs                 BIGINT NOT NULL DEFAULT 0,
    -- The user a task runs as: who scheduled it, and the keys granted on
    -- their behalf (ids in clear, for invalidation even when the sealed
    -- keys cannot be opened; the keys sealed with the task id and key id
    -- as associated data).
    user_id              TEXT,
    user_name            TEXT,
    api_key_id           TEXT,
    api_key              TEXT,
    secondary_api_key_id TEXT,
    secondary_api_key    TEXT
);
CREATE INDEX tasks_due ON tasks (status, run_at);
CREATE INDEX tasks_lease ON tasks (status, lease_expires_at);
CREATE INDEX tasks_type ON tasks (task_type);
CREATE INDEX tasks_api_key ON tasks (api_key_id);
CREATE INDEX tasks_secondary_api_key ON tasks (secondary_api_key_id);

-- The audit trail: one row per run, written at claim and completed with
-- its outcome (`succeeded`, `failed`, `timed_out`, `lost`: the lease was
-- taken over). A run whose instance died keeps `finished_at` NULL.
CREATE TABLE task_runs (
    task_id     TEXT NOT NULL,
    claim_token TEXT NOT NULL,
    task_type   TEXT NOT NULL,
    owner       TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    due_at      BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    outcome     TEXT,
    error       TEXT,
    PRIMARY KEY (task_id, claim_token)
);
CREATE INDEX task_runs_started ON task_runs (started_at);

-- Keys queued for invalidation when the tasks holding them were deleted,
-- each with the provider that issued it. Only ids: invalidating needs no
-- secret. Removed once the provider confirms.
CREATE TABLE api_keys_to_invalidate (
    provider   TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    task_id    TEXT,
    queued_at  BIGINT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (provider, key_id)
);
CREATE INDEX api_keys_to_invalidate_queued ON api_keys_to_invalidate (queued_at);
