-- The embedded output: data streams and their documents.
CREATE TABLE data_streams (
    name       TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- One row per document; `ts` is its @timestamp (epoch ms) for time-range
-- search and retention, `doc` the JSON source as sent (with @timestamp).
CREATE TABLE documents (
    data_stream TEXT NOT NULL REFERENCES data_streams (name) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    doc         TEXT NOT NULL,
    ingested_at BIGINT NOT NULL,
    PRIMARY KEY (data_stream, id)
);
CREATE INDEX documents_stream_ts ON documents (data_stream, ts);

-- Keys created through the Elasticsearch security API: who created them
-- (an API key id, or `operator:<id>`) and when they expire.
ALTER TABLE api_keys ADD COLUMN owner TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
CREATE INDEX api_keys_name ON api_keys (name);

-- An Elasticsearch output on an existing cluster: the credential Flotilla
-- manages agents' keys there with (sealed, the output id as associated
-- data). Keys minted there are recorded here too, with the output they
-- live on, and when the cluster confirmed their invalidation.
ALTER TABLE outputs ADD COLUMN key_credential TEXT;
ALTER TABLE api_keys ADD COLUMN remote_output TEXT;
ALTER TABLE api_keys ADD COLUMN remote_invalidated_at BIGINT;
CREATE INDEX api_keys_remote_pending ON api_keys (remote_output, remote_invalidated_at);
-- Why the agent's output key could not be minted or rotated (the cluster's
-- error), until a mint succeeds.
ALTER TABLE agents ADD COLUMN output_key_error TEXT;
-- The last policy change the agent could not apply: its revision, when,
-- and the agent's message (JSON), until a later revision is applied.
ALTER TABLE agents ADD COLUMN policy_change_failure TEXT;
