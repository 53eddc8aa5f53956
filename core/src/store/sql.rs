//! SQL text both backends run as it is: the column lists every row struct of [`super::rows`]
//! is decoded from (by name: each column is named as its field), and the statements that read
//! the same on SQLite and PostgreSQL. Parameters are written `$1`, `$2`, ... in the order they
//! first appear; SQLite's copies are rewritten to `?1`, `?2`, ... ([`sqlite_params`]).
//!
//! JSON columns are read with `CAST(... AS TEXT)`: `jsonb` on PostgreSQL, text on SQLite.

/// The columns of [`super::TaskRow`] (table `tasks`, unqualified).
macro_rules! task_cols {
    () => {
        "task_id, named_task_id, state, steps_total, steps_done, steps_blocked, version, paused"
    };
}

/// The columns of [`super::TaskDetail`]: tasks `t` joined with named_tasks `n`.
macro_rules! detail_cols {
    () => {
        "t.task_id, t.named_task_id, t.state, t.steps_total, t.steps_done, t.steps_blocked, \
         t.version, t.paused, CAST(t.context AS TEXT) AS context, t.initiator, t.source_system, t.reason, \
         CAST(t.tags AS TEXT) AS tags, CAST(t.bypass_steps AS TEXT) AS bypass_steps, \
         t.idempotency_key, t.requested_at, t.created_at, t.updated_at, t.completed_at, \
         n.namespace, n.name, n.version AS template_version, t.parent_task_id, t.parent_step_id, \
         (SELECT ps.name FROM steps ps WHERE ps.step_id = t.parent_step_id) AS parent_step"
    };
}

/// The columns of [`super::StepRow`] (table `steps`, unqualified).
macro_rules! step_cols {
    () => {
        "step_id, task_id, position, name, handler, state, attempts, retry_limit, \
         remaining_parents, ready_at, parked_ready_at, claimed_by, lease_expires_at, \
         CAST(results AS TEXT) AS results, CAST(error AS TEXT) AS error, last_attempted_at, \
         processed_at, version"
    };
}

/// The columns of [`super::TemplateRow`].
macro_rules! template_cols {
    () => {
        "named_task_id, namespace, name, version, definition, definition_hash, revision, created_at"
    };
}

pub(crate) use {detail_cols, step_cols, task_cols};

/// The tasks and named_tasks join every task read goes through.
macro_rules! task_join {
    () => {
        " FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id"
    };
}
pub(crate) use task_join;

pub(crate) const TEMPLATES: &str = concat!(
    "SELECT ",
    template_cols!(),
    " FROM named_tasks ORDER BY namespace, name, version, revision"
);

pub(crate) const EVENT_DEFINITIONS: &str =
    "SELECT name, definition, registered_at FROM event_definitions ORDER BY name";

/// Insert or replace one event definition: `$1` name, `$2` definition, `$3` registered_at.
pub(crate) const UPSERT_EVENT_DEFINITION: &str =
    "INSERT INTO event_definitions (name, definition, registered_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
     registered_at = excluded.registered_at";

/// The tasks a task's steps created ([`super::ChildLink`]): `$1` the parent task_id.
pub(crate) const CHILD_TASKS: &str =
    "SELECT task_id, parent_step_id, state FROM tasks WHERE parent_task_id = $1 ORDER BY task_id";

/// A step's position and its newest child task ([`super::StepChild`]): `$1` step_id.
pub(crate) const STEP_CHILD: &str =
    "SELECT s.position, s.state, s.attempts, (SELECT MAX(c.task_id) FROM tasks c WHERE c.parent_step_id = s.step_id) \
     AS child FROM steps s WHERE s.step_id = $1";

/// Finished child tasks whose parent step still waits for them (each the newest child of its
/// step): what a crash between a child's end and its parent's step left. `$1` limit.
pub(crate) const FINISHED_CHILDREN_WAITED_FOR: &str =
    "SELECT c.task_id FROM steps s JOIN tasks c ON c.parent_step_id = s.step_id \
     WHERE s.state = 'waiting' AND c.state IN ('complete', 'error', 'cancelled') \
       AND c.task_id = (SELECT MAX(c2.task_id) FROM tasks c2 WHERE c2.parent_step_id = s.step_id) \
     ORDER BY c.task_id LIMIT $1";

