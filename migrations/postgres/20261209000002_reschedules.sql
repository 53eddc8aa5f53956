-- Reschedule(after) (issue 26): how often each step's handler asked to run again later, kept
-- only for steps with max_reschedules (the bound is checked when the handler asks again).
-- An operator's retry starts the count again.
CREATE TABLE step_reschedules (
    step_id BIGINT PRIMARY KEY REFERENCES steps (step_id) ON DELETE CASCADE,
    count   BIGINT NOT NULL
);
