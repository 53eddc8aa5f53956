//! A plan's writes on SQLite, in the order of [`crate::store::plan`]: a few multi-row
//! statements at a few microseconds each (the transaction's one fsync is at commit).

use std::collections::HashMap;

use rusqlite::types::Value as Sql;
use rusqlite::{params_from_iter, Connection};

use super::claim;
use super::rows::*;
use crate::error::{Error, Result};
use crate::state::TaskState;
use crate::store::*;

/// Applies `plan`, then claims for `spec` (see [`crate::store::StoreTx::apply`]).
pub(super) fn apply(
    c: &Connection,
    plan: &Plan,
    spec: Option<&ClaimSpec<'_>>,
) -> Result<PlanOutcome> {
    let now = plan.now;
    check_guards(c, &plan.guards)?;
    let mut out = PlanOutcome::default();
    for t in &plan.new_tasks {
        out.task_ids.push(insert_task(c, t, now)?);
    }
    let born = insert_steps(c, plan, spec, &mut out)?;
    update_steps(c, &plan.step_updates, now)?;
    out.ready = decrement(c, &plan.decrements, now)?;
    insert_decisions(c, &plan.decisions, now)?;
    move_ready(
        c,
        &plan.park,
        now,
        "parked_ready_at = ready_at, ready_at = NULL",
        "ready_at IS NOT NULL",
    )?;
    move_ready(
        c,
        &plan.unpark,
        now,
        "ready_at = parked_ready_at, parked_ready_at = NULL",
        "parked_ready_at IS NOT NULL AND state IN ('pending', 'error')",
    )?;
    out.finished_children = update_tasks(c, &plan.task_updates, &out, now)?;
    let mut rows: Vec<TransitionRow> = plan
        .transitions
        .iter()
        .map(|r| TransitionRow {
            task_id: out.task_id(r.task_id),
            step_id: r.step_id.map(|s| out.step_id(s)),
            ..r.clone()
        })
        .collect();
    if let Some(spec) = spec.filter(|s| s.max > 0) {
        if !born.is_empty() || !spec.only_if_readied || out.ready > 0 || plan.readies_steps() {
            let (claimed, claim_rows) = claim::claim(c, spec, &born)?;
            out.claimed = claimed;
            out.claim_ran = true;
            // The claim's rows last: a step created or failed in this transaction and claimed
            // in it too has its earlier rows first.
            rows.extend(claim_rows);
        }
    } else if !born.is_empty() {
        return Err(Error::Internal("a step born claimed needs a claim".into()));
    }
    write_transitions(c, &rows)?;
    Ok(out)
}

/// Guards on SQLite (nothing else writes while the writer is held): the tasks as assumed.
fn check_guards(c: &Connection, guards: &[TaskRow]) -> Result<()> {
    for g in guards {
        let row: Option<TaskRow> = query_opt(
            c,
            concat!(
                "SELECT ",
                crate::store::sql::task_cols!(),
                " FROM tasks WHERE task_id = ?1"
            ),
            [g.task_id],
        )?;
        if row.as_ref() != Some(g) {
            return Err(Error::PlanStale);
        }
    }
    Ok(())
}

fn insert_task(c: &Connection, t: &NewTask, now: i64) -> Result<i64> {
    let r = c
        .prepare_cached(
            "INSERT INTO tasks (named_task_id, state, context, initiator, source_system, reason, tags, bypass_steps, \
               idempotency_key, steps_total, steps_done, version, requested_at, created_at, updated_at, \
               parent_task_id, parent_step_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?13, ?14, ?15) RETURNING task_id",
        )?
        .query_row(
            rusqlite::params![
                t.named_task_id,
                t.state.as_str(),
                t.context,
                t.initiator,
                t.source_system,
                t.reason,
                t.tags,
                t.bypass_steps,
                t.idempotency_key,
                t.steps_total,
                t.steps_done,
                t.version,
                now,
                t.parent_task_id,
                t.parent_step_id
            ],
            |r| r.get(0),
        );
    match r {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation
                && t.idempotency_key.is_some() =>
        {
            Err(idempotency_conflict(&Plan {
                new_tasks: vec![t.clone()],
                ..Plan::default()
            }))
        }
        r => Ok(r?),
    }
}