/// The columns of [`super::WaitRow`]: step_waits `w` joined with its step `s`, which must be
/// waiting at the wait's attempt.
macro_rules! wait_from {
    () => {
        "SELECT w.step_id, w.task_id, s.position, w.attempt, w.signal, w.correlation_id, \
         w.deadline_at, w.created_at FROM step_waits w JOIN steps s ON s.step_id = w.step_id \
         AND s.state = 'waiting' AND s.attempts = w.attempt "
    };
}

/// The waits of a task's waiting steps: `$1` task_id.
pub(crate) const WAITS_OF_TASK: &str =
    concat!(wait_from!(), "WHERE w.task_id = $1 ORDER BY w.step_id");
/// `$1` task_id, `$2` signal name.
pub(crate) const WAITS_FOR_SIGNAL: &str = concat!(
    wait_from!(),
    "WHERE w.task_id = $1 AND w.signal = $2 ORDER BY w.step_id"
);
/// `$1` correlation id.
pub(crate) const WAITS_BY_CORRELATION: &str = concat!(
    wait_from!(),
    "WHERE w.correlation_id = $1 ORDER BY w.task_id, w.step_id"
);
/// `$1` now, `$2` limit.
pub(crate) const EXPIRED_WAITS: &str = concat!(
    wait_from!(),
    "WHERE w.deadline_at IS NOT NULL AND w.deadline_at <= $1 ORDER BY w.deadline_at LIMIT $2"
);
/// Insert or replace a step's wait: `$1` step_id, `$2` task_id, `$3` attempt, `$4` signal,
/// `$5` correlation_id, `$6` deadline_at, `$7` now.
pub(crate) const UPSERT_WAIT: &str =
    "INSERT INTO step_waits (step_id, task_id, attempt, signal, correlation_id, deadline_at, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (step_id) DO UPDATE SET \
     attempt = excluded.attempt, signal = excluded.signal, correlation_id = excluded.correlation_id, \
     deadline_at = excluded.deadline_at, created_at = excluded.created_at";
/// Keep a signal: `$1` task_id, `$2` name, `$3` payload (JSON text or NULL), `$4` now.
pub(crate) const INSERT_SIGNAL: &str =
    "INSERT INTO task_signals (task_id, name, payload, created_at) VALUES ($1, $2, $3, $4)";
/// Take the oldest kept signal: `$1` task_id, `$2` name.
pub(crate) const TAKE_SIGNAL: &str =
    "DELETE FROM task_signals WHERE signal_id = (SELECT signal_id FROM task_signals \
     WHERE task_id = $1 AND name = $2 ORDER BY signal_id LIMIT 1) \
     RETURNING signal_id, CAST(payload AS TEXT) AS payload";

/// The decisions a task's steps took: `$1` task_id.
pub(crate) const DECISIONS_OF_TASK: &str =
    "SELECT step_id, CAST(chosen AS TEXT) AS chosen FROM step_decisions WHERE task_id = $1 \
     ORDER BY step_id";

/// A running attempt's checkpoint: `$1` checkpoint (JSON text; PostgreSQL casts it to
/// `jsonb`), `$2` now, `$3` step_id, `$4` attempt.
pub(crate) const SAVE_CHECKPOINT: &str = "UPDATE steps SET checkpoint = $1, updated_at = $2 \
     WHERE step_id = $3 AND attempts = $4 AND state = 'in_progress'";

/// The priority of a task's steps: `$1` task_id.
pub(crate) const TASK_PRIORITY: &str =
    "SELECT COALESCE(MAX(priority), 0) FROM steps WHERE task_id = $1";

pub(crate) const TEMPLATE_BY_ID: &str = concat!(
    "SELECT ",
    template_cols!(),
    " FROM named_tasks WHERE named_task_id = $1"
);

