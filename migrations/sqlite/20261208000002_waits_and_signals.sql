-- Steps that wait (issue 26): see the PostgreSQL migration of the same name. A handler's
-- Wait(...) leaves a row for the attempt that returned it (signal, correlation id, deadline);
-- a signal sent while no step waited for it is kept in task_signals until one does.
CREATE TABLE step_waits (
    step_id        INTEGER PRIMARY KEY REFERENCES steps (step_id) ON DELETE CASCADE,
    task_id        INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    signal         TEXT,
    correlation_id TEXT,
    deadline_at    INTEGER,
    created_at     INTEGER NOT NULL
);
CREATE INDEX step_waits_by_signal ON step_waits (task_id, signal) WHERE signal IS NOT NULL;
CREATE INDEX step_waits_by_correlation ON step_waits (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX step_waits_by_deadline ON step_waits (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE TABLE task_signals (
    signal_id  INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    payload    TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX task_signals_by_name ON task_signals (task_id, name, signal_id);
