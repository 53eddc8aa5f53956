//! Persistence: one driver interface, one implementation per database.
//!
//! A store executes SQL and nothing else: it never decides a state, a retry or a settlement.
//! The engine decides, records the row changes into a [`Plan`] and has the store apply it
//! ([`StoreTx::apply`], or [`Store::execute_plan`] for a plan made from rows the engine already
//! knows). Besides the plan a store offers reads (locking ones inside a transaction) and a
//! few writes outside it (a template, a task's details, a retry limit, leases): each
//! operation takes one params struct ([`plan`]) and answers rows ([`rows`]).
//!
//! Layout: [`rows`] and [`plan`] are the boundary's types, [`sql`] the SQL text both backends
//! share, [`sqlite`] and [`postgres`] the drivers (a folder each: open, reads, the transaction,
//! the plan's application, the claim), and `conformance` (tests) one table-driven suite run
//! on both.
//!
//! Invariants the engine keeps and the stores' indexes rely on:
//! * `steps.ready_at` is non-NULL exactly when the step may be claimed once that time has come
//!   (state `pending` or `error`, no remaining parents, attempts left);
//! * a `pending` step has `attempts = 0` and an `error` step `attempts >= 1`, so a claim can tell
//!   from the new attempt number whether it re-claims a failed step (`error -> pending ->
//!   in_progress`) or starts a fresh one (`pending -> in_progress`);
//! * an `error` step with `ready_at` and `parked_ready_at` NULL is out of attempts (it blocks
//!   its task); while a task is blocked its other claimable steps are parked
//!   (`parked_ready_at`), so a claim reads the steps table alone;
//! * `version` of a task or step counts its transitions: every state change writes one row
//!   whose `sort_key` is the new version.

pub mod plan;
pub mod postgres;
pub mod rows;
pub(crate) mod sql;
pub mod sqlite;

#[cfg(test)]
mod conformance;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify as Wake;

use crate::error::{Error, Result};
use crate::state::TaskState;

pub use plan::{
    CheckpointSave, ClaimSpec, Decrement, IdRange, LeaseExtension, NewDecision, NewStep, NewTask,
    NewTemplate, NewWait, Notify, Plan, PlanOutcome, PruneBatch, RetryLimitUpdate, StepUpdate,
    TaskDetailsUpdate, TaskFilter, TaskUpdate,
};
pub use rows::{
    AnalyticsRow, ChildLink, ClaimedStep, DecisionRow, DurabilityReport, EventDefinitionRow,
    ExpiredLease, FinishedTask, NextTimes, ParentResult, ScheduleRow, SignalRow, StateCounts,
    StepChild, StepKey, StepLock, StepRow, TaskDetail, TaskRow, TemplateRow, TransitionRow,
    WaitRow,
};

/// How to open a store ([`open`]).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// SQLite: the durability of commits.
    pub durability: sqlite::Durability,
    /// PostgreSQL: use (and create if missing) this schema instead of the search path's first.
    pub schema: Option<String>,
    /// PostgreSQL: connections in the pool (default 8).
    pub max_connections: Option<u32>,
}

/// Opens (creating and migrating as needed) the database the URL names: `sqlite://PATH`,
/// `sqlite:PATH`, `sqlite::memory:`, or `postgres://` / `postgresql://`.
pub async fn open(url: &str, opts: &StoreOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::open(url, opts.durability).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pg = postgres::PgOptions {
            schema: opts.schema.clone(),
            max_connections: opts.max_connections,
        };
        Ok(Arc::new(postgres::PgStore::open(url.to_owned(), pg).await?))
    } else {
        Err(Error::UnsupportedUrl(url.to_owned()))
    }
}

/// Who to wake when another process changes the database ([`Store::listen`]).
#[derive(Debug, Clone)]
pub struct Wakeups {
    /// Steps may have become claimable.
    pub work: Arc<Wake>,
    /// A task reached a terminal state.
    pub tasks: Arc<Wake>,
}

