//! Persistence: one trait, one implementation per database.
//!
//! A store executes SQL and nothing else: it never decides a state, a retry, or a finalization.
//! The engine (`engine.rs`) makes every decision and asks the store, inside one write
//! transaction ([`StoreTx`]), to apply batches of row changes. Every method that changes rows
//! takes a slice so that a batch of outcomes costs a handful of statements, not a handful per
//! step.
//!
//! Invariants the engine keeps and the stores' indexes rely on:
//! * `steps.ready_at` is non-NULL exactly when the step may be claimed once that time has come
//!   (state `pending` or `error`, no remaining parents, attempts left);
//! * a `pending` step has `attempts = 0` and an `error` step `attempts >= 1`, so a claim can tell
//!   from the new attempt number whether it re-claims a failed step (`error -> pending ->
//!   in_progress`) or starts a fresh one (`pending -> in_progress`);
//! * an `error` step with `ready_at` and `parked_ready_at` NULL is out of attempts (it blocks
//!   its task); while a task is blocked its other claimable steps are parked
//!   (`parked_ready_at`), so a claim reads the steps table alone.

pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;

use crate::error::Result;
use crate::state::{StepState, TaskState};

/// A task row (without its context).
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub task_id: i64,
    pub named_task_id: i64,
    pub state: TaskState,
    pub steps_total: i64,
    pub steps_done: i64,
    pub steps_blocked: i64,
    pub version: i64,
}

/// A task row with everything a snapshot shows.
#[derive(Debug, Clone)]
pub struct TaskDetail {
    pub row: TaskRow,
    pub context: String,
    pub initiator: String,
    pub source_system: String,
    pub reason: String,
    pub tags: String,
    pub bypass_steps: String,
    pub idempotency_key: Option<String>,
    pub requested_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
}

/// A task's detail with its template's namespace, name and version.
pub type TaskWithName = (TaskDetail, String, String, String);

/// A step row.
#[derive(Debug, Clone)]
pub struct StepRow {
    pub step_id: i64,
    pub task_id: i64,
    pub position: i32,
    pub name: String,
    pub handler: String,
    pub state: StepState,
    pub attempts: i64,
    pub retry_limit: i64,
    pub remaining_parents: i64,
    pub ready_at: Option<i64>,
    /// Where `ready_at` waits while the task is blocked by another step (parked).
    pub parked_ready_at: Option<i64>,
    pub claimed_by: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub results: Option<String>,
    pub error: Option<String>,
    pub last_attempted_at: Option<i64>,
    pub processed_at: Option<i64>,
    pub version: i64,
}

impl StepRow {
    /// Out of attempts: blocks its task until an operator acts
    /// ([`crate::engine::decide::is_exhausted`]).
    pub fn is_exhausted(&self) -> bool {
        crate::engine::decide::is_exhausted(self.state, self.ready_at, self.parked_ready_at)
    }
}

/// A new task to insert.
#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    pub named_task_id: i64,
    pub state: TaskState,
    pub context: &'a str,
    pub initiator: &'a str,
    pub source_system: &'a str,
    pub reason: &'a str,
    pub tags: &'a str,
    pub bypass_steps: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub steps_total: i64,
    pub steps_done: i64,
    pub version: i64,
    pub now: i64,
}

/// A new step to insert.
#[derive(Debug, Clone)]
pub struct NewStep<'a> {
    pub position: i32,
    pub name: &'a str,
    pub handler: &'a str,
    pub state: StepState,
    pub retry_limit: i64,
    pub remaining_parents: i64,
    pub ready_at: Option<i64>,
    pub priority: i32,
    pub version: i64,
    /// Positions of the step's parents (a store may keep them to return their results with a
    /// claim).
    pub parents: &'a [usize],
    /// Inserted already claimed by this worker until this lease expiry (a creation's hand-off,
    /// [`crate::engine`]): `in_progress`, attempt 1, as a claim would leave it. Only a planned
    /// creation ([`Plan::new_rows`]) carries such steps.
    pub born_claimed: Option<(&'a str, i64)>,
}