/// The latest revision of `($1 namespace, $2 name, $3 version)`.
pub(crate) const FIND_TEMPLATE: &str = concat!(
    "SELECT ",
    template_cols!(),
    " FROM named_tasks WHERE namespace = $1 AND name = $2 AND version = $3 \
      ORDER BY revision DESC LIMIT 1"
);

pub(crate) const TASK_BY_ID: &str = concat!(
    "SELECT ",
    detail_cols!(),
    task_join!(),
    " WHERE t.task_id = $1"
);

pub(crate) const TASK_STATE: &str = "SELECT state FROM tasks WHERE task_id = $1";

pub(crate) const STEPS_OF_TASK: &str = concat!(
    "SELECT ",
    step_cols!(),
    " FROM steps WHERE task_id = $1 ORDER BY position, batch_index"
);

pub(crate) const TASK_BY_IDEMPOTENCY_KEY: &str =
    "SELECT task_id FROM tasks WHERE idempotency_key = $1";

pub(crate) const TASK_AT_OR_AFTER: &str =
    "SELECT task_id, created_at FROM tasks WHERE task_id >= $1 ORDER BY task_id LIMIT 1";

pub(crate) const MAX_TASK_ID: &str = "SELECT max(task_id) FROM tasks";

pub(crate) const COUNT_RUNNING: &str =
    "SELECT COUNT(*) FROM steps WHERE task_id = $1 AND state = 'in_progress'";

/// `$1` now, `$2` limit.
pub(crate) const EXPIRED_LEASES: &str = "SELECT step_id, task_id, position, attempts FROM steps \
     WHERE state = 'in_progress' AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT $2";

/// `$1` step, `$2` limit, `$3` whether `ready_at` changes, `$4` the new `ready_at`, `$5` now.
pub(crate) const SET_RETRY_LIMIT: &str = "UPDATE steps SET retry_limit = $2, \
       ready_at = CASE WHEN $3 THEN $4 ELSE ready_at END, \
       parked_ready_at = CASE WHEN $3 THEN NULL ELSE parked_ready_at END, \
       updated_at = $5 WHERE step_id = $1";

/// The steps of the newest tasks from `$1` (at most `$2` rows), with their tasks.
pub(crate) const ANALYTICS: &str =
    "SELECT t.task_id, n.namespace, n.name, t.state AS task_state, t.created_at AS task_created_at, \
       t.completed_at AS task_completed_at, s.name AS step, s.state AS step_state, s.attempts, \
       s.last_attempted_at, s.processed_at \
     FROM tasks t JOIN named_tasks n ON n.named_task_id = t.named_task_id \
     JOIN steps s ON s.task_id = t.task_id \
     WHERE t.task_id >= $1 ORDER BY t.task_id DESC, s.position LIMIT $2";

/// Tasks and steps by state (`$1` = now): rows `(kind, state, n)` with kind `task`, `step`,
/// `backoff` or `exhausted`.
pub(crate) const STATE_COUNTS: &str = "\
    SELECT 'task' AS kind, state, count(*) AS n FROM tasks GROUP BY state \
    UNION ALL SELECT 'step', state, count(*) FROM steps GROUP BY state \
    UNION ALL SELECT 'backoff', '', count(*) FROM steps WHERE state = 'error' AND ready_at > $1 \
    UNION ALL SELECT 'exhausted', '', count(*) FROM steps \
      WHERE state = 'error' AND ready_at IS NULL AND parked_ready_at IS NULL";

/// `$N` placeholders as SQLite's `?N` (SQLite reads `$1` as a parameter *named* "$1",
/// numbered by first appearance).
pub(crate) fn sqlite_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_parameters_become_numbered_question_marks() {
        assert_eq!(
            sqlite_params("a = $1 AND b = $12 AND c = '$x'"),
            "a = ?1 AND b = ?12 AND c = '$x'"
        );
    }
}

macro_rules! schedule_cols {
    () => {
        "name, namespace, template, version, cron, timezone, context, overlap, catch_up, paused, \
         next_run_at, last_tick_at, fired, skipped, origin, created_at, updated_at"
    };
}
/// Every schedule, by name.
pub(crate) const SCHEDULES: &str =
    concat!("SELECT ", schedule_cols!(), " FROM schedules ORDER BY name");
