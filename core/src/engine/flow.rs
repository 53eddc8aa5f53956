//! Steering tasks as a whole (issue 27): pause and resume a task or every task of a template,
//! rerun a finished task from one of its steps, and retry or cancel many tasks at once.
//!
//! A paused task keeps its state; its claimable steps are parked as a blocked task's are
//! ([`decide::holds_steps`]), so a claim never sees them and no claim pays for the rule; the
//! steps running when it was paused finish and report as usual. Pausing and resuming write a
//! transition row that changes no state (`task.paused`, `task.resumed`) and raise the task's
//! version, so a plan another process made from the task as it was fails its guard and is
//! decided again from the locked row.

use serde_json::json;

use super::decide;
use super::tx::{StepChange, TxCx};
use super::Engine;
use crate::error::{Error, Result};
use crate::state::{StepState, TaskState};
use crate::store::{Decrement, StepUpdate, TaskDetailsUpdate, TaskFilter};

/// At most this many tasks are read per page while a bulk action gathers its tasks.
const PAGE: i64 = 1_000;

/// Which tasks a bulk action ([`Engine::retry_tasks`], [`Engine::cancel_tasks`]) or
/// [`Engine::pause_template`] changes: every given key must match (`since`: created at or
/// after, epoch ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSelection {
    pub status: Option<TaskState>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub since: Option<i64>,
}

impl Engine {
    /// Pauses a task: no new step of it starts until [`Engine::resume_task`]; steps running
    /// now finish (their results are saved, their children wait). Pausing a paused task
    /// changes nothing. A finished task (`complete`, `cancelled`, `resolved_manually`) cannot
    /// be paused. Returns whether the task changed.
    pub async fn pause_task(&self, task_id: i64) -> Result<bool> {
        self.set_paused(task_id, true).await
    }

    /// Resumes a paused task: its claimable steps are claimable again (unless a step out of
    /// attempts still blocks it). Resuming a task that is not paused changes nothing.
    /// Returns whether the task changed.
    pub async fn resume_task(&self, task_id: i64) -> Result<bool> {
        self.set_paused(task_id, false).await
    }