/// Refuses steps born claimed outside a planned creation (a store's own `insert_steps`):
/// only [`Plan::new_rows`] carries them.
pub(crate) fn only_planned_creations_are_born_claimed(steps: &[NewStep<'_>]) -> Result<()> {
    if steps.iter().any(|s| s.born_claimed.is_some()) {
        return Err(crate::Error::Internal(
            "a step born claimed is inserted by a planned creation only".into(),
        ));
    }
    Ok(())
}

/// A conditional change of one step: applied only when the step is still in `expect_state`
/// (and, when given, at `expect_attempts`), so a stale report can never overwrite a newer state.
#[derive(Debug, Clone)]
pub struct StepUpdate {
    pub step_id: i64,
    pub expect_state: StepState,
    pub expect_attempts: Option<i64>,
    pub state: StepState,
    /// New attempts count (None: keep).
    pub attempts: Option<i64>,
    /// New results JSON (None: keep).
    pub results: Option<Option<String>>,
    /// New error JSON (None: keep).
    pub error: Option<Option<String>>,
    pub ready_at: Option<i64>,
    /// Set processed_at to this time (None: keep).
    pub processed_at: Option<i64>,
    /// How many transitions this change writes (the step's version grows by it).
    pub transitions: i64,
}

impl StepUpdate {
    /// `from -> to` for one step, changing nothing else (set the other fields on the result).
    pub fn new(step_id: i64, from: StepState, to: StepState) -> StepUpdate {
        StepUpdate {
            step_id,
            expect_state: from,
            expect_attempts: None,
            state: to,
            attempts: None,
            results: None,
            error: None,
            ready_at: None,
            processed_at: None,
            transitions: 1,
        }
    }
}

/// Counter deltas and an optional new state for one task.
#[derive(Debug, Clone, Default)]
pub struct TaskUpdate {
    pub task_id: i64,
    pub d_done: i64,
    pub d_blocked: i64,
    pub state: Option<TaskState>,
    pub transitions: i64,
    pub completed_at: Option<i64>,
}

/// A step just claimed, with what the job needs of its task (read, not locked).
#[derive(Debug, Clone)]
pub struct ClaimedStep {
    pub step_id: i64,
    pub task_id: i64,
    pub position: i32,
    pub attempts: i64,
    /// The step's own limit (a template default an operator may have changed).
    pub retry_limit: i64,
    pub version: i64,
    pub lease_expires_at: i64,
    pub named_task_id: i64,
    pub task_state: TaskState,
    pub context: String,
    pub task_created_at: i64,
    /// Set when this claim moved the step's task (not held) from `pending` to `in_progress`:
    /// the task's new version (on every claimed step of that task).
    pub started_version: Option<i64>,
    /// The task's counters and version as the claim saw them (after starting it), so the
    /// engine can plan the outcome's cycle ([`Store::execute_plan`]). A task the claiming
    /// transaction holds shows its counters before that transaction's own changes.
    pub steps_total: i64,
    pub steps_done: i64,
    pub steps_blocked: i64,
    pub task_version: i64,
    /// The results of the step's parents as a JSON object `{parent name: results}`, when the
    /// store read them with the claim; `None`: the engine reads them
    /// ([`StoreTx::results`]).
    pub parent_results: Option<String>,
}

/// A worker cycle planned by the engine from task and step rows it already knew, for a store
/// that can apply it in one round trip ([`Store::execute_plan`]). Every write is what the
/// engine decided; the guards are what it assumed, and the store refuses the whole plan
/// ([`crate::Error::PlanStale`]) when any no longer holds, writing nothing.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub now: i64,
    /// False for a cycle that records no outcome: its commit need not reach the disk.
    pub durable: bool,
    /// Task rows as the engine assumed them (state, counters, version); locked and compared.
    pub guards: Vec<TaskRow>,
    /// Step updates, each also conditional on the step version in `expect_versions`.
    pub step_updates: Vec<StepUpdate>,
    pub expect_versions: Vec<i64>,
    pub decrements: Vec<(i64, i32, i64)>,
    pub park: Vec<i64>,
    pub unpark: Vec<i64>,
    pub task_updates: Vec<TaskUpdate>,
    pub transitions: Vec<TransitionRow>,
    /// Tasks and steps to insert first (a creation), in columns. Their ids are not known yet:
    /// everywhere else in the plan the k-th new task is `-k` and the k-th new step `-k`
    /// ([`PlanOutcome::task_ids`], [`PlanOutcome::step_ids`] give the real ones).
    pub new_rows: NewRows,
    /// Steps became claimable (notify other processes).
    pub work: bool,
    /// A task reached a terminal state (notify waiters in other processes).
    pub task_changed: bool,
    /// Skip the steps-ready notification when the plan's claim comes back short
    /// ([`crate::engine::decide::claim_took_everything`]).
    pub quiet_if_claim_short: bool,
    /// Tasks this plan finishes that a waiter of this process watches: the store may return
    /// them as they are after the plan's writes ([`PlanOutcome::finished`]), sparing the
    /// waiter a read after the commit.
    pub watched: Vec<i64>,
}

