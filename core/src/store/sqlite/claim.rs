//! The claim rule on SQLite, whole (PostgreSQL's is `functions/tasker_claim.sql`; the
//! conformance suite holds the two together): which steps a claim takes, what a claimed row
//! is (also for a step born claimed), what it does to its task, and the transitions it leaves
//! ([`crate::store::plan::claim_transitions`]).
//!
//! The selection reads the steps table alone, through the `steps_claimable` partial index in
//! priority and `ready_at` order (named with `INDEXED BY`: without statistics SQLite's planner
//! would rather sort).

use std::collections::HashMap;

use rusqlite::types::Value as Sql;
use rusqlite::{params_from_iter, Connection};

use super::rows::*;
use crate::error::{Error, Result};
use crate::state::{StepState, TaskState};
use crate::store::plan::claim_transitions;
use crate::store::*;

/// The columns of a new step that a claim sets when it is born claimed: as a claim leaves a
/// pending step (attempt 1, leased, one transition more).
pub(super) struct Born<'a> {
    pub state: StepState,
    pub attempts: i64,
    pub version: i64,
    pub claimed_by: &'a str,
    pub lease_expires_at: i64,
    pub last_attempted_at: i64,
}

pub(super) fn born_columns<'a>(s: &NewStep, spec: &ClaimSpec<'a>) -> Born<'a> {
    Born {
        state: StepState::InProgress,
        attempts: 1,
        version: s.version + 1,
        claimed_by: spec.worker_id,
        lease_expires_at: spec.lease_until,
        last_attempted_at: spec.now,
    }
}

/// The `RETURNING` list of a claimed step.
const CLAIMED_COLS: &str =
    "step_id, task_id, position, attempts, version, lease_expires_at, retry_limit, batch_index, batch, checkpoint";

/// A claimed step as its row gives it (its task's fields come from [`fill_tasks`]).
struct Claimed(ClaimedStep);

impl Decode for Claimed {
    const COLUMNS: &'static [&'static str] = &[
        "step_id",
        "task_id",
        "position",
        "attempts",
        "version",
        "lease_expires_at",
        "retry_limit",
        "batch_index",
        "batch",
        "checkpoint",
    ];
    fn decode(r: &rusqlite::Row, ix: &[usize]) -> rusqlite::Result<Claimed> {
        Ok(Claimed(ClaimedStep {
            step_id: r.get(ix[0])?,
            task_id: r.get(ix[1])?,
            position: r.get(ix[2])?,
            attempts: r.get(ix[3])?,
            version: r.get(ix[4])?,
            lease_expires_at: r.get(ix[5])?,
            retry_limit: r.get(ix[6])?,
            named_task_id: 0,
            task_state: TaskState::Pending,
            context: String::new(),
            task_created_at: 0,
            started_version: None,
            steps_total: 0,
            steps_done: 0,
            steps_blocked: 0,
            task_version: 0,
            parent_results: None,
            batch_index: r.get(ix[7])?,
            batch: r.get(ix[8])?,
            checkpoint: r.get(ix[9])?,
        }))
    }
}

/// What a claimed step's job needs of its task.
struct ClaimTask {
    task_id: i64,
    named_task_id: i64,
    state: TaskState,
    context: String,
    created_at: i64,
    counters: [i64; 4],
}

impl Decode for ClaimTask {
    const COLUMNS: &'static [&'static str] = &[
        "task_id",
        "named_task_id",
        "state",
        "context",
        "created_at",
        "steps_total",
        "steps_done",
        "steps_blocked",
        "version",
    ];
    fn decode(r: &rusqlite::Row, ix: &[usize]) -> rusqlite::Result<ClaimTask> {
        Ok(ClaimTask {
            task_id: r.get(ix[0])?,
            named_task_id: r.get(ix[1])?,
            state: task_state(&r.get::<_, String>(ix[2])?)?,
            context: r.get(ix[3])?,
            created_at: r.get(ix[4])?,
            counters: [r.get(ix[5])?, r.get(ix[6])?, r.get(ix[7])?, r.get(ix[8])?],
        })
    }
}

fn claimed(rows: Vec<Claimed>) -> Vec<ClaimedStep> {
    rows.into_iter().map(|c| c.0).collect()
}

/// Claims for `spec` after a plan's writes, the steps `born` (inserted claimed by the plan)
/// first; returns the claimed steps with their tasks and the claim's transition rows.
pub(super) fn claim(
    c: &Connection,
    spec: &ClaimSpec<'_>,
    born: &[i64],
) -> Result<(Vec<ClaimedStep>, Vec<TransitionRow>)> {
    let mut steps = read_born(c, born)?;
    let take = spec.max - born.len() as i64;
    if take > 0 {
        steps.extend(take_claimable(c, spec, take)?);
    }
    if steps.is_empty() {
        return Ok((steps, Vec::new()));
    }
    fill_tasks(c, &mut steps)?;
    start_tasks(c, &mut steps, spec.now)?;
    let rows = claim_transitions(&steps, spec.worker_id, spec.now);
    Ok((steps, rows))
}

