-- Hardening from the security and reliability audit.

-- A policy's revisions never repeat for its id, across delete and
-- recreate: caches, action ids (`policy:<id>:<rev>`) and the revision an
-- agent reports all trust (id, revision) to name one content. Deleting a
-- policy keeps its last revision here; a policy created with the same id
-- starts above it.
CREATE TABLE policy_revision_floors (
    policy_id TEXT PRIMARY KEY,
    revision  BIGINT NOT NULL
);

-- At most one active agent per enrollment id. Duplicates that an earlier
-- version let concurrent enrolments create keep their records and keys;
-- only the newest keeps the enrollment id.
UPDATE agents SET enrollment_id = NULL
WHERE active AND enrollment_id IS NOT NULL AND EXISTS (
    SELECT 1 FROM agents b
    WHERE b.active AND b.enrollment_id = agents.enrollment_id
      AND (b.enrolled_at > agents.enrolled_at OR (b.enrolled_at = agents.enrolled_at AND b.id > agents.id))
);
CREATE UNIQUE INDEX agents_active_enrollment_id ON agents (enrollment_id)
    WHERE active AND enrollment_id IS NOT NULL;
