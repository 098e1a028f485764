-- Operator console sessions (issue 20). A browser holds a random session id
-- in a cookie; only its SHA-256 is stored, so a copy of the database opens
-- no session. Kept here rather than in memory because several instances
-- may serve one console behind one database. Revoking the operator key
-- ends its sessions (they are read joined to an active key); deleting the
-- key deletes them.
CREATE TABLE console_sessions (
    id_hash         TEXT PRIMARY KEY,
    operator_key_id TEXT NOT NULL REFERENCES operator_api_keys (id) ON DELETE CASCADE,
    csrf_token      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
CREATE INDEX console_sessions_operator ON console_sessions (operator_key_id);