fn read_born(c: &Connection, born: &[i64]) -> Result<Vec<ClaimedStep>> {
    let mut out = Vec::with_capacity(born.len());
    for chunk in born.chunks(CHUNK) {
        let sql = format!(
            "SELECT {CLAIMED_COLS} FROM steps WHERE step_id IN ({}) ORDER BY step_id",
            list(chunk.len())
        );
        out.extend(claimed(query_all(c, &sql, params_from_iter(chunk))?));
    }
    Ok(out)
}

/// The selection and the row change of claimable steps.
fn take_claimable(c: &Connection, spec: &ClaimSpec<'_>, take: i64) -> Result<Vec<ClaimedStep>> {
    if spec.handlers.is_some_and(|h| h.is_empty()) {
        // No handler, no step (and `INDEXED BY` finds no plan for an always-false filter).
        return Ok(Vec::new());
    }
    let mut p = vec![
        text(spec.worker_id),
        Sql::Integer(spec.lease_until),
        Sql::Integer(spec.now),
        Sql::Integer(spec.now),
        Sql::Integer(spec.now),
    ];
    let filter = handler_filter(spec.handlers, &mut p);
    p.push(Sql::Integer(take));
    let sql = format!(
        "UPDATE steps SET state = 'in_progress', attempts = attempts + 1, ready_at = NULL, claimed_by = ?, \
           lease_expires_at = ?, last_attempted_at = ?, updated_at = ?, \
           version = version + CASE WHEN attempts = 0 THEN 1 ELSE 2 END \
         WHERE step_id IN (SELECT s.step_id FROM steps AS s INDEXED BY steps_claimable \
           WHERE s.ready_at IS NOT NULL AND s.ready_at <= ?{filter} \
           ORDER BY s.priority DESC, s.ready_at, s.step_id LIMIT ?) \
         RETURNING {CLAIMED_COLS}"
    );
    Ok(claimed(query_all(c, &sql, params_from_iter(p))?))
}

/// Each claimed step's task as the claim sees it (its context, counters and version).
fn fill_tasks(c: &Connection, steps: &mut [ClaimedStep]) -> Result<()> {
    let mut ids: Vec<i64> = steps.iter().map(|s| s.task_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut tasks: HashMap<i64, ClaimTask> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT task_id, named_task_id, state, context, created_at, steps_total, steps_done, steps_blocked, version \
             FROM tasks WHERE task_id IN ({})",
            list(chunk.len())
        );
        for t in query_all::<ClaimTask>(c, &sql, params_from_iter(chunk))? {
            tasks.insert(t.task_id, t);
        }
    }
    for s in steps.iter_mut() {
        let t = tasks
            .get(&s.task_id)
            .ok_or_else(|| Error::Corrupt(format!("step {} has no task", s.step_id)))?;
        let [total, done, blocked, version] = t.counters;
        s.named_task_id = t.named_task_id;
        s.task_state = t.state;
        s.context = t.context.clone();
        s.task_created_at = t.created_at;
        s.steps_total = total;
        s.steps_done = done;
        s.steps_blocked = blocked;
        s.task_version = version;
    }
    Ok(())
}

/// Starts the claimed steps' tasks still pending.
fn start_tasks(c: &Connection, steps: &mut [ClaimedStep], now: i64) -> Result<()> {
    let mut start: Vec<i64> = steps
        .iter()
        .filter(|s| s.task_state == TaskState::Pending)
        .map(|s| s.task_id)
        .collect();
    start.sort_unstable();
    start.dedup();
    let mut started: HashMap<i64, i64> = HashMap::with_capacity(start.len());
    for chunk in start.chunks(CHUNK) {
        let sql = format!(
            "UPDATE tasks SET state = 'in_progress', version = version + 1, updated_at = ? \
             WHERE task_id IN ({}) AND state = 'pending' RETURNING task_id, version",
            list(chunk.len())
        );
        let mut p = vec![Sql::Integer(now)];
        p.extend(chunk.iter().map(|t| Sql::Integer(*t)));
        started.extend(query_rows(c, &sql, params_from_iter(p), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?);
    }
    for s in steps.iter_mut() {
        s.started_version = started.get(&s.task_id).copied();
        if let Some(v) = s.started_version {
            s.task_state = TaskState::InProgress;
            s.task_version = v;
        }
    }
    Ok(())
}