/// A database behind the engine.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Opens a write transaction (on SQLite `BEGIN IMMEDIATE`). `durable = false` allows the
    /// commit to skip its flush to disk: only for transactions whose loss on power failure is
    /// harmless (claims, whose steps then simply remain claimable).
    async fn begin(&self, durable: bool) -> Result<Box<dyn StoreTx>>;

    /// True when writing transactions run side by side (not one writer at a time).
    fn parallel_writers(&self) -> bool {
        false
    }
    /// True when the store applies a [`Plan`] made from known rows in one round trip, guarded
    /// ([`Store::execute_plan`]).
    fn executes_plans(&self) -> bool {
        false
    }
    /// Applies a plan made from rows the engine knows, and claims, atomically and on its own
    /// (no transaction around it): [`Error::PlanStale`] and nothing written when a guard fails.
    async fn execute_plan(
        &self,
        _plan: &Plan,
        _claim: Option<&ClaimSpec<'_>>,
    ) -> Result<PlanOutcome> {
        Err(Error::PlanStale)
    }
    /// Wakes `wake` when other processes commit work or finish tasks, until the store closes;
    /// `None` where the database cannot tell (the engine then polls).
    fn listen(&self, _wake: Wakeups) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
    /// Makes `connections` connections ready for work at once (opened, their statements and
    /// functions prepared), so that as many loops starting together (a worker's lanes) start
    /// together; a store without connections of its own does nothing.
    async fn warm(&self, _connections: usize) -> Result<()> {
        Ok(())
    }
    /// Statements sent to the database so far (PostgreSQL: round trips), for benchmarks; 0
    /// where not counted.
    fn statements(&self) -> u64 {
        0
    }

    async fn templates(&self) -> Result<Vec<TemplateRow>>;
    async fn template_by_id(&self, named_task_id: i64) -> Result<Option<TemplateRow>>;
    /// Every stored event definition, by name.
    async fn event_definitions(&self) -> Result<Vec<EventDefinitionRow>>;
    async fn task(&self, task_id: i64) -> Result<Option<TaskDetail>>;
    async fn task_state(&self, task_id: i64) -> Result<Option<TaskState>>;
    /// The task's steps by position.
    async fn steps(&self, task_id: i64) -> Result<Vec<StepRow>>;
    /// The decisions the task's steps took, by step id.
    async fn decisions(&self, task_id: i64) -> Result<Vec<DecisionRow>>;
    /// The tasks the task's steps created, by id.
    async fn child_tasks(&self, task_id: i64) -> Result<Vec<ChildLink>>;
    /// Finished child tasks whose parent step still waits for them, by id, at most `limit`
    /// ([`sql::FINISHED_CHILDREN_WAITED_FOR`]).
    async fn finished_children_waited_for(&self, limit: i64) -> Result<Vec<i64>>;
    /// The waits of the task's waiting steps, by step id.
    async fn waits(&self, task_id: i64) -> Result<Vec<WaitRow>>;
    /// The task and, when it is in a terminal state ([`TaskState::is_terminal`]), its steps:
    /// what a waiter needs at each wake-up. PostgreSQL reads both in one statement.
    async fn task_if_finished(
        &self,
        task_id: i64,
    ) -> Result<Option<(TaskDetail, Option<Vec<StepRow>>)>> {
        let Some(d) = self.task(task_id).await? else {
            return Ok(None);
        };
        let steps = if d.row.state.is_terminal() {
            Some(self.steps(task_id).await?)
        } else {
            None
        };
        Ok(Some((d, steps)))
    }
    /// Tasks matching the filter and within `ids`, newest first unless
    /// [`TaskFilter::oldest_first`]. (The filter's creation times are already turned into
    /// `ids`.)
    async fn list_tasks(&self, filter: &TaskFilter, ids: IdRange) -> Result<Vec<TaskDetail>>;
    /// How many tasks match the filter and `ids` (its limit and offset ignored).
    async fn count_tasks(&self, filter: &TaskFilter, ids: IdRange) -> Result<i64>;
    /// The first task with an id at or above `id`: `(task_id, created_at)`.
    async fn task_at_or_after(&self, id: i64) -> Result<Option<(i64, i64)>>;
    /// The highest task id.
    async fn max_task_id(&self) -> Result<Option<i64>>;
    /// Tasks and steps by state (`now` decides what is still in backoff).
    async fn state_counts(&self, now: i64) -> Result<StateCounts>;
    /// The steps of the newest tasks with ids at or above `from_id` (at most `limit` rows),
    /// with their tasks, for analytics.
    async fn analytics_rows(&self, from_id: i64, limit: i64) -> Result<Vec<AnalyticsRow>>;
    /// When a worker should look again, in one read: the earliest `ready_at` among claimable
    /// steps (with these handlers) and the earliest lease expiry among running steps.
    async fn next_times(&self, handlers: Option<&[String]>) -> Result<NextTimes>;
    /// The results of these steps (committed ones; results never change once a child of the
    /// step is ready).
    async fn parent_results(&self, keys: &[StepKey]) -> Result<Vec<ParentResult>>;
    /// Extends the leases of running steps still at the given attempt; returns how many.
    async fn extend_leases(&self, p: &LeaseExtension) -> Result<u64>;
    /// The durability commits get, read from the database itself: a description and whether
    /// every commit that records outcomes reaches the disk.
    async fn durability(&self) -> Result<DurabilityReport>;
    /// Transition rows of a task and its steps, in order (for audits and tests): by time, the
    /// task's rows before its steps', then each entity's own order (`sort_key`); rows of one
    /// transaction share a time, and the order they were inserted in is not their history.
    async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>>;
    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<ScheduleRow>>;
    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>>;
    /// A task's deadline, while it has one (ms).
    async fn task_deadline(&self, task_id: i64) -> Result<Option<i64>>;
    /// The task an idempotency key names.
    async fn task_id_by_key(&self, key: &str) -> Result<Option<i64>>;
    /// The earliest next tick among schedules not paused.
    async fn next_schedule_at(&self) -> Result<Option<i64>>;
}

