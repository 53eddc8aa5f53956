-- no-transaction
-- Template revisions: a changed body registered under the same version becomes a new revision
-- (new tasks use it; running tasks keep theirs). SQLite cannot drop the old UNIQUE constraint,
-- so the table is rebuilt; foreign keys are off while it is (they cannot be switched inside a
-- transaction, hence no-transaction and an explicit one).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE named_tasks_new (
    named_task_id   INTEGER PRIMARY KEY,
    namespace       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         TEXT    NOT NULL,
    revision        INTEGER NOT NULL DEFAULT 1,
    description     TEXT,
    definition      TEXT    NOT NULL,   -- normalized template (template::Definition) as canonical JSON
    definition_hash TEXT    NOT NULL,   -- sha256 of definition
    created_at      INTEGER NOT NULL,
    UNIQUE (namespace, name, version, revision)
);
INSERT INTO named_tasks_new (named_task_id, namespace, name, version, revision, description, definition, definition_hash, created_at)
    SELECT named_task_id, namespace, name, version, 1, description, definition, definition_hash, created_at FROM named_tasks;
DROP TABLE named_tasks;
ALTER TABLE named_tasks_new RENAME TO named_tasks;
PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
