//! A plan as one call of `tasker_apply_v3` (`migrations/postgres/functions/tasker_apply.sql`):
//! the plan's rows as arrays of the function's composite types, its answer one row.

use sqlx::PgConnection;

use super::wire::*;
use crate::error::{Error, Result};
use crate::store::*;

const APPLY: &str =
    "SELECT claimed, ready, claim_ran, task_ids, step_ids, finished_tasks, finished_steps, \
     finished_children FROM tasker_apply_v3($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// A claim that takes nothing: compiles `tasker_claim_v2` on a connection ([`Store::warm`]).
pub(super) const WARM_CLAIM: &str = "SELECT count(*) FROM tasker_claim_v2(0, \
     ROW(0, NULL, '', 0, false)::tasker_claim_spec_v1, '{}'::tasker_born_step_v1[])";

/// Runs the plan on `conn` (inside a transaction or on its own) and reads the answer.
pub(super) async fn apply(
    conn: &mut PgConnection,
    channel: &str,
    plan: &Plan,
    claim: Option<&ClaimSpec<'_>>,
) -> Result<PlanOutcome> {
    let mut guards: Vec<&TaskRow> = plan.guards.iter().collect();
    guards.sort_by_key(|g| g.task_id);
    // Task rows in id order, the order rows are locked everywhere.
    let mut task_updates: Vec<&TaskUpdate> = plan.task_updates.iter().collect();
    task_updates.sort_by_key(|u| u.task_id);
    let applied: std::result::Result<PgApplied, sqlx::Error> = sqlx::query_as(APPLY)
        .bind(plan.now)
        .bind(plan.durable)
        .bind(guards.into_iter().map(guard).collect::<Vec<_>>())
        .bind(plan.new_tasks.iter().map(new_task).collect::<Vec<_>>())
        .bind(plan.new_steps.iter().map(new_step).collect::<Vec<_>>())
        .bind(
            plan.step_updates
                .iter()
                .map(step_update)
                .collect::<Vec<_>>(),
        )
        .bind(plan.decrements.iter().map(decrement).collect::<Vec<_>>())
        .bind(plan.park.as_slice())
        .bind(plan.unpark.as_slice())
        .bind(
            task_updates
                .into_iter()
                .map(task_update)
                .collect::<Vec<_>>(),
        )
        .bind(plan.transitions.iter().map(transition).collect::<Vec<_>>())
        .bind(claim.map(claim_spec))
        .bind(notify(channel, &plan.notify))
        .bind(plan.watched.as_slice())
        .fetch_one(conn)
        .await;
    let applied = match applied {
        Ok(a) => a,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("TK409") => {
            return Err(Error::PlanStale)
        }
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("23505")
                && e.constraint() == Some("tasks_idempotency_key") =>
        {
            return Err(idempotency_conflict(plan))
        }
        Err(e) => return Err(e.into()),
    };
    outcome(applied)
}

fn outcome(a: PgApplied) -> Result<PlanOutcome> {
    let mut finished: Vec<FinishedTask> = Vec::with_capacity(a.finished_tasks.len());
    for t in a.finished_tasks {
        finished.push(FinishedTask {
            task: t.into_detail()?,
            steps: Vec::new(),
        });
    }
    for s in a.finished_steps {
        let s = s.into_row()?;
        if let Some(f) = finished
            .iter_mut()
            .find(|f| f.task.row.task_id == s.task_id)
        {
            f.steps.push(s);
        }
    }
    Ok(PlanOutcome {
        claimed: a
            .claimed
            .into_iter()
            .map(PgClaimed::into_claimed)
            .collect::<Result<_>>()?,
        ready: a.ready.max(0) as u64,
        claim_ran: a.claim_ran,
        task_ids: a.task_ids,
        step_ids: a.step_ids,
        finished,
        finished_children: a.finished_children,
        children_settled: false,
    })
}

fn guard(g: &TaskRow) -> PgGuard {
    PgGuard {
        task_id: g.task_id,
        state: g.state.as_str().to_owned(),
        steps_done: g.steps_done,
        steps_blocked: g.steps_blocked,
        version: g.version,
    }
}

fn new_task(t: &NewTask) -> PgNewTask {
    PgNewTask {
        named_task_id: t.named_task_id,
        state: t.state.as_str().to_owned(),
        context: t.context.clone(),
        initiator: t.initiator.clone(),
        source_system: t.source_system.clone(),
        reason: t.reason.clone(),
        tags: t.tags.clone(),
        bypass_steps: t.bypass_steps.clone(),
        idempotency_key: t.idempotency_key.clone(),
        steps_total: t.steps_total,
        steps_done: t.steps_done,
        version: t.version,
        parent_task_id: t.parent_task_id,
        parent_step_id: t.parent_step_id,
    }
}

fn new_step(s: &NewStep) -> PgNewStep {
    PgNewStep {
        task_id: s.task_id,
        position: s.position as i64,
        name: s.name.clone(),
        handler: s.handler.clone(),
        state: s.state.as_str().to_owned(),
        retry_limit: s.retry_limit,
        remaining_parents: s.remaining_parents,
        ready_at: s.ready_at,
        priority: s.priority as i64,
        version: s.version,
        parents: (!s.parents.is_empty()).then(|| s.parents.iter().map(|&p| p as i64).collect()),
        born: s.born,
        batch_index: s.batch_index,
        batch: s.batch.clone(),
    }
}

fn step_update(u: &StepUpdate) -> PgStepUpdate {
    PgStepUpdate {
        step_id: u.step_id,
        expect_state: u.expect_state.as_str().to_owned(),
        expect_attempts: u.expect_attempts,
        expect_version: u.expect_version,
        state: u.state.as_str().to_owned(),
        attempts: u.attempts,
        set_results: u.results.is_some(),
        results: u.results.clone().flatten(),
        set_error: u.error.is_some(),
        error: u.error.clone().flatten(),
        ready_at: u.ready_at,
        processed_at: u.processed_at,
        transitions: u.transitions,
    }
}

fn decrement(d: &Decrement) -> PgDecrement {
    PgDecrement {
        task_id: d.task_id,
        position: d.position as i64,
        by: d.by,
    }
}

fn task_update(u: &TaskUpdate) -> PgTaskUpdate {
    PgTaskUpdate {
        task_id: u.task_id,
        d_done: u.d_done,
        d_blocked: u.d_blocked,
        d_total: u.d_total,
        state: u.state.map(|s| s.as_str().to_owned()),
        transitions: u.transitions,
        completed_at: u.completed_at,
    }
}

fn transition(r: &TransitionRow) -> PgTransition {
    PgTransition {
        task_id: r.task_id,
        step_id: r.step_id,
        from_state: r.from_state.map(str::to_owned),
        to_state: r.to_state.to_owned(),
        metadata: r.metadata.clone(),
        sort_key: r.sort_key,
        created_at: r.created_at,
    }
}

fn claim_spec(c: &ClaimSpec<'_>) -> PgClaimSpec {
    PgClaimSpec {
        max: c.max,
        handlers: c.handlers.map(<[String]>::to_vec),
        worker: c.worker_id.to_owned(),
        lease_until: c.lease_until,
        only_if_readied: c.only_if_readied,
    }
}

fn notify(channel: &str, n: &Notify) -> PgNotify {
    PgNotify {
        channel: channel.to_owned(),
        work: n.work,
        task_changed: n.task_changed,
        quiet_if_claim_short: n.quiet_if_claim_short,
    }
}