/// One write transaction: reads that lock what they read (where the database can), a few
/// writes outside a plan, and the plan. Dropping it without [`StoreTx::commit`] rolls back.
#[async_trait]
pub trait StoreTx: Send {
    /// Applies a plan (see [`plan`]) and then claims, inside this transaction. The engine holds
    /// the rows it decided from, so a guard or step update that fails here is a bug or a
    /// concurrent change the engine could not see: [`Error::PlanStale`], nothing written.
    async fn apply(&mut self, plan: &Plan, claim: Option<&ClaimSpec<'_>>) -> Result<PlanOutcome>;
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Task rows, locked in id order.
    async fn lock_tasks(&mut self, task_ids: &[i64]) -> Result<Vec<TaskRow>>;
    /// What reports need of their steps, the steps locked (after their tasks).
    async fn lock_steps(&mut self, step_ids: &[i64]) -> Result<Vec<StepLock>>;
    /// A task's steps by position, locked.
    async fn task_steps(&mut self, task_id: i64) -> Result<Vec<StepRow>>;
    /// The decisions the task's steps took, by step id.
    async fn decisions(&mut self, task_id: i64) -> Result<Vec<DecisionRow>>;
    /// The tasks the task's steps created, by id (read, not locked).
    async fn child_tasks(&mut self, task_id: i64) -> Result<Vec<ChildLink>>;
    /// A step's position and the newest task it created (read, not locked).
    async fn step_child(&mut self, step_id: i64) -> Result<Option<StepChild>>;
    /// Records (or replaces) a waiting step's wait.
    async fn insert_wait(&mut self, w: &NewWait<'_>) -> Result<()>;
    /// The waits of steps of `task_id` waiting for signal `name` (read, not locked).
    async fn waits_for_signal(&mut self, task_id: i64, name: &str) -> Result<Vec<WaitRow>>;
    /// The waits with this correlation id (read, not locked).
    async fn waits_by_correlation(&mut self, correlation_id: &str) -> Result<Vec<WaitRow>>;
    /// Waits whose deadline passed before `now`, earliest first, at most `limit`.
    async fn expired_waits(&mut self, now: i64, limit: i64) -> Result<Vec<WaitRow>>;
    /// Keeps a signal no step waits for yet.
    async fn insert_signal(
        &mut self,
        task_id: i64,
        name: &str,
        payload: Option<&str>,
        now: i64,
    ) -> Result<()>;
    /// Takes (deletes and returns) the oldest kept signal `name` of the task, if any.
    async fn take_signal(&mut self, task_id: i64, name: &str) -> Result<Option<SignalRow>>;
    /// The priority the task's steps were created with (0 for a task without steps).
    async fn task_priority(&mut self, task_id: i64) -> Result<i64>;
    /// How many steps of the task are `in_progress`.
    async fn count_running(&mut self, task_id: i64) -> Result<i64>;
    /// Steps `in_progress` whose lease expired before `now`, oldest expiry first, at most
    /// `limit`. Read, not locked: the caller applies them as reports, which lock tasks before
    /// steps (as every cycle does) and re-check each step's attempt.
    async fn expired_leases(&mut self, now: i64, limit: i64) -> Result<Vec<ExpiredLease>>;
    /// The latest revision of a template version.
    async fn find_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<TemplateRow>>;
    async fn template_by_id(&mut self, named_task_id: i64) -> Result<Option<TemplateRow>>;
    async fn task_by_idempotency_key(&mut self, key: &str) -> Result<Option<i64>>;

    /// Inserts a template revision; returns its id. Another process registering the same
    /// revision at the same moment: its id when the bodies match, else [`Error::Conflict`].
    async fn insert_template(&mut self, t: &NewTemplate<'_>) -> Result<i64>;
    /// Inserts an event definition, or replaces the one of the same name.
    async fn upsert_event_definition(&mut self, d: &EventDefinitionRow) -> Result<()>;
    async fn update_task_details(&mut self, p: &TaskDetailsUpdate<'_>) -> Result<()>;
    async fn set_retry_limit(&mut self, p: &RetryLimitUpdate) -> Result<()>;
    /// Saves a running attempt's checkpoint; returns whether the step was still running at
    /// that attempt (nothing is written otherwise).
    async fn save_checkpoint(&mut self, p: &CheckpointSave<'_>) -> Result<bool>;

    /// Gives a task a deadline (ms).
    async fn insert_deadline(&mut self, task_id: i64, deadline_at: i64) -> Result<()>;
    /// Deadlines at or before `now`, earliest first, at most `limit`: (task_id, deadline_at).
    async fn expired_deadlines(&mut self, now: i64, limit: i64) -> Result<Vec<(i64, i64)>>;
    async fn delete_deadline(&mut self, task_id: i64) -> Result<()>;
    /// Counts one more `Reschedule` of a step; the count so far, this one included.
    async fn bump_reschedules(&mut self, step_id: i64) -> Result<i64>;
    /// Starts a step's reschedule count again (an operator's retry).
    async fn reset_reschedules(&mut self, step_id: i64) -> Result<()>;
    /// Deletes up to `limit` tasks in `state` that ended before `before`, lowest ids first
    /// (PostgreSQL: skipping rows others hold), with their steps, transitions and every row
    /// kept for them; returns how many tasks.
    async fn prune_tasks(&mut self, p: &PruneBatch<'_>) -> Result<u64>;

    /// A schedule, locked.
    async fn lock_schedule(&mut self, name: &str) -> Result<Option<ScheduleRow>>;
    /// Schedules not paused whose next tick is at or before `now`, earliest first, at most
    /// `limit`, locked; a row another transaction holds is skipped (another process fires it).
    async fn due_schedules(&mut self, now: i64, limit: i64) -> Result<Vec<ScheduleRow>>;
    /// Inserts a schedule; `false` (nothing written) when one of that name exists.
    async fn insert_schedule(&mut self, s: &ScheduleRow) -> Result<bool>;
    /// Rewrites a schedule by name (all but `created_at`).
    async fn update_schedule(&mut self, s: &ScheduleRow) -> Result<()>;
    /// Deletes a schedule; whether there was one.
    async fn delete_schedule(&mut self, name: &str) -> Result<bool>;
}

/// The message of a creation that lost a race on an idempotency key (another transaction
/// inserted a task with the same key first): both stores answer [`Error::Conflict`] with it.
pub(crate) fn idempotency_conflict(plan: &Plan) -> Error {
    let keys: Vec<&str> = plan
        .new_tasks
        .iter()
        .filter_map(|t| t.idempotency_key.as_deref())
        .collect();
    Error::Conflict(match keys.as_slice() {
        [k] => format!(
            "a task with idempotency key {k:?} was created concurrently; retry to get its id"
        ),
        _ => format!(
            "a task with one of the idempotency keys {keys:?} was created concurrently; retry to get their ids"
        ),
    })
}
