//! The bookkeeping of one write transaction: the task rows it locked (with counters kept in
//! memory and flushed once), the transitions to insert, and the events to announce after commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::claim::Stored;
use super::{decide, Engine};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::state::{StepState, TaskState};
use crate::store::{
    ClaimSpec, ClaimedStep, PlanOutcome, StepRow, StepUpdate, StoreTx, TaskRow, TaskUpdate,
    TransitionRow,
};
use crate::template::TaskTemplate;

/// A transition to record and announce.
struct Change {
    row: TransitionRow,
    /// The store already wrote the row (a claim's): only announce it.
    stored: bool,
    event: &'static str,
    step_name: Option<String>,
    attempt: Option<u32>,
    metadata: Value,
}

/// The work of one write transaction: in-memory copies of the task rows it touched, the
/// transitions to insert, and what to announce after commit.
pub(super) struct TxCx<'e> {
    pub(super) engine: &'e Engine,
    pub(super) tx: Box<dyn StoreTx>,
    pub(super) now: i64,
    pub(super) tasks: HashMap<i64, TaskRow>,
    /// `steps_blocked` of each task when this transaction first saw it.
    pub(super) blocked_before: HashMap<i64, i64>,
    pub(super) pending: HashMap<i64, TaskUpdate>,
    changes: Vec<Change>,
    pub(super) work: bool,
    /// A task reached a terminal state ([`TaskState::is_terminal`]): wake its waiters.
    pub(super) tasks_changed: bool,
    /// Steps claimed in this transaction (remembered for planning after commit).
    pub(super) claimed: Vec<ClaimedStep>,
    /// The claim took every claimable step and nothing became claimable after it
    /// ([`decide::claim_took_everything`]): steps made ready need not be announced.
    pub(super) drained: bool,
    /// Handlers of the steps this transaction may have made claimable (children of completed
    /// steps, steps given a time to run again).
    ready_handlers: Vec<String>,
}

impl<'e> TxCx<'e> {
    pub(super) async fn begin(engine: &'e Engine, now: i64) -> Result<TxCx<'e>> {
        Self::begin_with(engine, now, true).await
    }

    pub(super) async fn begin_with(
        engine: &'e Engine,
        now: i64,
        durable: bool,
    ) -> Result<TxCx<'e>> {
        let tx = engine.inner.store.begin(durable).await?;
        Ok(Self::with_tx(engine, tx, now))
    }

    /// A transaction context over `tx` (a database transaction, or a [`super::plan::PlanTx`]).
    pub(super) fn with_tx(engine: &'e Engine, tx: Box<dyn StoreTx>, now: i64) -> TxCx<'e> {
        TxCx {
            engine,
            tx,
            now,
            tasks: HashMap::new(),
            blocked_before: HashMap::new(),
            pending: HashMap::new(),
            changes: Vec::new(),
            work: false,
            tasks_changed: false,
            claimed: Vec::new(),
            drained: false,
            ready_handlers: Vec::new(),
        }
    }

    /// Notes that a step of `handler` may have become claimable.
    pub(super) fn made_ready(&mut self, handler: &str) {
        if !self.ready_handlers.iter().any(|h| h == handler) {
            self.ready_handlers.push(handler.to_owned());
        }
    }

    /// Handlers of the steps this transaction may have made claimable.
    pub(super) fn ready_handlers(&self) -> Vec<&str> {
        self.ready_handlers.iter().map(String::as_str).collect()
    }

    /// True when a claim for `handlers` (None: any) could take every step this transaction
    /// made claimable, i.e. none is for a handler it does not ask for.
    pub(super) fn claim_covers_ready(&self, handlers: Option<&[String]>) -> bool {
        handlers.is_none_or(|hs| self.ready_handlers.iter().all(|h| hs.contains(h)))
    }

    pub(super) async fn template(&mut self, id: i64) -> Result<Arc<TaskTemplate>> {
        self.engine.template_in_tx(&mut *self.tx, id).await
    }

    pub(super) async fn task(&mut self, task_id: i64) -> Result<TaskRow> {
        self.load_tasks(&[task_id]).await?;
        self.tasks
            .get(&task_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))
    }

