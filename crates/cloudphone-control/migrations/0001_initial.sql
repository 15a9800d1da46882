-- Portable between SQLite and PostgreSQL: TEXT/BIGINT only, times as Unix milliseconds.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    domain_name TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

-- Only a hash of each token is kept, so a database leak yields no usable token.
CREATE TABLE tokens (
    token_sha256 TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    project_id TEXT NOT NULL REFERENCES projects(id),
    issued_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX tokens_expiry ON tokens (expires_at_ms);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    grpc_endpoint TEXT NOT NULL,
    signaling_base_url TEXT NOT NULL,
    region TEXT NOT NULL,
    capacity BIGINT NOT NULL,
    runtimes TEXT NOT NULL,
    encoders TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    order_id TEXT NOT NULL,
    node_id TEXT NOT NULL REFERENCES nodes(id),
    sku_id TEXT NOT NULL,
    region TEXT NOT NULL,
    os TEXT NOT NULL,
    runtime TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    state TEXT NOT NULL,
    state_message TEXT NOT NULL,
    assign_user TEXT,
    period_type BIGINT NOT NULL,
    period_num BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX instances_tenant_created ON instances (tenant_id, created_at_ms);
CREATE INDEX instances_node ON instances (node_id);