/// New task and step rows of a [`Plan`], column by column (tasks without idempotency keys:
/// a keyed creation is not planned).
#[derive(Debug, Clone, Default)]
pub struct NewRows {
    pub task_named: Vec<i64>,
    pub task_state: Vec<&'static str>,
    pub task_context: Vec<String>,
    pub task_initiator: Vec<String>,
    pub task_source: Vec<String>,
    pub task_reason: Vec<String>,
    pub task_tags: Vec<String>,
    pub task_bypass: Vec<String>,
    pub task_steps_total: Vec<i64>,
    pub task_steps_done: Vec<i64>,
    pub task_version: Vec<i64>,
    /// The new task (1 = the first) each step belongs to.
    pub step_task: Vec<i64>,
    pub step_position: Vec<i64>,
    pub step_name: Vec<String>,
    pub step_handler: Vec<String>,
    pub step_state: Vec<&'static str>,
    pub step_retry_limit: Vec<i64>,
    pub step_remaining: Vec<i64>,
    pub step_ready_at: Vec<Option<i64>>,
    pub step_priority: Vec<i64>,
    pub step_version: Vec<i64>,
    pub step_parents: Vec<Vec<i64>>,
    /// Of steps born claimed ([`NewStep::born_claimed`]): 1, the worker, the lease expiry, the
    /// creation time; else 0 and nothing.
    pub step_attempts: Vec<i64>,
    pub step_claimed_by: Vec<Option<String>>,
    pub step_lease_expires_at: Vec<Option<i64>>,
    pub step_last_attempted_at: Vec<Option<i64>>,
}

impl NewRows {
    /// Appends a task and its steps; returns the task's stand-in id and each step's
    /// `(position, stand-in id)`.
    pub fn push(&mut self, t: &NewTask<'_>, steps: &[NewStep<'_>]) -> (i64, Vec<(i32, i64)>) {
        self.task_named.push(t.named_task_id);
        self.task_state.push(t.state.as_str());
        self.task_context.push(t.context.to_owned());
        self.task_initiator.push(t.initiator.to_owned());
        self.task_source.push(t.source_system.to_owned());
        self.task_reason.push(t.reason.to_owned());
        self.task_tags.push(t.tags.to_owned());
        self.task_bypass.push(t.bypass_steps.to_owned());
        self.task_steps_total.push(t.steps_total);
        self.task_steps_done.push(t.steps_done);
        self.task_version.push(t.version);
        let task = self.task_named.len() as i64;
        let mut ids = Vec::with_capacity(steps.len());
        for s in steps {
            self.step_task.push(task);
            self.step_position.push(s.position as i64);
            self.step_name.push(s.name.to_owned());
            self.step_handler.push(s.handler.to_owned());
            self.step_state.push(s.state.as_str());
            self.step_retry_limit.push(s.retry_limit);
            self.step_remaining.push(s.remaining_parents);
            self.step_ready_at.push(s.ready_at);
            self.step_priority.push(s.priority as i64);
            self.step_version.push(s.version);
            self.step_parents
                .push(s.parents.iter().map(|&p| p as i64).collect());
            let born = s.born_claimed;
            self.step_attempts.push(born.map_or(0, |_| 1));
            self.step_claimed_by.push(born.map(|(w, _)| w.to_owned()));
            self.step_lease_expires_at
                .push(born.map(|(_, until)| until));
            self.step_last_attempted_at.push(born.map(|_| t.now));
            ids.push((s.position, -(self.step_task.len() as i64)));
        }
        (-task, ids)
    }

    pub fn is_empty(&self) -> bool {
        self.task_named.is_empty()
    }
}