    async fn set_paused(&self, task_id: i64, paused: bool) -> Result<bool> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        let changed = cx.set_paused(task_id, paused).await?;
        cx.finish(None).await?;
        Ok(changed)
    }

    /// Pauses every unfinished task of a template (any version) that is not paused yet;
    /// returns how many. Tasks created afterwards are not paused.
    pub async fn pause_template(&self, name: &str, namespace: &str) -> Result<u64> {
        self.template_pause(name, namespace, true).await
    }

    /// Resumes every paused task of a template (any version); returns how many.
    pub async fn resume_template(&self, name: &str, namespace: &str) -> Result<u64> {
        self.template_pause(name, namespace, false).await
    }

    async fn template_pause(&self, name: &str, namespace: &str, paused: bool) -> Result<u64> {
        let known = self.inner.store.templates().await?;
        if !known
            .iter()
            .any(|t| t.name == name && t.namespace == namespace)
        {
            return Err(Error::NotFound(format!(
                "no template named {name:?} in namespace {namespace:?}"
            )));
        }
        let sel = TaskSelection {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..TaskSelection::default()
        };
        let mut n = 0;
        for task_id in self.select_tasks(&sel, |s| !s.is_finished()).await? {
            n += u64::from(
                self.each(self.set_paused(task_id, paused).await)?
                    .unwrap_or(false),
            );
        }
        Ok(n)
    }

    /// Reruns a task from `step`: that step and every step below it go back to `pending`
    /// with fresh attempts, their results and errors cleared (the transitions keep the
    /// history and say why: `reason: rerun_from`), and the task goes back to work. For a
    /// `complete`, `resolved_manually` or `error` task (one still running has steps in
    /// flight; a cancelled one was stopped on purpose), and not while a step to rerun is
    /// waiting. Returns how many steps were put back. Templates with decisions or fan-outs
    /// (steps made at run time) are refused.
    pub async fn rerun_from(&self, task_id: i64, step: &str) -> Result<usize> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        let n = cx.rerun_from(task_id, step).await?;
        cx.finish(None).await?;
        Ok(n)
    }

    /// Retries every step out of attempts of a task in `error` (each gets a fresh set of
    /// attempts, as [`Engine::retry_step`] gives one) and puts the task back to work; returns
    /// how many steps. A task that is not in `error` is refused.
    pub async fn retry_task(&self, task_id: i64) -> Result<usize> {
        let task = self.get_task_state(task_id).await?;
        if task != TaskState::Error {
            return Err(Error::Conflict(format!(
                "cannot retry task {task_id}: it is {task}; only a task in error can be retried"
            )));
        }
        let failed: Vec<String> = self
            .inner
            .store
            .steps(task_id)
            .await?
            .into_iter()
            .filter(|s| decide::is_exhausted(s.state, s.ready_at, s.parked_ready_at))
            .map(|s| s.name)
            .collect();
        let mut n = 0;
        for name in failed {
            // A tolerated fan-out failure is final: retry_step refuses it, and it is skipped.
            if self.each(self.retry_step(task_id, &name).await)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Retries every task the selection matches that is in `error` ([`Engine::retry_task`]);
    /// returns how many tasks were put back to work. Tasks that changed meanwhile are skipped.
    pub async fn retry_tasks(&self, sel: &TaskSelection) -> Result<u64> {
        if sel.status.is_some_and(|s| s != TaskState::Error) {
            return Err(Error::Validation(format!(
                "retry_tasks: status must be error (only failed tasks can be retried), got {}",
                sel.status.unwrap()
            )));
        }
        let mut n = 0;
        for task_id in self.select_tasks(sel, |s| s == TaskState::Error).await? {
            n += u64::from(
                self.each(self.retry_task(task_id).await)?
                    .is_some_and(|k| k > 0),
            );
        }
        Ok(n)
    }

    /// Cancels every unfinished task the selection matches ([`Engine::cancel_task`]: with
    /// their child tasks); returns how many. Tasks that finished meanwhile are skipped.
    pub async fn cancel_tasks(&self, sel: &TaskSelection) -> Result<u64> {
        let mut n = 0;
        for task_id in self.select_tasks(sel, |s| !s.is_finished()).await? {
            n += u64::from(self.each(self.cancel_task(task_id).await)?.is_some());
        }
        Ok(n)
    }

    /// The ids of the tasks the selection matches whose state passes `keep`, oldest first,
    /// gathered before anything changes (so a page never shifts under the action).
    async fn select_tasks(
        &self,
        sel: &TaskSelection,
        keep: impl Fn(TaskState) -> bool,
    ) -> Result<Vec<i64>> {
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .list_tasks(&TaskFilter {
                    state: sel.status,
                    name: sel.name.clone(),
                    namespace: sel.namespace.clone(),
                    created_from: sel.since,
                    oldest_first: true,
                    limit: Some(PAGE),
                    offset: Some(offset),
                    ..TaskFilter::default()
                })
                .await?;
            let len = page.len() as i64;
            ids.extend(page.into_iter().filter(|t| keep(t.status)).map(|t| t.id));
            if len < PAGE {
                return Ok(ids);
            }
            offset += PAGE;
        }
    }

    /// One task's part of a bulk action: a task another actor changed meanwhile (now
    /// finished, no longer failed, gone) is skipped (`None`); any other error stops it.
    fn each<T>(&self, r: Result<T>) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(Error::Conflict(_) | Error::NotFound(_) | Error::IllegalTaskTransition { .. }) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl TxCx<'_> {
    /// Sets the task's pause flag; its steps are parked or unparked with the transaction's
    /// last writes ([`decide::holds_steps`]). Returns whether it changed.
    async fn set_paused(&mut self, task_id: i64, paused: bool) -> Result<bool> {
        let task = self.task(task_id).await?;
        if task.paused == paused {
            return Ok(false);
        }
        if paused && task.state.is_finished() {
            return Err(Error::Conflict(format!(
                "cannot pause task {task_id}: it is already {}",
                task.state
            )));
        }
        let now = self.now;
        self.db()?
            .update_task_details(&TaskDetailsUpdate {
                task_id,
                reason: None,
                tags: None,
                paused: Some(paused),
                now,
            })
            .await?;
        self.tasks.get_mut(&task_id).expect("task loaded").paused = paused;
        let (event, reason) = if paused {
            ("task.paused", "paused_by_operator")
        } else {
            self.work = true;
            ("task.resumed", "resumed_by_operator")
        };
        self.note_task(task_id, event, json!({ "reason": reason }));
        Ok(true)
    }

    /// Puts `step` and the steps below it back to pending ([`Engine::rerun_from`]).
    async fn rerun_from(&mut self, task_id: i64, step: &str) -> Result<usize> {
        let task = self.task(task_id).await?;
        if !matches!(
            task.state,
            TaskState::Complete | TaskState::ResolvedManually | TaskState::Error
        ) {
            return Err(Error::Conflict(format!(
                "cannot rerun task {task_id} from step {step:?}: it is {}; only a complete, resolved or failed task can be rerun",
                task.state
            )));
        }
        let template = self.template(task.named_task_id).await?;
        if template.has_run_time_shape() {
            return Err(Error::Conflict(format!(
                "cannot rerun task {task_id}: its template {}/{} has decisions or fan-outs, whose steps are made at run time; rerunning those is not supported yet (retry its failed steps instead)",
                template.namespace, template.name
            )));
        }
        let from = self.step_named(task_id, step).await?.position as usize;
        let steps = self.task_steps(task_id).await?;
        let rerun = decide::rerun_positions(&template, from);
        let states: Vec<StepState> = steps.iter().map(|s| s.state).collect();
        let waits = decide::rerun_waits(&template, &rerun, &states)
            .map_err(|m| Error::Conflict(format!("cannot rerun task {task_id}: {m}")))?;
        let now = self.now;
        for (&p, &wait_for) in rerun.iter().zip(&waits) {
            let s = &steps[p];
            match s.state {
                StepState::Complete | StepState::ResolvedManually | StepState::Cancelled => {
                    self.adjust(task_id, -1, 0)
                }
                _ if decide::is_exhausted(s.state, s.ready_at, s.parked_ready_at) => {
                    self.adjust(task_id, 0, -1)
                }
                _ => {}
            }
            if template.steps[p].max_reschedules.is_some() {
                self.db()?.reset_reschedules(s.step_id).await?;
            }
            let update = StepUpdate {
                expect_attempts: Some(s.attempts),
                attempts: Some(0),
                results: Some(None),
                error: Some(None),
                ready_at: (wait_for == 0).then_some(now),
                ..StepUpdate::new(s.step_id, s.version, s.state, StepState::Pending)
            };
            if s.state == StepState::Pending {
                // Not started yet: no transition, only what it now waits for.
                self.record_update(StepUpdate {
                    transitions: 0,
                    ..update
                });
            } else {
                self.update_steps(
                    task_id,
                    vec![StepChange {
                        update,
                        name: s.name.clone(),
                        attempt: 0,
                        meta: json!({"reason": "rerun_from", "from_step": step,
                                     "previous_attempts": s.attempts}),
                    }],
                )?;
            }
            let by = s.remaining_parents - wait_for;
            if by != 0 {
                self.decrement([Decrement {
                    task_id,
                    position: p as i32,
                    by,
                }]);
            }
        }
        let row = &self.tasks[&task_id];
        if row.state != TaskState::Error || row.steps_blocked <= 0 {
            let meta = json!({"reason": "rerun_from", "step": step});
            self.set_task_states(task_id, &[TaskState::Pending], meta)?;
        }
        self.work = true;
        Ok(rerun.len())
    }
}
