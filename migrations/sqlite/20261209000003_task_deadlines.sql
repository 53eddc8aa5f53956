-- Task deadlines (issue 26): a task created with deadline_seconds (its own or its template's)
-- has a row here until its deadline passes; the lease reaper of any process then fails the
-- task if it is unfinished (its unfinished steps cancelled) and deletes the row either way.
CREATE TABLE task_deadlines (
    task_id     INTEGER PRIMARY KEY REFERENCES tasks (task_id) ON DELETE CASCADE,
    deadline_at INTEGER NOT NULL
);
CREATE INDEX task_deadlines_due ON task_deadlines (deadline_at);
