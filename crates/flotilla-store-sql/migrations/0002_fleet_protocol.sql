-- The fleet protocol: agents' credentials, the key service, actions.

CREATE TABLE api_keys (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    agent_id         TEXT,
    secret_hash      TEXT NOT NULL,
    role_descriptors TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    retire_pending   BOOLEAN NOT NULL DEFAULT FALSE,
    invalidated_at   BIGINT
);
CREATE INDEX api_keys_agent ON api_keys (agent_id);

ALTER TABLE agents ADD COLUMN access_api_key_id TEXT;
ALTER TABLE agents ADD COLUMN output_api_key_id TEXT;
ALTER TABLE agents ADD COLUMN output_api_key_sealed TEXT;
ALTER TABLE agents ADD COLUMN output_permissions_hash TEXT;
ALTER TABLE agents ADD COLUMN output_key_policy_id TEXT;
ALTER TABLE agents ADD COLUMN output_key_revision BIGINT;
ALTER TABLE agents ADD COLUMN enrollment_id TEXT;
ALTER TABLE agents ADD COLUMN replace_token_hash TEXT;
ALTER TABLE agents ADD COLUMN enroll_type TEXT;
ALTER TABLE agents ADD COLUMN agent_version TEXT;
ALTER TABLE agents ADD COLUMN components TEXT;
ALTER TABLE agents ADD COLUMN reported_policy_id TEXT;
ALTER TABLE agents ADD COLUMN reported_policy_revision BIGINT;
ALTER TABLE agents ADD COLUMN audit_unenrolled_reason TEXT;
ALTER TABLE agents ADD COLUMN audit_unenrolled_time BIGINT;
CREATE INDEX agents_enrollment_id ON agents (enrollment_id);

CREATE TABLE actions (
    id          TEXT PRIMARY KEY,
    action_type TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expiration  BIGINT
);

CREATE TABLE action_targets (
    action_id      TEXT NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    agent_id       TEXT NOT NULL,
    delivery_token TEXT,
    confirmed      BOOLEAN NOT NULL DEFAULT FALSE,
    acked_at       BIGINT,
    ack_error      TEXT,
    PRIMARY KEY (action_id, agent_id)
);
CREATE INDEX action_targets_agent ON action_targets (agent_id, confirmed);
