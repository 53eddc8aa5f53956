-- Tasker schema for PostgreSQL. The same tables as the SQLite schema; times are epoch
-- milliseconds from the engine's clock, JSON is jsonb.

CREATE TABLE named_tasks (
    named_task_id   BIGSERIAL PRIMARY KEY,
    namespace       TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    version         TEXT   NOT NULL,
    description     TEXT,
    definition      TEXT   NOT NULL,   -- normalized template (canonical JSON, hashed as stored)
    definition_hash TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    UNIQUE (namespace, name, version)
);

CREATE TABLE tasks (
    task_id         BIGSERIAL PRIMARY KEY,
    named_task_id   BIGINT NOT NULL REFERENCES named_tasks (named_task_id),
    state           TEXT   NOT NULL,
    context         JSONB  NOT NULL,
    initiator       TEXT   NOT NULL,
    source_system   TEXT   NOT NULL,
    reason          TEXT   NOT NULL,
    tags            JSONB  NOT NULL,
    bypass_steps    JSONB  NOT NULL,
    idempotency_key TEXT UNIQUE,
    steps_total     BIGINT NOT NULL,
    steps_done      BIGINT NOT NULL DEFAULT 0,   -- complete or resolved_manually
    steps_blocked   BIGINT NOT NULL DEFAULT 0,   -- in error with no attempt left
    version         BIGINT NOT NULL DEFAULT 0,   -- number of transitions
    requested_at    BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    completed_at    BIGINT
);
CREATE INDEX tasks_by_state ON tasks (state, task_id);
CREATE INDEX tasks_by_named_task ON tasks (named_task_id, task_id);

CREATE TABLE steps (
    step_id           BIGSERIAL PRIMARY KEY,
    task_id           BIGINT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    position          BIGINT NOT NULL,
    name              TEXT   NOT NULL,
    handler           TEXT   NOT NULL,
    state             TEXT   NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    retry_limit       BIGINT NOT NULL,
    remaining_parents BIGINT NOT NULL,
    -- Non-NULL exactly when the step may be claimed once that time has come (pending or error
    -- with attempts left, no remaining parents, task not blocked). Claims read only this table.
    ready_at          BIGINT,
    -- A blocked task's claimable steps keep their ready_at here until an operator unblocks it.
    parked_ready_at   BIGINT,
    priority          BIGINT NOT NULL DEFAULT 0,
    claimed_by        TEXT,
    lease_expires_at  BIGINT,
    results           JSONB,
    error             JSONB,
    last_attempted_at BIGINT,
    processed_at      BIGINT,
    version           BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (task_id, position)
);
CREATE INDEX steps_claimable ON steps (priority DESC, ready_at, step_id) WHERE ready_at IS NOT NULL;
CREATE INDEX steps_leased ON steps (lease_expires_at) WHERE state = 'in_progress';

CREATE TABLE task_transitions (
    id         BIGSERIAL PRIMARY KEY,
    task_id    BIGINT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    from_state TEXT,
    to_state   TEXT   NOT NULL,
    metadata   JSONB  NOT NULL,
    sort_key   BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX task_transitions_by_task ON task_transitions (task_id, sort_key);

CREATE TABLE step_transitions (
    id         BIGSERIAL PRIMARY KEY,
    step_id    BIGINT NOT NULL REFERENCES steps (step_id) ON DELETE CASCADE,
    task_id    BIGINT NOT NULL,
    from_state TEXT,
    to_state   TEXT   NOT NULL,
    metadata   JSONB  NOT NULL,
    sort_key   BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX step_transitions_by_step ON step_transitions (step_id, sort_key);
CREATE INDEX step_transitions_by_task ON step_transitions (task_id);
