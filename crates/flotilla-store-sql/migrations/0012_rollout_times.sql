-- When each agent's running revision last changed (set by the ack that
-- changed it, cleared with the revision on reassignment): the policy
-- page's rollout over time is counted from it, with no write per check-in
-- and no sampling.
ALTER TABLE agents ADD COLUMN policy_revision_at BIGINT;
