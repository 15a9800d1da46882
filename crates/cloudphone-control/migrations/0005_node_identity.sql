-- Node identity (docs/deploy.md, "Enrolling a node"): single-use join tokens and the
-- certificate each node id is pinned to. Portable SQL for SQLite and PostgreSQL.

-- A join token minted by `cloudphone-control node join-token`; only its SHA-256 is stored.
-- Spent by the first Enroll that presents it (used_at_ms > 0), refused after expires_at_ms.
CREATE TABLE node_join_tokens (
    token_sha256 TEXT PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT NOT NULL DEFAULT 0,
    used_by TEXT NOT NULL DEFAULT ''
);

-- The certificate (SHA-256 of its DER) a node id enrolled with. While a row exists, no other
-- certificate may announce or enroll as that id; `node revoke` deletes it.
CREATE TABLE node_identities (
    node_id TEXT PRIMARY KEY,
    cert_sha256 TEXT NOT NULL,
    enrolled_at_ms BIGINT NOT NULL
);
