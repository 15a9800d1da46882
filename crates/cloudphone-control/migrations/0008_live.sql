-- The live edge's API (seed 003, docs/live-api.md): its tenants, groups and streams, the
-- nonces of signed requests, the play keys URLs were signed with, what each node offers for
-- live streams, and each publish session's ingest figures.

-- A VS tenant ("service"): its UserId, its one key pair (the secret sealed like access_keys',
-- never in clear), and its status: 1 suspended, 2 active, 3 deleted.
CREATE TABLE vs_tenants (
    user_id TEXT PRIMARY KEY,
    access_key_id TEXT NOT NULL UNIQUE,
    secret_sealed TEXT NOT NULL,
    status BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE vs_groups (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES vs_tenants(user_id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    region TEXT NOT NULL,
    app TEXT NOT NULL,
    in_protocol TEXT NOT NULL,
    out_protocol TEXT NOT NULL,
    lazy_pull BIGINT NOT NULL,
    callback TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX vs_groups_user ON vs_groups (user_id);

-- A stream: placed on a node (NULL until a live node is known), its push key, the key its
-- ScreenShowStreams URLs are signed with, the tenant's switches (enabled: Start/StopStream;
-- forbidden: Forbid/ResumeVsStream) and what its node last reported.
CREATE TABLE vs_streams (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES vs_tenants(user_id),
    group_id TEXT NOT NULL REFERENCES vs_groups(id),
    name TEXT NOT NULL,
    node_id TEXT,
    push_key TEXT NOT NULL,
    screen_key TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    forbidden BIGINT NOT NULL,
    is_on BIGINT NOT NULL,
    codec TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    bitrate_bps BIGINT NOT NULL,
    started_at_ms BIGINT,
    stopped_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX vs_streams_user ON vs_streams (user_id);
CREATE INDEX vs_streams_group ON vs_streams (group_id);
CREATE INDEX vs_streams_node ON vs_streams (node_id);

-- Keys a stream's play URLs were signed with (DescribeStreamURL's AuthKey), kept until the
-- last URL signed with each has expired.
CREATE TABLE vs_play_keys (
    stream_id TEXT NOT NULL REFERENCES vs_streams(id),
    play_key TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (stream_id, play_key)
);

-- Signature nonces seen, per access key, kept past the ±15 min timestamp window so a replay
-- within it is refused.
CREATE TABLE vs_nonces (
    access_key_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (access_key_id, nonce)
);
CREATE INDEX vs_nonces_expiry ON vs_nonces (expires_at_ms);

-- What each node announced for the live edge (empty: it runs none).
CREATE TABLE vs_nodes (
    node_id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    rtmp_base_url TEXT NOT NULL,
    http_base_url TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Ingest per publish session, metered once per publish_id (the latest figures win; part 2
-- serves them).
CREATE TABLE vs_publishes (
    publish_id TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    bytes_in BIGINT NOT NULL,
    frames_in BIGINT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    stopped_at_ms BIGINT
);
CREATE INDEX vs_publishes_user ON vs_publishes (user_id, started_at_ms);
