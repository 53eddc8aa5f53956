//! The bookkeeping of one write transaction ([`TxCx`]): what it read (the task rows it holds,
//! with their counters kept in memory), what it decided (the row changes, recorded into a
//! [`Plan`]), and what to announce after commit.
//!
//! Every write goes one way: recorded into the plan and applied by the store in one call at
//! [`TxCx::finish`], with the claim last. What differs is where the reads come from
//! ([`Source`]): a database transaction that locks what it reads, or the rows this engine
//! already knows ([`Known`]), from which a worker cycle is planned without any read; the
//! store then checks what was assumed (the plan's guards). A read the known rows cannot answer
//! stops planning with [`Error::PlanStale`] before any I/O, and the caller runs the same
//! decisions again on a database transaction.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::plan::Known;
use super::{decide, Engine};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::state::{StepState, TaskState};
use crate::store::{
    ClaimSpec, ClaimedStep, Decrement, ExpiredLease, NewStep, NewTask, Notify, Plan, PlanOutcome,
    StepLock, StepRow, StepUpdate, StoreTx, TaskRow, TaskUpdate, TransitionRow,
};
use crate::template::TaskTemplate;

/// Where a transaction's reads come from.
pub(super) enum Source {
    /// A database transaction: reads lock what they read; a read that must see the
    /// transaction's own writes applies them first ([`TxCx::flush`]).
    Db(Box<dyn StoreTx>),
    /// The rows this engine saw at its last claims and commits ([`Known`]); the plan is
    /// executed by the store on its own, guarded.
    Known(Arc<Mutex<Known>>),
}

/// A transition to record and announce.
pub(super) struct Change {
    pub row: TransitionRow,
    pub event: &'static str,
    pub step_name: Option<String>,
    pub attempt: Option<u32>,
    pub metadata: Value,
}

/// A step change an operator or a report decided: the update, and what its transition says.
pub(super) struct StepChange {
    pub update: StepUpdate,
    pub name: String,
    pub attempt: i64,
    pub meta: Value,
}

/// The work of one write transaction (see the module docs).
pub(super) struct TxCx<'e> {
    pub(super) engine: &'e Engine,
    src: Source,
    pub(super) now: i64,
    /// The task rows this transaction holds, as its decisions have left them.
    pub(super) tasks: HashMap<i64, TaskRow>,
    /// Whether each task held its steps back ([`decide::holds_steps`]) when this
    /// transaction first saw it.
    pub(super) held_before: HashMap<i64, bool>,
    /// Counter and state changes of the held tasks, recorded at the end.
    pending: HashMap<i64, TaskUpdate>,
    changes: Vec<Change>,
    /// The row changes recorded and not yet applied.
    plan: Plan,
    /// Steps this transaction changes (a second report for one of them is stale).
    updated: HashSet<i64>,
    pub(super) work: bool,
    /// A task reached a terminal state ([`TaskState::is_terminal`]): wake its waiters.
    pub(super) tasks_changed: bool,
    /// Handlers of the steps this transaction may have made claimable (children of completed
    /// steps, steps given a time to run again, new ready steps).
    ready_handlers: Vec<String>,
    /// Steps of handlers it does not know may have become claimable (unparked ones).
    ready_unknown: bool,
    /// Idempotency keys of the tasks it creates.
    keys: HashMap<String, i64>,
    /// The items of the fan-outs completed in this transaction, by (task, batchable step's
    /// position), for [`TxCx::grow`] to create their instances.
    pub(super) fan_outs: HashMap<(i64, usize), Vec<Value>>,
    /// Child tasks this transaction creates (stand-in id, template, parent task), announced
    /// after commit.
    pub(super) children_created: Vec<(i64, Arc<TaskTemplate>, Option<i64>)>,
    /// New tasks' deadlines (stand-in id, deadline_at), written after the plan.
    pub(super) deadlines: Vec<(i64, i64)>,
}

impl<'e> TxCx<'e> {
    /// A database transaction whose commit reaches the disk.
    pub(super) async fn begin(engine: &'e Engine, now: i64) -> Result<TxCx<'e>> {
        Self::begin_with(engine, now, true).await
    }

    /// A database transaction; `durable = false` for one whose loss in a crash is harmless (a
    /// claim alone).
    pub(super) async fn begin_with(
        engine: &'e Engine,
        now: i64,
        durable: bool,
    ) -> Result<TxCx<'e>> {
        let tx = engine.inner.store.begin(durable).await?;
        Ok(Self::new(engine, Source::Db(tx), now, durable))
    }

