-- Domain-scoped IAM tokens (issue 14): a token is for a project or for its tenant as a whole,
-- so tokens.project_id becomes nullable (NULL: domain-scoped). SQLite cannot drop a NOT NULL
-- constraint in place, so the table is rebuilt the portable way; its rows are kept.
CREATE TABLE tokens_scoped (
    token_sha256 TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    project_id TEXT REFERENCES projects(id),
    issued_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
INSERT INTO tokens_scoped (token_sha256, user_id, tenant_id, project_id, issued_at_ms, expires_at_ms)
    SELECT token_sha256, user_id, tenant_id, project_id, issued_at_ms, expires_at_ms FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_scoped RENAME TO tokens;
CREATE INDEX tokens_expiry ON tokens (expires_at_ms);