/// What [`Store::execute_plan`] did.
#[derive(Debug, Clone, Default)]
pub struct PlanOutcome {
    /// The steps claimed after the planned writes.
    pub claimed: Vec<ClaimedStep>,
    /// How many steps the decrements made claimable.
    pub ready: u64,
    /// Whether the claim ran (a quiet claim, [`ClaimSpec::only_if_readied`], may not).
    pub claim_ran: bool,
    /// The ids the plan's new tasks and steps got, in plan order.
    pub task_ids: Vec<i64>,
    pub step_ids: Vec<i64>,
    /// Tasks of [`Plan::watched`] as the plan left them, with their steps by position (a store
    /// may leave this empty: waiters then read the task).
    pub finished: Vec<(TaskWithName, Vec<StepRow>)>,
}

impl PlanOutcome {
    /// The real id of a task (`-k`: the plan's k-th new task) or of a step.
    pub fn task_id(&self, id: i64) -> i64 {
        if id < 0 {
            self.task_ids[(-id - 1) as usize]
        } else {
            id
        }
    }

    pub fn step_id(&self, id: i64) -> i64 {
        if id < 0 {
            self.step_ids[(-id - 1) as usize]
        } else {
            id
        }
    }
}

/// What to claim.
#[derive(Debug, Clone)]
pub struct ClaimSpec<'a> {
    pub now: i64,
    pub max: i64,
    /// Only steps with these handler names (None: any handler).
    pub handlers: Option<&'a [String]>,
    pub worker_id: &'a str,
    pub lease_until: i64,
    /// Tasks this transaction holds (locked and tracked by the engine): the claim leaves their
    /// rows alone. Any other task of a claimed step still `pending` is started by the claim.
    pub held_tasks: &'a [i64],
    /// Claim only if the same cycle's writes made a step claimable (a worker that found
    /// nothing last time and heard of no new work since). A store that cannot tell claims.
    pub only_if_readied: bool,
}

/// A transition row to insert.
#[derive(Debug, Clone)]
pub struct TransitionRow {
    pub task_id: i64,
    /// Set for step transitions.
    pub step_id: Option<i64>,
    pub from_state: Option<&'static str>,
    pub to_state: &'static str,
    pub metadata: String,
    pub sort_key: i64,
    pub created_at: i64,
}

/// The step transition rows of one claimed step (what [`StoreTx::claim`] records for a store
/// that writes them from Rust): `error -> pending` first when the claim re-runs a failed step,
/// then `pending -> in_progress` with the worker.
pub(crate) fn claim_transitions(s: &ClaimedStep, spec: &ClaimSpec<'_>) -> Vec<TransitionRow> {
    let row = |from: StepState, to: StepState, sort_key: i64, metadata: serde_json::Value| {
        TransitionRow {
            task_id: s.task_id,
            step_id: Some(s.step_id),
            from_state: Some(from.as_str()),
            to_state: to.as_str(),
            metadata: metadata.to_string(),
            sort_key,
            created_at: spec.now,
        }
    };
    let mut rows = Vec::with_capacity(2);
    if s.attempts > 1 {
        rows.push(row(
            StepState::Error,
            StepState::Pending,
            s.version - 1,
            serde_json::json!({"attempt": s.attempts}),
        ));
    }
    rows.push(row(
        StepState::Pending,
        StepState::InProgress,
        s.version,
        serde_json::json!({"attempt": s.attempts, "worker": spec.worker_id}),
    ));
    rows
}

/// Filters for listing tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// Oldest (lowest id) first; newest first by default.
    pub oldest_first: bool,
    /// Only tasks created at or after this time (epoch ms).
    pub created_from: Option<i64>,
    /// Only tasks created before this time (epoch ms).
    pub created_until: Option<i64>,
}

