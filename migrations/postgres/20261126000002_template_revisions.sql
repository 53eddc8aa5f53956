-- Template revisions: a changed body registered under the same version becomes a new revision
-- (new tasks use it; running tasks keep theirs).
ALTER TABLE named_tasks ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
ALTER TABLE named_tasks DROP CONSTRAINT named_tasks_namespace_name_version_key;
ALTER TABLE named_tasks ADD CONSTRAINT named_tasks_revision_key UNIQUE (namespace, name, version, revision);
