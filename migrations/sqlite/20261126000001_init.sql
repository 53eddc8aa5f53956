-- Tasker schema for the embedded SQLite backend.
-- Times are epoch milliseconds from the engine's clock (never SQLite's own now()).
-- JSON columns hold JSON text.

CREATE TABLE named_tasks (
    named_task_id   INTEGER PRIMARY KEY,
    namespace       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         TEXT    NOT NULL,
    description     TEXT,
    definition      TEXT    NOT NULL,   -- normalized template (template::Definition) as canonical JSON
    definition_hash TEXT    NOT NULL,   -- sha256 of definition
    created_at      INTEGER NOT NULL,
    UNIQUE (namespace, name, version)
);

CREATE TABLE tasks (
    task_id          INTEGER PRIMARY KEY,
    named_task_id    INTEGER NOT NULL REFERENCES named_tasks (named_task_id),
    state            TEXT    NOT NULL,
    context          TEXT    NOT NULL,
    initiator        TEXT    NOT NULL,
    source_system    TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    tags             TEXT    NOT NULL,
    bypass_steps     TEXT    NOT NULL,
    idempotency_key  TEXT UNIQUE,
    -- Counters kept in the same transaction as every step outcome; finalization reads only these.
    steps_total      INTEGER NOT NULL,
    steps_done       INTEGER NOT NULL DEFAULT 0,  -- complete or resolved_manually
    steps_blocked    INTEGER NOT NULL DEFAULT 0,  -- in error with no attempt left
    version          INTEGER NOT NULL DEFAULT 0,  -- number of transitions; the last one's sort_key
    requested_at     INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    completed_at     INTEGER
);
CREATE INDEX tasks_by_state ON tasks (state, task_id);
CREATE INDEX tasks_by_named_task ON tasks (named_task_id, task_id);

CREATE TABLE steps (
    step_id           INTEGER PRIMARY KEY,
    task_id           INTEGER NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    position          INTEGER NOT NULL,   -- index of the step in its template
    name              TEXT    NOT NULL,
    handler           TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    retry_limit       INTEGER NOT NULL,   -- max attempts including the first
    remaining_parents INTEGER NOT NULL,   -- parents not yet complete / resolved_manually
    -- Set exactly when the step can be claimed once that time has come: state pending or
    -- error, no remaining parents, attempts left, task not blocked. NULL otherwise. The claim
    -- reads only this table, through the index below.
    ready_at          INTEGER,
    -- A blocked task's claimable steps keep their ready_at here until an operator unblocks it.
    parked_ready_at   INTEGER,
    priority          INTEGER NOT NULL DEFAULT 0,  -- higher first, then oldest ready_at
    claimed_by        TEXT,
    lease_expires_at  INTEGER,
    results           TEXT,
    error             TEXT,
    last_attempted_at INTEGER,
    processed_at      INTEGER,
    version           INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (task_id, position)
);
CREATE INDEX steps_claimable ON steps (priority DESC, ready_at, step_id) WHERE ready_at IS NOT NULL;
CREATE INDEX steps_leased ON steps (lease_expires_at) WHERE state = 'in_progress';

CREATE TABLE task_transitions (
    id         INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    metadata   TEXT    NOT NULL,
    sort_key   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX task_transitions_by_task ON task_transitions (task_id, sort_key);

CREATE TABLE step_transitions (
    id         INTEGER PRIMARY KEY,
    step_id    INTEGER NOT NULL REFERENCES steps (step_id) ON DELETE CASCADE,
    task_id    INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    metadata   TEXT    NOT NULL,
    sort_key   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX step_transitions_by_step ON step_transitions (step_id, sort_key);