/// Task ids `from..until` (either end open): what a filter's creation times come to. Task ids
/// grow with creation time, so a time range is an id range, found by a binary search over the
/// primary key ([`crate::Engine::first_task_created_at`]) instead of an index on `created_at`
/// that every task creation would pay for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdRange {
    pub from: Option<i64>,
    pub until: Option<i64>,
}

/// One step of a task created in an analytics window, with its task
/// ([`Store::analytics_rows`]).
#[derive(Debug, Clone)]
pub struct AnalyticsRow {
    pub task_id: i64,
    pub namespace: String,
    pub name: String,
    pub task_state: TaskState,
    pub task_created_at: i64,
    pub task_completed_at: Option<i64>,
    pub step: String,
    pub step_state: StepState,
    pub attempts: i64,
    pub last_attempted_at: Option<i64>,
    pub processed_at: Option<i64>,
}

/// Tasks and steps by state, in one statement for both backends (`?` = now, milliseconds):
/// rows `(kind, state, count)` with kind `task`, `step`, `backoff` or `exhausted`.
pub(crate) const STATE_COUNTS_SQL: &str = "\
    SELECT 'task', state, count(*) FROM tasks GROUP BY state \
    UNION ALL SELECT 'step', state, count(*) FROM steps GROUP BY state \
    UNION ALL SELECT 'backoff', '', count(*) FROM steps WHERE state = 'error' AND ready_at > ? \
    UNION ALL SELECT 'exhausted', '', count(*) FROM steps \
      WHERE state = 'error' AND ready_at IS NULL AND parked_ready_at IS NULL";

/// How many tasks and steps are in each state, for health and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StateCounts {
    /// Task state name -> count (every state present, zeros included).
    pub tasks: std::collections::BTreeMap<String, i64>,
    /// Step state name -> count (every state present, zeros included).
    pub steps: std::collections::BTreeMap<String, i64>,
    /// Failed steps waiting for their next attempt (backoff).
    pub in_backoff: i64,
    /// Failed steps with no attempt left (their task is blocked or in error).
    pub exhausted: i64,
}

impl StateCounts {
    pub(crate) fn from_rows(rows: Vec<(String, String, i64)>) -> StateCounts {
        let mut c = StateCounts {
            tasks: TaskState::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect(),
            steps: StepState::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect(),
            ..Default::default()
        };
        for (kind, state, n) in rows {
            match kind.as_str() {
                "task" => *c.tasks.entry(state).or_default() += n,
                "step" => *c.steps.entry(state).or_default() += n,
                "backoff" => c.in_backoff += n,
                _ => c.exhausted += n,
            }
        }
        c
    }
}

/// A registered template row.
#[derive(Debug, Clone)]
pub struct TemplateRow {
    pub named_task_id: i64,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub definition: String,
    pub definition_hash: String,
    /// 1, then one more each time a changed body is registered under the same version.
    pub revision: i64,
    pub created_at: i64,
}

/// What [`Store::next_times`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextTimes {
    /// The earliest time a step becomes claimable, if any is waiting.
    pub ready_at: Option<i64>,
    /// The earliest lease expiry of a running step, if any runs.
    pub lease_expiry: Option<i64>,
}

/// What [`Store::durability`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DurabilityReport {
    /// e.g. `PostgreSQL fsync=on synchronous_commit=on full_page_writes=on ...`.
    pub description: String,
    /// True when commits that record outcomes or create tasks are durable.
    pub durable: bool,
}