/// One schedule: `$1` name (SQLite; PostgreSQL adds `FOR UPDATE`, [`SCHEDULE_LOCKED`]).
pub(crate) const SCHEDULE: &str = concat!(
    "SELECT ",
    schedule_cols!(),
    " FROM schedules WHERE name = $1"
);
pub(crate) const SCHEDULE_LOCKED: &str = concat!(
    "SELECT ",
    schedule_cols!(),
    " FROM schedules WHERE name = $1 FOR UPDATE"
);
/// The earliest next tick of a schedule not paused.
pub(crate) const NEXT_SCHEDULE_AT: &str =
    "SELECT MIN(next_run_at) FROM schedules WHERE NOT paused AND next_run_at IS NOT NULL";
/// Due schedules: `$1` now, `$2` limit (PostgreSQL skips rows another process is firing,
/// [`DUE_SCHEDULES_LOCKED`]).
pub(crate) const DUE_SCHEDULES: &str = concat!(
    "SELECT ", schedule_cols!(), " FROM schedules \
     WHERE NOT paused AND next_run_at IS NOT NULL AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2"
);
pub(crate) const DUE_SCHEDULES_LOCKED: &str = concat!(
    "SELECT ", schedule_cols!(), " FROM schedules \
     WHERE NOT paused AND next_run_at IS NOT NULL AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2 \
     FOR UPDATE SKIP LOCKED"
);
/// Insert a schedule unless one of that name exists: the 17 columns in [`schedule_cols`] order.
pub(crate) const INSERT_SCHEDULE: &str = concat!(
    "INSERT INTO schedules (",
    schedule_cols!(),
    ") \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
     ON CONFLICT (name) DO NOTHING"
);
/// Rewrite a schedule by name: the first 15 columns of [`schedule_cols`], then `$16`
/// updated_at (its `created_at` kept).
pub(crate) const UPDATE_SCHEDULE: &str =
    "UPDATE schedules SET namespace = $2, template = $3, version = $4, cron = $5, timezone = $6, \
     context = $7, overlap = $8, catch_up = $9, paused = $10, next_run_at = $11, last_tick_at = $12, \
     fired = $13, skipped = $14, origin = $15, updated_at = $16 WHERE name = $1";
/// Delete a schedule: `$1` name.
pub(crate) const DELETE_SCHEDULE: &str = "DELETE FROM schedules WHERE name = $1";

/// Count one more reschedule of a step: `$1` step_id; answers the new count.
pub(crate) const BUMP_RESCHEDULES: &str =
    "INSERT INTO step_reschedules (step_id, count) VALUES ($1, 1) ON CONFLICT (step_id) \
     DO UPDATE SET count = step_reschedules.count + 1 RETURNING count";
/// The tasks one prune batch removes: `$1` state, `$2` ended before, `$3` at most.
macro_rules! prune_victims {
    () => {
        "SELECT task_id FROM tasks WHERE state = $1 AND completed_at < $2 ORDER BY task_id LIMIT $3"
    };
}
pub(crate) use prune_victims;
/// Start a step's reschedule count again: `$1` step_id.
pub(crate) const RESET_RESCHEDULES: &str = "DELETE FROM step_reschedules WHERE step_id = $1";

/// A task's deadline: `$1` task_id, `$2` deadline_at.
pub(crate) const INSERT_DEADLINE: &str =
    "INSERT INTO task_deadlines (task_id, deadline_at) VALUES ($1, $2)";
/// Deadlines passed: `$1` now, `$2` limit; (task_id, deadline_at), earliest first.
pub(crate) const EXPIRED_DEADLINES: &str =
    "SELECT task_id, deadline_at FROM task_deadlines WHERE deadline_at <= $1 ORDER BY deadline_at LIMIT $2";
/// `$1` task_id.
pub(crate) const DELETE_DEADLINE: &str = "DELETE FROM task_deadlines WHERE task_id = $1";
/// `$1` task_id.
pub(crate) const TASK_DEADLINE: &str = "SELECT deadline_at FROM task_deadlines WHERE task_id = $1";
