//! Operator actions: cancel a task, retry a failed step, resolve a step by hand, cancel a
//! step, change a step's retry limit.

use serde_json::{json, Value};

use super::decide::{self, LimitEffect};
use super::tx::{StepChange, TxCx};
use super::Engine;
use crate::error::{Error, Result};
use crate::state::{StepState, TaskState};
use crate::store::{Decrement, RetryLimitUpdate, StepRow, StepUpdate, TaskDetailsUpdate};
use crate::template::{StepTemplate, TaskTemplate};

/// Out of attempts: blocks its task until an operator acts ([`decide::is_exhausted`]).
fn exhausted(s: &StepRow) -> bool {
    decide::is_exhausted(s.state, s.ready_at, s.parked_ready_at)
}

/// A fan-out instance out of attempts under `continue_on_failure`: final, already counted as
/// finished, its convergence runs (or ran) with its failure. Operators cannot change it.
fn tolerated(template: &TaskTemplate, s: &StepRow) -> bool {
    exhausted(s)
        && template
            .steps
            .get(s.position as usize)
            .is_some_and(|t| t.tolerates_failure())
}

/// The refusal of an operator action on a tolerated failure.
fn final_failure(task_id: i64, s: &StepRow, action: &str) -> Error {
    Error::Conflict(format!(
        "cannot {action} step {:?} of task {task_id}: it failed under batch_config.failure_strategy continue_on_failure, which counts it as finished (its convergence gets its failure in its place); it is final",
        s.name
    ))
}

impl TxCx<'_> {
    /// An operator finished step `st` of `task_id` (resolved it, or its failure became a
    /// tolerated one): it counts as done and its children have one parent fewer to wait for.
    fn count_finished(&mut self, task_id: i64, st: &StepTemplate) {
        self.adjust(task_id, 1, 0);
        self.decrement(st.children.iter().map(|&c| Decrement {
            task_id,
            position: c as i32,
            by: 1,
        }));
    }
}

impl Engine {
    /// Changes a task's `reason` and/or `tags` (what the original engine's `PATCH /tasks/:id`
    /// allowed); not a state change, no transition. Any state.
    pub async fn update_task(
        &self,
        task_id: i64,
        reason: Option<String>,
        tags: Option<Vec<String>>,
    ) -> Result<()> {
        if reason.is_none() && tags.is_none() {
            return Err(Error::Validation(format!(
                "update task {task_id}: give reason and/or tags"
            )));
        }
        let nul = |s: &str| s.contains('\0');
        if reason.as_deref().is_some_and(nul) || tags.iter().flatten().any(|t| nul(t)) {
            return Err(Error::Validation(format!(
                "update task {task_id}: reason and tags must not contain NUL characters"
            )));
        }
        let tags = tags.map(|t| serde_json::to_string(&t).expect("json"));
        let mut cx = TxCx::begin(self, self.now()).await?;
        cx.task(task_id).await?;
        let now = cx.now;
        cx.db()?
            .update_task_details(&TaskDetailsUpdate {
                task_id,
                reason: reason.as_deref(),
                tags: tags.as_deref(),
                paused: None,
                now,
            })
            .await?;
        cx.finish(None).await.map(drop)
    }

    /// Cancels the task: steps not yet started are cancelled; steps in flight finish and their
    /// results are saved.
    pub async fn cancel_task(&self, task_id: i64) -> Result<()> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        if task.state.is_finished() {
            return Err(Error::Conflict(format!(
                "cannot cancel task {task_id}: it is already {}",
                task.state
            )));
        }
        if TaskState::event(Some(task.state), TaskState::Cancelled).is_none() {
            return Err(Error::IllegalTaskTransition {
                task_id,
                from: task.state,
                to: TaskState::Cancelled,
            });
        }
        cx.cancel_tree(task_id, json!({"reason": "cancelled_by_operator"}))
            .await?;
        cx.finish(None).await.map(drop)
    }
}

impl TxCx<'_> {
    /// Cancels an unfinished task (`meta` says why), then its unfinished children, theirs,
    /// and so on.
    pub(super) async fn cancel_tree(&mut self, task_id: i64, meta: Value) -> Result<()> {
        self.task(task_id).await?;
        self.cancel(task_id, meta).await?;
        // Ids grow downwards: children are locked after their parents, in id order.
        let mut parents = vec![task_id];
        while let Some(parent) = parents.pop() {
            for c in self.db()?.child_tasks(parent).await? {
                if c.state.is_finished() {
                    continue;
                }
                let child = self.task(c.task_id).await?;
                if TaskState::event(Some(child.state), TaskState::Cancelled).is_some() {
                    self.cancel(
                        c.task_id,
                        json!({"reason": "parent_task_cancelled", "parent_task_id": parent}),
                    )
                    .await?;
                }
                parents.push(c.task_id);
            }
        }
        Ok(())
    }

    /// Cancels a task the transaction holds and its steps not yet finished (running ones
    /// finish; their results are still saved).
    async fn cancel(&mut self, task_id: i64, meta: Value) -> Result<()> {
        let task = self.tasks[&task_id].clone();
        let template = self.template(task.named_task_id).await?;
        let steps = self.task_steps(task_id).await?;
        let mut updates = Vec::new();
        for s in &steps {
            if matches!(
                s.state,
                StepState::Pending | StepState::Error | StepState::Waiting
            ) && !tolerated(&template, s)
            {
                if exhausted(s) {
                    self.adjust(task_id, 0, -1);
                }
                updates.push(StepChange {
                    update: StepUpdate::new(s.step_id, s.version, s.state, StepState::Cancelled),
                    name: template.steps[s.position as usize].name.clone(),
                    attempt: s.attempts,
                    meta: json!({"reason": "task_cancelled"}),
                });
            }
        }
        self.update_steps(task_id, updates)?;
        self.set_task_states(task_id, &[TaskState::Cancelled], meta)
    }
}