    /// A transaction planned from the rows this engine knows.
    pub(super) fn planning(engine: &'e Engine, now: i64, durable: bool) -> TxCx<'e> {
        Self::new(
            engine,
            Source::Known(engine.inner.known.clone()),
            now,
            durable,
        )
    }

    fn new(engine: &'e Engine, src: Source, now: i64, durable: bool) -> TxCx<'e> {
        TxCx {
            engine,
            src,
            now,
            tasks: HashMap::new(),
            held_before: HashMap::new(),
            pending: HashMap::new(),
            changes: Vec::new(),
            plan: Plan::new(now, durable),
            updated: HashSet::new(),
            work: false,
            tasks_changed: false,
            ready_handlers: Vec::new(),
            ready_unknown: false,
            keys: HashMap::new(),
            fan_outs: HashMap::new(),
            children_created: Vec::new(),
            deadlines: Vec::new(),
        }
    }

    /// The database transaction; [`Error::PlanStale`] when planning (the read or write needs
    /// the database).
    pub(super) fn db(&mut self) -> Result<&mut dyn StoreTx> {
        match &mut self.src {
            Source::Db(tx) => Ok(&mut **tx),
            Source::Known(_) => Err(Error::PlanStale),
        }
    }

    /// The database transaction, with the writes recorded so far applied (for a read that
    /// must see them).
    async fn db_flushed(&mut self) -> Result<&mut dyn StoreTx> {
        self.flush().await?;
        self.db()
    }

    /// Applies the writes recorded so far (a database transaction only; no claim).
    async fn flush(&mut self) -> Result<()> {
        let Source::Db(tx) = &mut self.src else {
            return Err(Error::PlanStale);
        };
        if self.plan.writes_nothing() {
            return Ok(());
        }
        let fresh = Plan::new(self.now, self.plan.durable);
        let plan = std::mem::replace(&mut self.plan, fresh);
        let out = tx.apply(&plan, None).await.map_err(changed_meanwhile)?;
        self.work |= out.ready > 0;
        self.remap(&out);
        Ok(())
    }

    /// Replaces the stand-in ids of new rows by the ids the store gave them.
    fn remap(&mut self, out: &PlanOutcome) {
        if out.task_ids.is_empty() && out.step_ids.is_empty() {
            return;
        }
        for c in &mut self.changes {
            c.row.task_id = out.task_id(c.row.task_id);
            c.row.step_id = c.row.step_id.map(|s| out.step_id(s));
        }
        self.tasks = std::mem::take(&mut self.tasks)
            .into_values()
            .map(|mut t| {
                t.task_id = out.task_id(t.task_id);
                (t.task_id, t)
            })
            .collect();
        self.held_before = std::mem::take(&mut self.held_before)
            .into_iter()
            .map(|(k, v)| (out.task_id(k), v))
            .collect();
        self.pending = std::mem::take(&mut self.pending)
            .into_values()
            .map(|mut u| {
                u.task_id = out.task_id(u.task_id);
                (u.task_id, u)
            })
            .collect();
        for id in self.keys.values_mut() {
            *id = out.task_id(*id);
        }
        for c in &mut self.children_created {
            c.0 = out.task_id(c.0);
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
    fn claim_covers_ready(&self, handlers: Option<&[String]>) -> bool {
        !self.ready_unknown
            && handlers.is_none_or(|hs| self.ready_handlers.iter().all(|h| hs.contains(h)))
    }

    pub(super) async fn template(&mut self, id: i64) -> Result<Arc<TaskTemplate>> {
        if let Some(t) = self.engine.template_cached(id) {
            return Ok(t);
        }
        let engine = self.engine;
        engine.template_in_tx(self.db()?, id).await
    }

    pub(super) async fn task(&mut self, task_id: i64) -> Result<TaskRow> {
        self.load_tasks(&[task_id]).await?;
        self.tasks
            .get(&task_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))
    }

    /// Holds these tasks' rows (locked, or known and guarded).
    pub(super) async fn load_tasks(&mut self, ids: &[i64]) -> Result<()> {
        let missing: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !self.tasks.contains_key(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let rows = match &mut self.src {
            Source::Db(tx) => tx.lock_tasks(&missing).await?,
            Source::Known(known) => {
                let rows = known.lock().unwrap().tasks(&missing)?;
                self.plan.guards.extend(rows.iter().cloned());
                rows
            }
        };
        for row in rows {
            self.held_before.insert(
                row.task_id,
                decide::holds_steps(row.steps_blocked, row.paused),
            );
            self.tasks.insert(row.task_id, row);
        }
        Ok(())
    }

    /// What reports need of their steps (`step id -> lock`), with the steps' retry limits
    /// when `limits`. Known rows answer for running steps of this engine's claims (assumed at
    /// the attempt reported, guarded by the version), without their limits.
    pub(super) async fn step_locks(
        &mut self,
        keys: &[crate::protocol::JobKey],
        limits: bool,
    ) -> Result<HashMap<i64, StepLock>> {
        let ids: Vec<i64> = keys.iter().map(|k| k.step_id).collect();
        match &self.src {
            Source::Known(known) => {
                if limits {
                    return Err(Error::PlanStale);
                }
                known.lock().unwrap().running(keys)
            }
            Source::Db(_) => Ok(self
                .db_flushed()
                .await?
                .lock_steps(&ids)
                .await?
                .into_iter()
                .map(|l| (l.step_id, l))
                .collect()),
        }
    }

    /// A task's steps by position, as this transaction's writes leave them.
    pub(super) async fn task_steps(&mut self, task_id: i64) -> Result<Vec<StepRow>> {
        self.db_flushed().await?.task_steps(task_id).await
    }

    pub(super) async fn count_running(&mut self, task_id: i64) -> Result<i64> {
        self.db_flushed().await?.count_running(task_id).await
    }

    pub(super) async fn expired_leases(&mut self, limit: i64) -> Result<Vec<ExpiredLease>> {
        let now = self.now;
        self.db_flushed().await?.expired_leases(now, limit).await
    }

    /// The task an idempotency key names, among this transaction's new tasks or stored ones.
    pub(super) async fn task_by_key(&mut self, key: &str) -> Result<Option<i64>> {
        if let Some(&id) = self.keys.get(key) {
            return Ok(Some(id));
        }
        self.db()?.task_by_idempotency_key(key).await
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
        let steps = self.task_steps(task_id).await?;
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        steps.into_iter().find(|s| s.name == name).ok_or_else(|| {
            Error::NotFound(format!(
                "task {task_id} has no step named {name:?} (steps: {})",
                names.join(", ")
            ))
        })
    }

    /// Records a new task and its steps; returns the task's stand-in id and each step's
    /// `(position, stand-in id)` (real ids once applied).
    pub(super) fn insert_task(
        &mut self,
        task: NewTask,
        steps: Vec<NewStep>,
    ) -> (i64, Vec<(i32, i64)>) {
        self.plan.new_tasks.push(task);
        let task_id = -(self.plan.new_tasks.len() as i64);
        if let Some(k) = &self.plan.new_tasks.last().expect("pushed").idempotency_key {
            self.keys.insert(k.clone(), task_id);
        }
        let mut ids = Vec::with_capacity(steps.len());
        for mut s in steps {
            s.task_id = task_id;
            ids.push((s.position, 0));
            self.plan.new_steps.push(s);
            ids.last_mut().expect("pushed").1 = -(self.plan.new_steps.len() as i64);
        }
        (task_id, ids)
    }

    /// Records new steps of tasks that exist; returns each one's `(position, stand-in id)`.
    pub(super) fn insert_steps(&mut self, steps: Vec<NewStep>) -> Vec<(i32, i64)> {
        let mut ids = Vec::with_capacity(steps.len());
        for s in steps {
            let position = s.position;
            self.plan.new_steps.push(s);
            ids.push((position, -(self.plan.new_steps.len() as i64)));
        }
        ids
    }

    /// Records what a decision step chose.
    pub(super) fn plan_decision(&mut self, d: crate::store::NewDecision) {
        self.plan.decisions.push(d);
    }

    /// Records that these steps lose parents (a pending one reaching zero becomes claimable).
    pub(super) fn decrement(&mut self, decrements: impl IntoIterator<Item = Decrement>) {
        self.plan.decrements.extend(decrements);
    }

    /// True when this transaction already changes the step (a later report of it is stale).
    pub(super) fn updates_step(&self, step_id: i64) -> bool {
        self.updated.contains(&step_id)
    }

    /// Changes a task's `steps_total` (a fan-out's instances replace its one template step).
    pub(super) fn adjust_total(&mut self, task_id: i64, d_total: i64) {
        let row = self.tasks.get_mut(&task_id).expect("task loaded");
        row.steps_total += d_total;
        let u = self.pending.entry(task_id).or_insert_with(|| TaskUpdate {
            task_id,
            ..Default::default()
        });
        u.d_total += d_total;
    }

    /// Changes a task's counters, in memory now and in the plan at the end.
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

    #[allow(clippy::too_many_arguments)]
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

    /// Records conditional step updates of one task and their transitions (`expect_state ->
    /// state`, sort key the step's new version).
    pub(super) fn update_steps(&mut self, task_id: i64, changes: Vec<StepChange>) -> Result<()> {
        for c in changes {
            let u = &c.update;
            let event = StepState::event(Some(u.expect_state), u.state).ok_or(
                Error::IllegalStepTransition {
                    task_id,
                    step: c.name.clone(),
                    from: u.expect_state,
                    to: u.state,
                },
            )?;
            self.push_change(
                task_id,
                Some((u.step_id, &c.name, c.attempt as u32)),
                Some(u.expect_state.as_str()),
                u.state.as_str(),
                event,
                u.new_version(),
                c.meta,
            );
            self.record_update(c.update);
        }
        Ok(())
    }

    /// Records a step update whose transitions the caller records itself.
    pub(super) fn record_update(&mut self, update: StepUpdate) {
        self.updated.insert(update.step_id);
        self.plan.step_updates.push(update);
    }

    /// Records a task transition row that changes no state (from and to the task's state),
    /// for an operator action on the task as a whole: a pause or a resume (`event`).
    pub(super) fn note_task(&mut self, task_id: i64, event: &'static str, metadata: Value) {
        let row = self.tasks.get_mut(&task_id).expect("task loaded");
        row.version += 1;
        let (state, version) = (row.state.as_str(), row.version);
        let u = self.pending.entry(task_id).or_insert_with(|| TaskUpdate {
            task_id,
            ..Default::default()
        });
        u.transitions += 1;
        self.push_change(task_id, None, Some(state), state, event, version, metadata);
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

    /// Records parking and unparking: the claimable steps of tasks that hold them back
    /// (blocked or paused, [`decide::holds_steps`]) are hidden from claims, and come back once
    /// a task no longer holds them.
    fn repark(&mut self) {
        let mut park = Vec::new();
        let mut unpark = Vec::new();
        for (id, row) in &self.tasks {
            let before = self.held_before.get(id).copied().unwrap_or(false);
            if decide::holds_steps(row.steps_blocked, row.paused) {
                park.push(*id);
            } else if before && matches!(row.state, TaskState::Pending | TaskState::InProgress) {
                unpark.push(*id);
            }
        }
        park.sort_unstable();
        unpark.sort_unstable();
        if !unpark.is_empty() {
            self.work = true;
            self.ready_unknown = true;
        }
        self.plan.park = park;
        self.plan.unpark = unpark;
    }

    /// Records the last writes: parking, the task counters and the transition rows.
    fn write_last(&mut self) {
        self.repark();
        let mut ups: Vec<TaskUpdate> = self.pending.drain().map(|(_, u)| u).collect();
        ups.sort_by_key(|u| u.task_id);
        self.plan.task_updates = ups;
        self.plan.transitions = self.changes.iter().map(|c| c.row.clone()).collect();
    }

    /// Applies everything recorded and claims for `claim` (one statement where the store can),
    /// commits, then announces the transitions and wakes whoever waits. Returns what the store
    /// did; the claimed steps' jobs and announcements are the caller's
    /// ([`Engine::jobs_of_claimed`]). Planning: [`Error::PlanStale`] when the store refused
    /// the plan (nothing written; the engine forgets the tasks it assumed).
    pub(super) async fn finish(mut self, claim: Option<&ClaimSpec<'_>>) -> Result<PlanOutcome> {
        self.write_last();
        let covers = claim.is_some_and(|c| self.claim_covers_ready(c.handlers));
        let engine = self.engine;
        let mut plan = std::mem::take(&mut self.plan);
        plan.notify = Notify {
            work: self.work,
            task_changed: self.tasks_changed,
            quiet_if_claim_short: covers,
        };
        plan.watched = engine.watches().finishing(&plan.task_updates);
        let out = match self.src {
            Source::Known(ref known) => match engine.inner.store.execute_plan(&plan, claim).await {
                Err(Error::PlanStale) => {
                    known
                        .lock()
                        .unwrap()
                        .forget(plan.guards.iter().map(|g| g.task_id));
                    return Err(Error::PlanStale);
                }
                other => other?,
            },
            Source::Db(ref mut tx) => {
                let out = tx.apply(&plan, claim).await.map_err(changed_meanwhile)?;
                // New tasks' deadlines, by the ids the plan gave them.
                for (id, at) in std::mem::take(&mut self.deadlines) {
                    tx.insert_deadline(out.task_id(id), at).await?;
                }
                out
            }
        };
        if let Source::Db(tx) = self.src {
            tx.commit().await?;
        }
        let mut work = self.work || out.ready > 0;
        // (A quiet claim may not have run: then a short answer says nothing.)
        if let Some(c) = claim.filter(|_| out.claim_ran) {
            work &= !decide::claim_took_everything(covers, c.max as usize, out.claimed.len());
        }
        let mut changes = std::mem::take(&mut self.changes);
        let mut tasks = std::mem::take(&mut self.tasks);
        if !out.task_ids.is_empty() {
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
        remember(engine, &tasks, &changes, &out.claimed);
        let mut out = out;
        engine.watches().file(std::mem::take(&mut out.finished));
        announce(engine, changes, work, self.tasks_changed);
        for (id, template, parent) in std::mem::take(&mut self.children_created) {
            engine.announce_created(out.task_id(id), self.now, &template, parent);
        }
        if !out.finished_children.is_empty() && engine.inner.opts.settle_children_at_commit {
            // Committed: a failure here leaves the steps waiting for the sweep to finish.
            match Box::pin(engine.settle_children(&out.finished_children)).await {
                Ok(()) => out.children_settled = true,
                Err(e) => {
                    tracing::warn!(error = %e, children = ?out.finished_children, "handing child tasks' outcomes to their parents failed; the sweep will retry")
                }
            }
        }
        Ok(out)
    }
}

/// A database transaction's plan refused although it held the rows it decided from: another
/// writer the engine could not see changed them (an operator's tool writing to the database).
fn changed_meanwhile(e: Error) -> Error {
    match e {
        Error::PlanStale => {
            Error::Conflict("a task or step changed while the operation ran; try again".into())
        }
        e => e,
    }
}

/// What a committed transaction leaves known for planning later cycles: its task rows as it
/// left them (it held their locks), its reported steps gone, then the steps it claimed with
/// their tasks as the claim saw them (the claim ran last).
fn remember(
    engine: &Engine,
    tasks: &HashMap<i64, TaskRow>,
    changes: &[Change],
    claimed: &[ClaimedStep],
) {
    if !engine.inner.store.executes_plans() {
        return;
    }
    let reported = changes.iter().filter_map(|c| c.row.step_id);
    let mut known = engine.inner.known.lock().unwrap();
    known.committed(tasks.values(), reported);
    known.claimed(claimed);
}

/// Announces a committed transaction's transitions and wakes waiters.
fn announce(engine: &Engine, changes: Vec<Change>, work: bool, tasks_changed: bool) {
    let inner = &engine.inner;
    if inner.events.receiver_count() > 0 {
        for c in changes {
            send(engine, c);
        }
    }
    if work {
        inner.work.notify_waiters();
    }
    if tasks_changed {
        inner.tasks_changed.notify_waiters();
    }
}

/// Sends a transition's event, then the events derived from it ([`crate::events::derived`]).
pub(super) fn send(engine: &Engine, c: Change) {
    let e = Event {
        name: std::borrow::Cow::Borrowed(c.event),
        task_id: c.row.task_id,
        step_id: c.row.step_id,
        step_name: c.step_name,
        from_state: c.row.from_state,
        to_state: Some(c.row.to_state),
        attempt: c.attempt,
        metadata: c.metadata,
        at_ms: c.row.created_at,
    };
    let derived = crate::events::derived(&e);
    let _ = engine.inner.events.send(Arc::new(e));
    for d in derived {
        let _ = engine.inner.events.send(Arc::new(d));
    }
}
