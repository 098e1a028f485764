-- Installed packages (Elastic's package format): the files Flotilla keeps
-- (manifests, changelog, agent templates) as one JSON object, path -> text.
CREATE TABLE packages (
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    title        TEXT NOT NULL,
    package_type TEXT NOT NULL,
    source       TEXT NOT NULL,
    -- SHA-256 of the files: which content an instance has cached.
    digest       TEXT NOT NULL,
    files        TEXT NOT NULL,
    installed_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

-- Secret variables of integrations, sealed (AES-256-GCM, the secret's id
-- as associated data); package policies hold only references to them.
CREATE TABLE package_policy_secrets (
    id                TEXT PRIMARY KEY,
    package_policy_id TEXT NOT NULL REFERENCES package_policies (id) ON DELETE CASCADE,
    sealed            TEXT NOT NULL
);
CREATE INDEX package_policy_secrets_policy ON package_policy_secrets (package_policy_id);

ALTER TABLE package_policies ADD COLUMN secret_references TEXT NOT NULL DEFAULT '[]';
CREATE INDEX package_policies_package ON package_policies (package_name, package_version);
