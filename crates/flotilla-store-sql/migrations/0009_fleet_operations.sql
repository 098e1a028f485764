-- Fleet operations (issue 20).
--
-- Enrollment keys may expire and may be limited to a number of uses. `uses`
-- counts every enrolment the key made; with `max_uses` it is raised only by
-- a conditional UPDATE in the enrolment's own transaction, so it is exact
-- under concurrency and across instances sharing PostgreSQL.
ALTER TABLE enrollment_api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE enrollment_api_keys ADD COLUMN max_uses BIGINT;
ALTER TABLE enrollment_api_keys ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;

-- Which enrollment key enrolled the agent (`static:<hash prefix>` for a static
-- token from the configuration; NULL for agents enrolled before this
-- migration). No foreign key: agents outlive their keys' policies.
ALTER TABLE agents ADD COLUMN enrollment_api_key_id TEXT;
CREATE INDEX agents_enrollment_api_key ON agents (enrollment_api_key_id);