impl Engine {
    /// Gives a failed step a fresh set of attempts and puts the task back to work.
    pub async fn retry_step(&self, task_id: i64, step_name: &str) -> Result<()> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        cx.require_active(&task, "retry a step of")?;
        let s = cx.step_named(task_id, step_name).await?;
        if s.state != StepState::Error {
            return Err(Error::Conflict(format!(
                "step {step_name:?} of task {task_id} is {}; only a step in error can be retried",
                s.state
            )));
        }
        let template = cx.template(task.named_task_id).await?;
        if tolerated(&template, &s) {
            return Err(final_failure(task_id, &s, "retry"));
        }
        if exhausted(&s) {
            cx.adjust(task_id, 0, -1);
        }
        if template.steps[s.position as usize]
            .max_reschedules
            .is_some()
        {
            // Fresh attempts, and its reschedules counted from zero again.
            cx.db()?.reset_reschedules(s.step_id).await?;
        }
        let now = cx.now;
        let update = StepUpdate {
            expect_attempts: Some(s.attempts),
            attempts: Some(0),
            error: Some(None),
            ready_at: (s.remaining_parents <= 0).then_some(now),
            ..StepUpdate::new(s.step_id, s.version, StepState::Error, StepState::Pending)
        };
        cx.update_steps(
            task_id,
            vec![StepChange {
                update,
                name: s.name.clone(),
                attempt: 0,
                meta: json!({"reason": "retried_by_operator", "previous_attempts": s.attempts}),
            }],
        )?;
        cx.work = true;
        cx.settle(task_id).await?;
        cx.finish(None).await.map(drop)
    }

    /// Marks a pending or failed step `resolved_manually` with `results`; its children may run.
    pub async fn resolve_step_manually(
        &self,
        task_id: i64,
        step_name: &str,
        results: Value,
    ) -> Result<()> {
        if let Some(path) = super::decide::nul_path(&results) {
            return Err(Error::Validation(format!(
                "results: the string at {path} contains a NUL character (\\u0000), which cannot be stored"
            )));
        }
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        cx.require_active(&task, "resolve a step of")?;
        let s = cx.step_named(task_id, step_name).await?;
        if !matches!(
            s.state,
            StepState::Pending | StepState::Error | StepState::Waiting
        ) {
            return Err(Error::Conflict(format!(
                "step {step_name:?} of task {task_id} is {}; only a pending, waiting or failed step can be resolved manually",
                s.state
            )));
        }
        let template = cx.template(task.named_task_id).await?;
        if tolerated(&template, &s) {
            return Err(final_failure(task_id, &s, "resolve"));
        }
        if exhausted(&s) {
            cx.adjust(task_id, 0, -1);
        }
        let update = StepUpdate {
            expect_attempts: Some(s.attempts),
            results: Some(Some(serde_json::to_string(&results).expect("json"))),
            error: Some(None),
            processed_at: Some(cx.now),
            ..StepUpdate::new(s.step_id, s.version, s.state, StepState::ResolvedManually)
        };
        cx.update_steps(
            task_id,
            vec![StepChange {
                update,
                name: s.name.clone(),
                attempt: s.attempts,
                meta: json!({"reason": "resolved_by_operator"}),
            }],
        )?;
        cx.count_finished(task_id, &template.steps[s.position as usize]);
        if template.has_run_time_shape() {
            // A decision resolved by hand chose none of its children.
            cx.grow(task_id, &template).await?;
        }
        cx.settle(task_id).await?;
        cx.finish(None).await.map(drop)
    }

    /// The largest `retry_limit` an operator may set.
    pub const MAX_RETRY_LIMIT: i64 = 10_000;

    /// Sets a step's `retry_limit` (its total attempts, the first included), as the original
    /// engine's `PATCH /tasks/:id/workflow_steps/:step` did. Failures recorded from now on,
    /// including the one of an attempt in flight, are judged against it. A failed step waiting
    /// for its next attempt that has none left under the new limit is out of attempts at once
    /// (its task may go to `error`); an exhausted step given more attempts runs again at once
    /// and stops blocking its task, unless its last failure was permanent (retry it instead).
    /// [`decide::retry_limit_effect`] decides.
    pub async fn set_step_retry_limit(
        &self,
        task_id: i64,
        step_name: &str,
        retry_limit: i64,
    ) -> Result<()> {
        if !(1..=Self::MAX_RETRY_LIMIT).contains(&retry_limit) {
            return Err(Error::Validation(format!(
                "retry_limit must be an integer from 1 to {}, got {retry_limit}",
                Self::MAX_RETRY_LIMIT
            )));
        }
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        let s = cx.step_named(task_id, step_name).await?;
        let template = cx.template(task.named_task_id).await?;
        if tolerated(&template, &s) {
            return Err(final_failure(task_id, &s, "change the retry limit of"));
        }
        let failed_permanently = s
            .error
            .as_deref()
            .and_then(|e| serde_json::from_str::<Value>(e).ok())
            .is_some_and(|e| e["kind"] == "permanent");
        let effect = decide::retry_limit_effect(
            s.state,
            s.attempts,
            exhausted(&s),
            failed_permanently,
            retry_limit,
        );
        let now = cx.now;
        let ready_at = match effect {
            LimitEffect::Keep => None,
            LimitEffect::Exhaust => Some(None),
            LimitEffect::Unexhaust => Some(Some(now)),
        };
        cx.db()?
            .set_retry_limit(&RetryLimitUpdate {
                step_id: s.step_id,
                limit: retry_limit,
                ready_at,
                now,
            })
            .await?;
        let st = &template.steps[s.position as usize];
        if effect == LimitEffect::Exhaust && st.tolerates_failure() {
            // Out of attempts under continue_on_failure: finished, as if its last attempt
            // had been its last.
            cx.count_finished(task_id, st);
            cx.work = true;
            cx.settle(task_id).await?;
        } else if effect != LimitEffect::Keep {
            let d_blocked = if effect == LimitEffect::Exhaust {
                1
            } else {
                -1
            };
            cx.adjust(task_id, 0, d_blocked);
            cx.work |= effect == LimitEffect::Unexhaust;
            cx.settle(task_id).await?;
        }
        cx.finish(None).await.map(drop)
    }

    /// Cancels one step that has not run to the end (`pending`, or `error` between attempts),
    /// with the steps that depend on it, directly or not: none of them will run. As in the
    /// original engine, a cancelled step counts as finished for its task, which completes once
    /// its other steps do. A running step cannot be cancelled (cancel its task: the attempt
    /// finishes and nothing further starts).
    pub async fn cancel_step(&self, task_id: i64, step_name: &str) -> Result<()> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        cx.require_active(&task, "cancel a step of")?;
        let s = cx.step_named(task_id, step_name).await?;
        if !matches!(s.state, StepState::Pending | StepState::Error) {
            return Err(Error::Conflict(format!(
                "step {step_name:?} of task {task_id} is {}; only a pending or failed step can be cancelled{}",
                s.state,
                if s.state == StepState::InProgress {
                    " (to stop a task while a step runs, cancel the task)"
                } else {
                    ""
                }
            )));
        }
        let template = cx.template(task.named_task_id).await?;
        if tolerated(&template, &s) {
            return Err(final_failure(task_id, &s, "cancel"));
        }
        let mut doomed = vec![false; template.steps.len()];
        let mut stack = vec![s.position as usize];
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut doomed[i], true) {
                stack.extend(template.steps[i].children.iter().copied());
            }
        }
        let steps = cx.task_steps(task_id).await?;
        let mut updates = Vec::new();
        for r in &steps {
            // A fan-out's instances share a position: the others are siblings, not dependents.
            let sibling = r.position == s.position && r.step_id != s.step_id;
            if !doomed[r.position as usize]
                || sibling
                || !matches!(r.state, StepState::Pending | StepState::Error)
                || tolerated(&template, r)
            {
                continue;
            }
            cx.adjust(task_id, 1, if exhausted(r) { -1 } else { 0 });
            let meta = if r.step_id == s.step_id {
                json!({"reason": "cancelled_by_operator"})
            } else {
                json!({"reason": "depends_on_cancelled_step", "cancelled_step": s.name})
            };
            updates.push(StepChange {
                update: StepUpdate {
                    expect_attempts: Some(r.attempts),
                    ..StepUpdate::new(r.step_id, r.version, r.state, StepState::Cancelled)
                },
                name: r.name.clone(),
                attempt: r.attempts,
                meta,
            });
        }
        cx.update_steps(task_id, updates)?;
        if template.has_run_time_shape() {
            // Steps not created yet below a cancelled one never will be.
            cx.grow(task_id, &template).await?;
        }
        cx.settle(task_id).await?;
        cx.finish(None).await.map(drop)
    }
}
