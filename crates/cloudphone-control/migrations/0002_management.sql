-- Asynchronous tasks (AsyncCommand, InstallApp) and their per-instance jobs; per-instance video settings.

ALTER TABLE instances ADD COLUMN video_config TEXT NOT NULL DEFAULT '';

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    kind TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks(id),
    instance_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    -- The node's own id for the job; empty when the job never reached a node.
    node_job_id TEXT NOT NULL,
    -- 1 running, 2 succeeded, -1 failed (the seeds' JobDetail.status).
    status BIGINT NOT NULL,
    error_code TEXT NOT NULL,
    error_msg TEXT NOT NULL,
    execute_msg TEXT,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX jobs_task ON jobs (task_id);
