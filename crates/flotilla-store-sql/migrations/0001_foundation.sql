-- Flotilla's foundation schema. Portable SQL: the same file runs on SQLite
-- and PostgreSQL. Timestamps are milliseconds since the Unix epoch (BIGINT),
-- JSON documents are TEXT, so every query is the same on both engines.

CREATE TABLE outputs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    output_type TEXT NOT NULL,
    hosts       TEXT NOT NULL,
    is_default  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
-- At most one default output.
CREATE UNIQUE INDEX outputs_single_default ON outputs (is_default) WHERE is_default;

CREATE TABLE agent_policies (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    namespace          TEXT NOT NULL,
    description        TEXT,
    output_id          TEXT REFERENCES outputs (id),
    inactivity_timeout BIGINT NOT NULL,
    revision           BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX agent_policies_output ON agent_policies (output_id);

CREATE TABLE package_policies (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    description        TEXT,
    policy_id          TEXT NOT NULL REFERENCES agent_policies (id) ON DELETE CASCADE,
    package_name       TEXT NOT NULL,
    package_version    TEXT NOT NULL,
    namespace          TEXT,
    vars               TEXT NOT NULL,
    inputs             TEXT NOT NULL,
    cloud_connector_id TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX package_policies_policy ON package_policies (policy_id, created_at);

CREATE TABLE enrollment_api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    policy_id  TEXT NOT NULL REFERENCES agent_policies (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    hint       TEXT NOT NULL,
    active     BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX enrollment_api_keys_policy ON enrollment_api_keys (policy_id);

-- Agents outlive their policy as unenrolled records, so policy_id carries no
-- foreign key; services check it on every write.
CREATE TABLE agents (
    id                      TEXT PRIMARY KEY,
    policy_id               TEXT NOT NULL,
    policy_revision         BIGINT,
    active                  BOOLEAN NOT NULL,
    local_metadata          TEXT NOT NULL,
    last_checkin            BIGINT,
    last_checkin_status     TEXT,
    last_checkin_message    TEXT,
    enrolled_at             BIGINT NOT NULL,
    unenrollment_started_at BIGINT,
    unenrolled_at           BIGINT,
    updated_at              BIGINT NOT NULL
);
CREATE INDEX agents_policy ON agents (policy_id);
CREATE INDEX agents_enrolled ON agents (enrolled_at);

CREATE TABLE agent_tags (
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    tag      TEXT NOT NULL,
    PRIMARY KEY (agent_id, tag)
);
CREATE INDEX agent_tags_tag ON agent_tags (tag);

CREATE TABLE operator_api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    key_hash   TEXT NOT NULL UNIQUE,
    hint       TEXT NOT NULL,
    active     BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