/// A database behind the engine.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Opens a write transaction (on SQLite `BEGIN IMMEDIATE`). `durable = false` allows the
    /// commit to skip its flush to disk: only for transactions whose loss on power failure is
    /// harmless (claims, whose steps then simply remain claimable).
    async fn begin(&self, durable: bool) -> Result<Box<dyn StoreTx>>;

    async fn templates(&self) -> Result<Vec<TemplateRow>>;
    async fn template_by_id(&self, named_task_id: i64) -> Result<Option<TemplateRow>>;
    async fn task(&self, task_id: i64) -> Result<Option<TaskWithName>>;
    async fn task_state(&self, task_id: i64) -> Result<Option<TaskState>>;
    async fn steps(&self, task_id: i64) -> Result<Vec<StepRow>>;
    /// The task and, when it is in a terminal state ([`TaskState::is_terminal`]), its steps:
    /// what a waiter needs at each wake-up. PostgreSQL reads both in one statement.
    async fn task_if_finished(
        &self,
        task_id: i64,
    ) -> Result<Option<(TaskWithName, Option<Vec<StepRow>>)>> {
        let Some(d) = self.task(task_id).await? else {
            return Ok(None);
        };
        let steps = if d.0.row.state.is_terminal() {
            Some(self.steps(task_id).await?)
        } else {
            None
        };
        Ok(Some((d, steps)))
    }
    /// Tasks matching the filter and within `ids`, newest first, with (namespace, name,
    /// version). (The filter's creation times are already turned into `ids`.)
    async fn list_tasks(&self, filter: &TaskFilter, ids: IdRange) -> Result<Vec<TaskWithName>>;
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
    /// The durability commits get, read from the database itself: a description and whether
    /// every commit that records outcomes reaches the disk.
    async fn durability(&self) -> Result<DurabilityReport>;
    /// True when writing transactions run side by side (not one writer at a time).
    fn parallel_writers(&self) -> bool {
        false
    }
    /// True when the store applies a [`Plan`] in one round trip ([`Store::execute_plan`]).
    fn executes_plans(&self) -> bool {
        false
    }
    /// Applies a planned cycle and then claims (`claim.held_tasks` is ignored: the plan's task
    /// writes are already made), atomically: [`crate::Error::PlanStale`] and nothing written
    /// when a guard fails.
    async fn execute_plan(
        &self,
        _plan: &Plan,
        _claim: Option<&ClaimSpec<'_>>,
    ) -> Result<PlanOutcome> {
        Err(crate::Error::PlanStale)
    }
    /// Statements sent to the database so far (PostgreSQL: round trips), for benchmarks; 0
    /// where not counted.
    fn statements(&self) -> u64 {
        0
    }
    /// Transition rows of a task and its steps, in order (for audits and tests): by time, the
    /// task's rows before its steps', then each entity's own order (`sort_key`); rows of one
    /// transaction share a time, and the order they were inserted in is not their history.
    async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>>;
}

/// One write transaction. Dropping it without [`StoreTx::commit`] rolls back.
#[async_trait]
pub trait StoreTx: Send {
    /// The plan recorded by a planning transaction (the engine's, for
    /// [`Store::execute_plan`]); `None` for a database transaction.
    fn into_plan(self: Box<Self>) -> Option<Plan> {
        None
    }

    /// Commits, telling other processes (a PostgreSQL NOTIFY delivered with the commit) that
    /// steps became claimable (`work_ready`) or that a task changed state (`task_changed`).
    async fn commit(self: Box<Self>, work_ready: bool, task_changed: bool) -> Result<()>;

    /// The latest revision of a template version.
    async fn find_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<TemplateRow>>;
    #[allow(clippy::too_many_arguments)]
    async fn insert_template(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
        description: Option<&str>,
        definition: &str,
        definition_hash: &str,
        now: i64,
        revision: i64,
    ) -> Result<i64>;

    async fn template_by_id(&mut self, named_task_id: i64) -> Result<Option<TemplateRow>>;

