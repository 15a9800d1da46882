-- BatchBackupInstances / BatchPrepareInstances / ShowProgress: where each instance's data is
-- archived, how its last backup and restore went, and its place in the prepare queue.

-- ListInstances' backup_status / restore_status: 0 none yet, 1 running, 2 succeeded, 3 failed.
ALTER TABLE instances ADD COLUMN backup_status BIGINT NOT NULL DEFAULT 0;
-- When backup_status last changed (Unix ms); NULL before the first backup.
ALTER TABLE instances ADD COLUMN backup_time_ms BIGINT;
-- Where the last archive went, e.g. file:///var/lib/cloudphone/backups/<tenant>/<id>.tar.gz.
ALTER TABLE instances ADD COLUMN backup_uri TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN restore_status BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN restore_time_ms BIGINT;
-- Set while the instance waits to be restored (state 'queued', or 'backing_up' when it was
-- prepared before its backup finished): the queue's order.
ALTER TABLE instances ADD COLUMN prepare_queued_at_ms BIGINT;
CREATE INDEX instances_state ON instances (state);
