-- Steps that wait (issue 26). A handler's Wait(...) leaves its step `waiting` with a row here
-- for the attempt that returned it: the signal of its task it waits for, the correlation id a
-- system outside will complete it by, and when it times out. A row speaks for its step only
-- while the step is `waiting` at that attempt (a later attempt, or a wait for a child task,
-- ignores it); a new wait of the same step replaces it.
CREATE TABLE step_waits (
    step_id        BIGINT PRIMARY KEY REFERENCES steps (step_id) ON DELETE CASCADE,
    task_id        BIGINT NOT NULL,
    attempt        BIGINT NOT NULL,
    signal         TEXT,
    correlation_id TEXT,
    deadline_at    BIGINT,
    created_at     BIGINT NOT NULL
);
CREATE INDEX step_waits_by_signal ON step_waits (task_id, signal) WHERE signal IS NOT NULL;
CREATE INDEX step_waits_by_correlation ON step_waits (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX step_waits_by_deadline ON step_waits (deadline_at) WHERE deadline_at IS NOT NULL;
-- A signal sent while no step of its task waited for it: kept until a step waits for it
-- (the oldest first), so that no signal is lost.
CREATE TABLE task_signals (
    signal_id  BIGSERIAL PRIMARY KEY,
    task_id    BIGINT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    payload    JSONB,
    created_at BIGINT NOT NULL
);
CREATE INDEX task_signals_by_name ON task_signals (task_id, name, signal_id);
