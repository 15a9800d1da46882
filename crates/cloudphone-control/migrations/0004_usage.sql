-- Transcode usage (docs/usage.md): encoder usage records, tenants' streaming domains, and the
-- access keys the Huawei/Volcengine usage APIs are signed with.

-- One row per record id, stored exactly once (nodes deliver at least once and retry until
-- acknowledged). Domain, app and stream are fixed when the record arrives.
CREATE TABLE usage_records (
    record_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    instance_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    domain TEXT NOT NULL,
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    codec TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    -- 1 when the encoder session ended with this record.
    is_final BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL
);
CREATE INDEX usage_records_tenant_end ON usage_records (tenant_id, end_ms);
CREATE INDEX usage_records_session ON usage_records (session_id);

-- A tenant's streaming domains; deleted ones stay (Volcengine reports them too).
CREATE TABLE streaming_domains (
    domain TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    -- 1 for the domain cloud-phone sessions bill under.
    is_default BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    deleted_at_ms BIGINT
);
CREATE INDEX streaming_domains_tenant ON streaming_domains (tenant_id);

-- AK/SK pairs. HMAC verification needs the secret itself, so it is kept sealed
-- (ChaCha20-Poly1305 under a key outside the database: see docs/usage.md), never in clear.
CREATE TABLE access_keys (
    access_key TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    secret_sealed TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX access_keys_tenant ON access_keys (tenant_id);