    pub(super) async fn load_tasks(&mut self, ids: &[i64]) -> Result<()> {
        let missing: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !self.tasks.contains_key(id))
            .collect();
        if !missing.is_empty() {
            for row in self.tx.lock_tasks(&missing).await? {
                self.blocked_before.insert(row.task_id, row.steps_blocked);
                self.tasks.insert(row.task_id, row);
            }
        }
        Ok(())
    }

    pub(super) fn require_active(&self, task: &TaskRow, what: &str) -> Result<()> {
        if matches!(
            task.state,
            TaskState::Pending | TaskState::InProgress | TaskState::Error
        ) {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "cannot {what} task {}: it is {}",
                task.task_id, task.state
            )))
        }
    }

    pub(super) async fn step_named(&mut self, task_id: i64, name: &str) -> Result<StepRow> {
        let steps = self.tx.task_steps(task_id).await?;
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        steps.into_iter().find(|s| s.name == name).ok_or_else(|| {
            Error::NotFound(format!(
                "task {task_id} has no step named {name:?} (steps: {})",
                names.join(", ")
            ))
        })
    }

    /// Changes a task's counters, in memory now and in the database at the next flush.
    pub(super) fn adjust(&mut self, task_id: i64, d_done: i64, d_blocked: i64) {
        let row = self.tasks.get_mut(&task_id).expect("task loaded");
        row.steps_done += d_done;
        row.steps_blocked += d_blocked;
        let u = self.pending.entry(task_id).or_insert_with(|| TaskUpdate {
            task_id,
            ..Default::default()
        });
        u.d_done += d_done;
        u.d_blocked += d_blocked;
    }

    pub(super) fn push_change(
        &mut self,
        task_id: i64,
        step: Option<(i64, &str, u32)>,
        from: Option<&'static str>,
        to: &'static str,
        event: &'static str,
        sort_key: i64,
        metadata: Value,
    ) {
        self.changes.push(Change {
            stored: false,
            row: TransitionRow {
                task_id,
                step_id: step.map(|s| s.0),
                from_state: from,
                to_state: to,
                metadata: serde_json::to_string(&metadata).expect("json"),
                sort_key,
                created_at: self.now,
            },
            event,
            step_name: step.map(|s| s.1.to_owned()),
            attempt: step.map(|s| s.2),
            metadata,
        });
    }

    /// Records a step transition `from -> to`, its event taken from the state table.
    pub(super) fn push_step_change(
        &mut self,
        task_id: i64,
        step: Option<(i64, &str, u32)>,
        from: StepState,
        to: StepState,
        sort_key: i64,
        metadata: Value,
    ) -> Result<()> {
        let event =
            StepState::event(Some(from), to).ok_or_else(|| Error::IllegalStepTransition {
                task_id,
                step: step.map(|s| s.1.to_owned()).unwrap_or_default(),
                from,
                to,
            })?;
        self.push_change(
            task_id,
            step,
            Some(from.as_str()),
            to.as_str(),
            event,
            sort_key,
            metadata,
        );
        Ok(())
    }

    /// Records a step's first transition (`None -> to`), its event taken from the state table.
    pub(super) fn push_new_step(
        &mut self,
        task_id: i64,
        step: (i64, &str, u32),
        to: StepState,
        sort_key: i64,
        metadata: Value,
    ) {
        let event = StepState::event(None, to).expect("every initial step state has an event");
        self.push_change(
            task_id,
            Some(step),
            None,
            to.as_str(),
            event,
            sort_key,
            metadata,
        );
    }

    /// Applies conditional step updates of one task and records their transitions
    /// (`expect_state -> state`). Returns the ids applied.
    pub(super) async fn apply_step_updates(
        &mut self,
        task_id: i64,
        updates: Vec<(StepUpdate, String, i64, Value)>,
    ) -> Result<HashSet<i64>> {
        let rows: Vec<StepUpdate> = updates.iter().map(|u| u.0.clone()).collect();
        let applied: HashMap<i64, i64> = self
            .tx
            .update_steps(&rows, self.now)
            .await?
            .into_iter()
            .collect();
        for (u, name, attempt, meta) in updates {
            let Some(&version) = applied.get(&u.step_id) else {
                return Err(Error::Conflict(format!(
                    "step {name:?} of task {task_id} changed while the operation ran; try again"
                )));
            };
            let event = StepState::event(Some(u.expect_state), u.state).ok_or(
                Error::IllegalStepTransition {
                    task_id,
                    step: name.clone(),
                    from: u.expect_state,
                    to: u.state,
                },
            )?;
            self.push_change(
                task_id,
                Some((u.step_id, &name, attempt as u32)),
                Some(u.expect_state.as_str()),
                u.state.as_str(),
                event,
                version,
                meta,
            );
        }
        Ok(applied.into_keys().collect())
    }

    /// Queues task state changes along `path` (each checked against the table).
    pub(super) fn set_task_states(
        &mut self,
        task_id: i64,
        path: &[TaskState],
        metadata: Value,
    ) -> Result<()> {
        let row = self.tasks.get_mut(&task_id).expect("task loaded");
        let mut from = row.state;
        let u = self.pending.entry(task_id).or_insert_with(|| TaskUpdate {
            task_id,
            ..Default::default()
        });
        let mut changes = Vec::new();
        for &to in path {
            let event = TaskState::event(Some(from), to).ok_or(Error::IllegalTaskTransition {
                task_id,
                from,
                to,
            })?;
            row.version += 1;
            u.transitions += 1;
            u.state = Some(to);
            if to.is_terminal() {
                u.completed_at = Some(self.now);
            }
            changes.push((from, to, event, row.version));
            from = to;
        }
        row.state = from;
        for (f, t, e, v) in changes {
            self.push_change(
                task_id,
                None,
                Some(f.as_str()),
                t.as_str(),
                e,
                v,
                metadata.clone(),
            );
        }
        self.tasks_changed |= from.is_terminal();
        Ok(())
    }

    /// Transitions the store already wrote (a claim's), to announce after commit.
    pub(super) fn announce_stored(&mut self, rows: Vec<Stored>) {
        self.changes.extend(rows.into_iter().map(stored_change));
    }

    /// Parks, flushes the task counters and writes the transition rows (the last writes).
    async fn write_last(&mut self) -> Result<()> {
        self.repark().await?;
        let ups: Vec<TaskUpdate> = self.pending.drain().map(|(_, u)| u).collect();
        let rows: Vec<TransitionRow> = self
            .changes
            .iter()
            .filter(|c| !c.stored)
            .map(|c| c.row.clone())
            .collect();
        self.tx.write_final(&ups, &rows, self.now).await
    }

    /// Flushes, writes the transition rows, commits, then announces.
    pub(super) async fn finish(mut self) -> Result<()> {
        self.write_last().await?;
        let TxCx {
            engine,
            tx,
            tasks,
            changes,
            claimed,
            work,
            tasks_changed,
            drained,
            ..
        } = self;
        let work = work && !drained;
        tx.commit(work, tasks_changed).await?;
        remember(engine, &tasks, &changes, &claimed, false);
        announce(engine, changes, work, tasks_changed);
        Ok(())
    }

    /// For a transaction over a [`super::plan::PlanTx`]: records the last writes, then has the
    /// store execute the plan and claim (`claim`) in one statement, then announces. Returns
    /// the claimed steps. [`Error::PlanStale`] when the plan no longer applies (nothing was
    /// written; the engine forgets the tasks it assumed).
    pub(super) async fn execute_planned(
        mut self,
        claim: Option<&ClaimSpec<'_>>,
    ) -> Result<PlanOutcome> {
        self.write_last().await?;
        let covers = claim.is_some_and(|c| self.claim_covers_ready(c.handlers));
        let TxCx {
            engine,
            tx,
            mut tasks,
            mut changes,
            mut work,
            tasks_changed,
            claimed: born,
            ..
        } = self;
        let mut plan = tx
            .into_plan()
            .ok_or_else(|| Error::Internal("execute_planned on a database transaction".into()))?;
        plan.work = work;
        plan.task_changed = tasks_changed;
        plan.quiet_if_claim_short = covers;
        plan.watched = engine.watches().finishing(&plan.task_updates);
        let inner = &engine.inner;
        let mut out = match inner.store.execute_plan(&plan, claim).await {
            Err(Error::PlanStale) => {
                inner
                    .known
                    .lock()
                    .unwrap()
                    .forget(plan.guards.iter().map(|g| g.task_id));
                return Err(Error::PlanStale);
            }
            other => other?,
        };
        work |= out.ready > 0;
        // (A quiet claim may not have run: then a short answer says nothing.)
        if let Some(c) = claim.filter(|_| out.claim_ran) {
            work &= !decide::claim_took_everything(covers, c.max as usize, out.claimed.len());
        }
        if !out.task_ids.is_empty() {
            // New rows got their ids: replace the stand-ins.
            for c in &mut changes {
                c.row.task_id = out.task_id(c.row.task_id);
                c.row.step_id = c.row.step_id.map(|s| out.step_id(s));
            }
            tasks = tasks
                .into_values()
                .map(|mut t| {
                    t.task_id = out.task_id(t.task_id);
                    (t.task_id, t)
                })
                .collect();
        }
        // Steps the creation inserted already claimed: with their ids, and their task as the
        // statement left it.
        for mut s in born {
            s.task_id = out.task_id(s.task_id);
            s.step_id = out.step_id(s.step_id);
            let t = &tasks[&s.task_id];
            s.task_state = t.state;
            s.task_version = t.version;
            s.steps_done = t.steps_done;
            s.steps_blocked = t.steps_blocked;
            out.claimed.push(s);
        }
        // The statement claimed after its writes: the claim saw the task rows last.
        remember(engine, &tasks, &changes, &out.claimed, true);
        engine.watches().file(std::mem::take(&mut out.finished));
        announce(engine, changes, work, tasks_changed);
        Ok(out)
    }
}

