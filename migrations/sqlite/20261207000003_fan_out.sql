-- no-transaction
-- Fan-out and checkpoints (issue 25). A `batch_worker` step of a template has one row per item
-- its `batchable` parent returned: `batch_index` (0-based, NULL for every other step) and
-- `batch` (the item, JSON text) tell them apart, so a step is unique by (task, position,
-- instance). `checkpoint` is the JSON value a step's handler last saved. SQLite cannot drop
-- the old UNIQUE constraint, so the table is rebuilt with foreign keys off (as in
-- 20261126000002_template_revisions.sql).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE steps_new (
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
    batch_index       INTEGER,            -- a fan-out instance's place (0-based); NULL otherwise
    batch             TEXT,               -- a fan-out instance's item
    checkpoint        TEXT                -- what the handler last saved
);
INSERT INTO steps_new (step_id, task_id, position, name, handler, state, attempts, retry_limit,
    remaining_parents, ready_at, parked_ready_at, priority, claimed_by, lease_expires_at, results,
    error, last_attempted_at, processed_at, version, created_at, updated_at)
    SELECT step_id, task_id, position, name, handler, state, attempts, retry_limit,
        remaining_parents, ready_at, parked_ready_at, priority, claimed_by, lease_expires_at,
        results, error, last_attempted_at, processed_at, version, created_at, updated_at
    FROM steps;
DROP TABLE steps;
ALTER TABLE steps_new RENAME TO steps;
CREATE UNIQUE INDEX steps_by_task_position ON steps (task_id, position, COALESCE(batch_index, -1));
CREATE INDEX steps_claimable ON steps (priority DESC, ready_at, step_id) WHERE ready_at IS NOT NULL;
CREATE INDEX steps_leased ON steps (lease_expires_at) WHERE state = 'in_progress';
PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
