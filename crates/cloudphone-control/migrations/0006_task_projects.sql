-- Projects enforced on every instance operation (issue 13): a task (AsyncCommand, InstallApp)
-- belongs to the project whose token made it, so GetTask from another project's token finds
-- nothing. Tasks made before this migration have no project ('') and stay visible to their
-- tenant's every project, as they were.
ALTER TABLE tasks ADD COLUMN project_id TEXT NOT NULL DEFAULT '';