/// What a committed transaction leaves known for planning later cycles: its task rows as it
/// left them (it held their locks), its reported steps gone, the steps it claimed. A claim
/// made before the transaction's last writes (`claim_last` false) saw the rows it held
/// before they were written; one made after them (a planned statement's) saw them last.
fn remember(
    engine: &Engine,
    tasks: &HashMap<i64, TaskRow>,
    changes: &[Change],
    claimed: &[ClaimedStep],
    claim_last: bool,
) {
    if !engine.inner.store.executes_plans() {
        return;
    }
    let reported = changes
        .iter()
        .filter(|c| !c.stored)
        .filter_map(|c| c.row.step_id);
    let mut known = engine.inner.known.lock().unwrap();
    known.committed(tasks.values(), reported);
    if claim_last {
        known.claimed(claimed, &HashMap::new());
    } else {
        known.claimed(claimed, tasks);
    }
}

fn stored_change((row, event, step_name, attempt, metadata): Stored) -> Change {
    Change {
        stored: true,
        row,
        event,
        step_name,
        attempt,
        metadata,
    }
}

/// Announces transitions a committed statement wrote (a planned cycle's claim).
pub(super) fn announce_stored(engine: &Engine, rows: Vec<Stored>) {
    if !rows.is_empty() {
        announce(
            engine,
            rows.into_iter().map(stored_change).collect(),
            false,
            false,
        );
    }
}

/// Announces a committed transaction's transitions and wakes waiters.
fn announce(engine: &Engine, changes: Vec<Change>, work: bool, tasks_changed: bool) {
    let inner = &engine.inner;
    if inner.events.receiver_count() > 0 {
        for c in changes {
            let _ = inner.events.send(Arc::new(Event {
                name: std::borrow::Cow::Borrowed(c.event),
                task_id: c.row.task_id,
                step_id: c.row.step_id,
                step_name: c.step_name,
                from_state: c.row.from_state,
                to_state: Some(c.row.to_state),
                attempt: c.attempt,
                metadata: c.metadata,
                at_ms: c.row.created_at,
            }));
        }
    }
    if work {
        inner.work.notify_waiters();
    }
    if tasks_changed {
        inner.tasks_changed.notify_waiters();
    }
}
