-- What agents report about themselves (local metadata, components: a few
-- KiB each) lives apart from the agents' hot row. Every ack, key rotation
-- and check-in updates that row; on SQLite an update rewrites the whole
-- row, so with the metadata inline each of them rewrote its kilobytes too.
-- Written only when an agent reports something new.
CREATE TABLE agent_reports (
    agent_id       TEXT PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    local_metadata TEXT NOT NULL,
    components     TEXT
);
INSERT INTO agent_reports (agent_id, local_metadata, components)
    SELECT id, local_metadata, components FROM agents;
ALTER TABLE agents DROP COLUMN local_metadata;
ALTER TABLE agents DROP COLUMN components;
