-- Agent status history: one row per sampling interval (the interval's
-- start in ms is the key, so servers sharing a database that sample in the
-- same interval write one row: insert-or-ignore). Written by a task, never
-- per check-in; old rows pruned by the same task.
CREATE TABLE agent_status_history (
    bucket     BIGINT PRIMARY KEY,
    online     BIGINT NOT NULL,
    offline    BIGINT NOT NULL,
    unhealthy  BIGINT NOT NULL,
    updating   BIGINT NOT NULL,
    inactive   BIGINT NOT NULL
);