    async fn task_by_idempotency_key(&mut self, key: &str) -> Result<Option<i64>>;
    async fn insert_task(&mut self, task: &NewTask<'_>) -> Result<i64>;
    /// Inserts the steps of one task; returns (position, step_id).
    async fn insert_steps(
        &mut self,
        task_id: i64,
        steps: &[NewStep<'_>],
        now: i64,
    ) -> Result<Vec<(i32, i64)>>;

    /// Reads task rows (locking them where the database can).
    async fn lock_tasks(&mut self, task_ids: &[i64]) -> Result<Vec<TaskRow>>;
    async fn task_steps(&mut self, task_id: i64) -> Result<Vec<StepRow>>;
    /// How many steps of the task are `in_progress`.
    async fn count_running(&mut self, task_id: i64) -> Result<i64>;
    /// Sets a task's `reason` and/or `tags` (JSON array text); not a state change.
    async fn update_task_details(
        &mut self,
        task_id: i64,
        reason: Option<&str>,
        tags: Option<&str>,
        now: i64,
    ) -> Result<()>;

    /// Applies conditional step updates; returns (step_id, new version) of those applied.
    async fn update_steps(&mut self, updates: &[StepUpdate], now: i64) -> Result<Vec<(i64, i64)>>;
    /// Decrements `remaining_parents` of (task_id, position) by count; steps that reach zero
    /// while `pending` get `ready_at = now`. Returns how many became ready.
    async fn decrement_parents(&mut self, decrements: &[(i64, i32, i64)], now: i64) -> Result<u64>;
    /// Applies counter deltas and state changes.
    async fn update_tasks(&mut self, updates: &[TaskUpdate], now: i64) -> Result<()>;

    /// Parks the claimable steps of blocked tasks (`ready_at` moves to `parked_ready_at`) so no
    /// claim sees them.
    async fn park(&mut self, task_ids: &[i64], now: i64) -> Result<()>;
    /// Makes parked steps of these tasks claimable again.
    async fn unpark(&mut self, task_ids: &[i64], now: i64) -> Result<()>;

    /// Claims ready steps: `in_progress`, attempts + 1, lease set, ready_at cleared; and moves
    /// their tasks that are not held and still `pending` to `in_progress`
    /// ([`ClaimedStep::started_version`]), in the same statement where the backend can (one
    /// round trip on PostgreSQL). Takes the row locks of pending tasks only, so claims never
    /// wait on tasks another worker is settling. Writes the transition rows of both (steps:
    /// `error -> pending` for a retry, `pending -> in_progress` with `{attempt, worker}`; tasks:
    /// `pending -> in_progress` with `{reason: "step_claimed"}`); the engine only announces
    /// them.
    async fn claim(&mut self, spec: &ClaimSpec<'_>) -> Result<Vec<ClaimedStep>>;
    /// Results of (task_id, position) steps: (task_id, position, name, results JSON).
    async fn results(
        &mut self,
        keys: &[(i64, i32)],
    ) -> Result<Vec<(i64, i32, String, Option<String>)>>;
    /// Running steps whose lease expired before `now`: (step_id, task_id, position, attempts).
    /// The `retry_limit` of these steps (read only when a batch records failures).
    async fn retry_limits(&mut self, step_ids: &[i64]) -> Result<Vec<(i64, i64)>>;
    /// Sets a step's `retry_limit`; with `ready_at`, also when it becomes claimable (`None`:
    /// never, it is out of attempts), clearing any parked time.
    async fn set_retry_limit(
        &mut self,
        step_id: i64,
        limit: i64,
        ready_at: Option<Option<i64>>,
        now: i64,
    ) -> Result<()>;
    /// Steps `in_progress` whose lease expired before `now` (step_id, task_id, position,
    /// attempts), oldest expiry first. Read, not locked: the caller applies them as reports,
    /// which lock tasks before steps (as every cycle does) and re-check each step's attempt.
    async fn expired_leases(&mut self, now: i64, limit: i64) -> Result<Vec<(i64, i64, i32, i64)>>;
    /// Extends the leases of running steps still at the given attempt; returns how many.
    async fn extend_leases(&mut self, steps: &[(i64, i64)], until: i64, now: i64) -> Result<u64>;

    async fn insert_transitions(&mut self, rows: &[TransitionRow]) -> Result<()>;

    /// Inserts a task and its steps; returns the task id and (position, step_id). A store may
    /// do it in one statement.
    async fn insert_task_with_steps(
        &mut self,
        task: &NewTask<'_>,
        steps: &[NewStep<'_>],
    ) -> Result<(i64, Vec<(i32, i64)>)> {
        let id = self.insert_task(task).await?;
        let ids = self.insert_steps(id, steps, task.now).await?;
        Ok((id, ids))
    }

    /// The last writes of a transaction: task counter/state updates and transition rows. A store
    /// may do both in one statement.
    async fn write_final(
        &mut self,
        updates: &[TaskUpdate],
        transitions: &[TransitionRow],
        now: i64,
    ) -> Result<()> {
        if !updates.is_empty() {
            self.update_tasks(updates, now).await?;
        }
        if !transitions.is_empty() {
            self.insert_transitions(transitions).await?;
        }
        Ok(())
    }
}
