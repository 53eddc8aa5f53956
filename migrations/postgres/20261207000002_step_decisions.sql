-- What each decision step chose (a template's `type: decision`): the names of the children
-- it created, as a JSON array; written once, when the decision completes. A decision resolved
-- by an operator (or bypassed) has no row: it chose none. See core/src/engine/shape.rs.
CREATE TABLE step_decisions (
    step_id    bigint PRIMARY KEY REFERENCES steps (step_id) ON DELETE CASCADE,
    task_id    bigint NOT NULL,
    chosen     jsonb NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX step_decisions_by_task ON step_decisions (task_id);
