-- Cloud connectors and the permission verifier.
--
-- A connector's variables are JSON with each secret as a reference
-- ({"isSecretRef": true, "id": …}); the sealed values are rows of
-- cloud_connector_secrets, deleted with it. Integrations reference a
-- connector by package_policies.cloud_connector_id (no foreign key: SQLite
-- cannot add one to an existing column); saving an integration takes the
-- connector's row lock and deleting a connector counts its integrations
-- under that lock, so neither slips past the other.
CREATE TABLE cloud_connectors (
    id                       TEXT PRIMARY KEY,
    name                     TEXT NOT NULL UNIQUE,
    cloud_provider           TEXT NOT NULL,
    account_type             TEXT,
    namespace                TEXT,
    vars                     TEXT NOT NULL,
    verification_status      TEXT,
    verification_started_at  BIGINT,
    verification_failed_at   BIGINT,
    verification_id          TEXT,
    verification_message     TEXT,
    verification_permissions TEXT NOT NULL DEFAULT '[]',
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL
);

CREATE TABLE cloud_connector_secrets (
    connector_id TEXT NOT NULL REFERENCES cloud_connectors (id) ON DELETE CASCADE,
    id           TEXT NOT NULL,
    sealed       TEXT NOT NULL,
    PRIMARY KEY (connector_id, id)
);

CREATE INDEX package_policies_connector ON package_policies (cloud_connector_id);

-- A verifier policy: an ordinary agent policy, marked by this row (deleted
-- with it), that lives until expires_at.
CREATE TABLE verifier_policies (
    policy_id       TEXT PRIMARY KEY REFERENCES agent_policies (id) ON DELETE CASCADE,
    connector_id    TEXT NOT NULL,
    verification_id TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
