-- Schedules (issue 26): a template run on a cron pattern in a time zone. Every worker process
-- and `tasker serve` fires them: a process takes a due row (on PostgreSQL FOR UPDATE SKIP
-- LOCKED), creates the task of each tick it fires (its idempotency key is the tick, so a tick
-- makes one task however many processes fire it) and moves next_run_at past now, in one
-- transaction. Times are milliseconds since the epoch; context is JSON text.
CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    namespace    TEXT NOT NULL,
    template     TEXT NOT NULL,
    version      TEXT,
    cron         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    context      TEXT NOT NULL,
    overlap      TEXT NOT NULL,
    catch_up     TEXT NOT NULL,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    -- NULL: the pattern has no further tick.
    next_run_at  BIGINT,
    last_tick_at BIGINT,
    fired        BIGINT NOT NULL DEFAULT 0,
    skipped      BIGINT NOT NULL DEFAULT 0,
    -- 'api' (create_schedule) or the template revision's "namespace/name/version" that declared it.
    origin       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE NOT paused AND next_run_at IS NOT NULL;