/// Inserts the plan's new steps in plan order (so their ids are too); the born ones as the
/// claim leaves a new step ([`claim::born_columns`]). Returns the born steps' ids.
fn insert_steps(
    c: &Connection,
    plan: &Plan,
    spec: Option<&ClaimSpec<'_>>,
    out: &mut PlanOutcome,
) -> Result<Vec<i64>> {
    const COLS: usize = 19;
    let mut born = Vec::new();
    for chunk in plan.new_steps.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO steps (task_id, position, name, handler, state, retry_limit, remaining_parents, \
               ready_at, priority, version, attempts, claimed_by, lease_expires_at, last_attempted_at, \
               parked_ready_at, created_at, updated_at, batch_index, batch) \
             VALUES {} RETURNING task_id, position, COALESCE(batch_index, -1), step_id",
            placeholders(chunk.len(), COLS)
        );
        let mut p = Vec::with_capacity(chunk.len() * COLS);
        for s in chunk {
            let b = if s.born {
                let spec = spec
                    .ok_or_else(|| Error::Internal("a step born claimed needs a claim".into()))?;
                Some(claim::born_columns(s, spec))
            } else {
                None
            };
            p.extend([
                Sql::Integer(out.task_id(s.task_id)),
                Sql::Integer(s.position as i64),
                text(&s.name),
                text(&s.handler),
                text(b.as_ref().map_or(s.state, |b| b.state).as_str()),
                Sql::Integer(s.retry_limit),
                Sql::Integer(s.remaining_parents),
                opt_i64(b.as_ref().map_or(s.ready_at, |_| None)),
                Sql::Integer(s.priority as i64),
                Sql::Integer(b.as_ref().map_or(s.version, |b| b.version)),
                Sql::Integer(b.as_ref().map_or(0, |b| b.attempts)),
                b.as_ref().map_or(Sql::Null, |b| text(b.claimed_by)),
                opt_i64(b.as_ref().map(|b| b.lease_expires_at)),
                opt_i64(b.as_ref().map(|b| b.last_attempted_at)),
                Sql::Null,
                Sql::Integer(plan.now),
                Sql::Integer(plan.now),
                opt_i64(s.batch_index),
                opt_text(s.batch.as_deref()),
            ]);
        }
        let ids: HashMap<(i64, i32, i64), i64> = query_rows(c, &sql, params_from_iter(p), |r| {
            Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?))
        })?
        .into_iter()
        .collect();
        for s in chunk {
            let id = ids[&(
                out.task_id(s.task_id),
                s.position,
                s.batch_index.unwrap_or(-1),
            )];
            out.step_ids.push(id);
            if s.born {
                born.push(id);
            }
        }
    }
    Ok(born)
}

/// The decisions steps took (steps that exist: their ids are real).
fn insert_decisions(c: &Connection, decisions: &[NewDecision], now: i64) -> Result<()> {
    let mut st = c.prepare_cached(
        "INSERT INTO step_decisions (step_id, task_id, chosen, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for d in decisions {
        st.execute(rusqlite::params![d.step_id, d.task_id, d.chosen, now])?;
    }
    Ok(())
}

/// Step updates at the state and version assumed; any that does not apply refuses the plan.
fn update_steps(c: &Connection, updates: &[StepUpdate], now: i64) -> Result<()> {
    const COLS: usize = 13;
    for chunk in updates.chunks(CHUNK) {
        let sql = format!(
            "UPDATE steps SET state = v.column2, \
               attempts = COALESCE(v.column3, steps.attempts), \
               results = CASE WHEN v.column4 THEN v.column5 ELSE steps.results END, \
               error = CASE WHEN v.column6 THEN v.column7 ELSE steps.error END, \
               ready_at = v.column8, parked_ready_at = NULL, \
               processed_at = COALESCE(v.column9, steps.processed_at), \
               version = steps.version + v.column10, \
               claimed_by = CASE WHEN v.column2 = 'in_progress' THEN steps.claimed_by END, \
               lease_expires_at = CASE WHEN v.column2 = 'in_progress' THEN steps.lease_expires_at END, \
               updated_at = ? \
             FROM (VALUES {}) AS v \
             WHERE steps.step_id = v.column1 AND steps.state = v.column11 \
               AND (v.column12 IS NULL OR steps.attempts = v.column12) \
               AND steps.version = v.column13",
            placeholders(chunk.len(), COLS)
        );
        let mut p = Vec::with_capacity(1 + chunk.len() * COLS);
        p.push(Sql::Integer(now));
        for u in chunk {
            p.extend([
                Sql::Integer(u.step_id),
                text(u.state.as_str()),
                opt_i64(u.attempts),
                Sql::Integer(u.results.is_some() as i64),
                opt_text(u.results.as_ref().and_then(|r| r.as_deref())),
                Sql::Integer(u.error.is_some() as i64),
                opt_text(u.error.as_ref().and_then(|r| r.as_deref())),
                opt_i64(u.ready_at),
                opt_i64(u.processed_at),
                Sql::Integer(u.transitions),
                text(u.expect_state.as_str()),
                opt_i64(u.expect_attempts),
                Sql::Integer(u.expect_version),
            ]);
        }
        let n = c.prepare_cached(&sql)?.execute(params_from_iter(p))?;
        if n != chunk.len() {
            return Err(Error::PlanStale);
        }
    }
    Ok(())
}

/// Decrements `remaining_parents`; returns how many steps became claimable.
fn decrement(c: &Connection, decrements: &[Decrement], now: i64) -> Result<u64> {
    let mut ready = 0;
    for chunk in decrements.chunks(CHUNK) {
        let sql = format!(
            "UPDATE steps SET remaining_parents = steps.remaining_parents - v.column3, \
               ready_at = CASE WHEN steps.remaining_parents - v.column3 <= 0 AND steps.state = 'pending' THEN ?1 ELSE steps.ready_at END, \
               updated_at = ?1 \
             FROM (VALUES {}) AS v WHERE steps.task_id = v.column1 AND steps.position = v.column2 \
             RETURNING ready_at IS NOT NULL AND remaining_parents <= 0",
            placeholders(chunk.len(), 3)
        );
        // ?1 is `now`; the VALUES placeholders are numbered after it.
        let mut p = Vec::with_capacity(1 + chunk.len() * 3);
        p.push(Sql::Integer(now));
        for d in chunk {
            p.extend([
                Sql::Integer(d.task_id),
                Sql::Integer(d.position as i64),
                Sql::Integer(d.by),
            ]);
        }
        let sql = number_placeholders(&sql, 2);
        for became_ready in query_rows(c, &sql, params_from_iter(p), |r| r.get::<_, bool>(0))? {
            ready += became_ready as u64;
        }
    }
    Ok(ready)
}

/// `UPDATE steps SET {set} WHERE task_id IN (...) AND {cond}`: parking and unparking.
fn move_ready(c: &Connection, task_ids: &[i64], now: i64, set: &str, cond: &str) -> Result<()> {
    for chunk in task_ids.chunks(CHUNK) {
        let sql = format!(
            "UPDATE steps SET {set}, updated_at = ? WHERE task_id IN ({}) AND {cond}",
            list(chunk.len())
        );
        let mut p = vec![Sql::Integer(now)];
        p.extend(chunk.iter().map(|t| Sql::Integer(*t)));
        c.prepare_cached(&sql)?.execute(params_from_iter(p))?;
    }
    Ok(())
}

/// Applies the task updates; returns the child tasks among those that end here (complete,
/// error or cancelled), by id.
fn update_tasks(
    c: &Connection,
    updates: &[TaskUpdate],
    out: &PlanOutcome,
    now: i64,
) -> Result<Vec<i64>> {
    let mut children = Vec::new();
    for chunk in updates.chunks(CHUNK) {
        let sql = format!(
            "UPDATE tasks SET steps_done = tasks.steps_done + v.column2, \
               steps_blocked = tasks.steps_blocked + v.column3, \
               state = COALESCE(v.column4, tasks.state), \
               version = tasks.version + v.column5, \
               completed_at = COALESCE(v.column6, tasks.completed_at), \
               steps_total = tasks.steps_total + v.column7, \
               updated_at = ? \
             FROM (VALUES {}) AS v WHERE tasks.task_id = v.column1 \
             RETURNING tasks.task_id, tasks.parent_step_id IS NOT NULL",
            placeholders(chunk.len(), 7)
        );
        let mut p = Vec::with_capacity(1 + chunk.len() * 7);
        p.push(Sql::Integer(now));
        for u in chunk {
            p.extend([
                Sql::Integer(out.task_id(u.task_id)),
                Sql::Integer(u.d_done),
                Sql::Integer(u.d_blocked),
                opt_text(u.state.map(|s| s.as_str())),
                Sql::Integer(u.transitions),
                opt_i64(u.completed_at),
                Sql::Integer(u.d_total),
            ]);
        }
        let mut st = c.prepare_cached(&sql)?;
        let mut rows = st.query(params_from_iter(p))?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let ends = chunk.iter().any(|u| {
                out.task_id(u.task_id) == id
                    && matches!(
                        u.state,
                        Some(TaskState::Complete | TaskState::Error | TaskState::Cancelled)
                    )
            });
            if r.get::<_, bool>(1)? && ends {
                children.push(id);
            }
        }
    }
    children.sort_unstable();
    Ok(children)
}

/// Inserts transition rows, many per statement, one statement per table.
fn write_transitions(c: &Connection, rows: &[TransitionRow]) -> Result<()> {
    let (steps, tasks): (Vec<&TransitionRow>, Vec<&TransitionRow>) =
        rows.iter().partition(|r| r.step_id.is_some());
    for chunk in tasks.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO task_transitions (task_id, from_state, to_state, metadata, sort_key, created_at) VALUES {}",
            placeholders(chunk.len(), 6)
        );
        let p = chunk.iter().flat_map(|r| {
            [
                Sql::Integer(r.task_id),
                opt_text(r.from_state),
                text(r.to_state),
                text(&r.metadata),
                Sql::Integer(r.sort_key),
                Sql::Integer(r.created_at),
            ]
        });
        c.prepare_cached(&sql)?.execute(params_from_iter(p))?;
    }
    for chunk in steps.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO step_transitions (step_id, task_id, from_state, to_state, metadata, sort_key, created_at) VALUES {}",
            placeholders(chunk.len(), 7)
        );
        let p = chunk.iter().flat_map(|r| {
            [
                opt_i64(r.step_id),
                Sql::Integer(r.task_id),
                opt_text(r.from_state),
                text(r.to_state),
                text(&r.metadata),
                Sql::Integer(r.sort_key),
                Sql::Integer(r.created_at),
            ]
        });
        c.prepare_cached(&sql)?.execute(params_from_iter(p))?;
    }
    Ok(())
}
