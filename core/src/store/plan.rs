//! The parameters of the store operations: the write path ([`Plan`], applied by
//! [`super::StoreTx::apply`] and [`super::Store::execute_plan`]), the few writes outside it,
//! and the filters of the reads. One struct per operation, as River's driver interface has
//! (`JobGetAvailableParams`, ...): a new feature adds a field here and a statement in each
//! store's `apply`, not a parameter to every signature.
//!
//! # The write path
//!
//! Every change a worker cycle, a creation or an operator action makes to tasks and steps is
//! *recorded* by the engine into a [`Plan`] and applied by the store at once, in this order:
//!
//! 1. the guards (tasks as the engine assumed them, compared with the locked rows);
//! 2. new tasks and steps (ids given in order; the k-th new task is referred to as `-k`
//!    everywhere else in the plan, the k-th new step too);
//! 3. step updates, each only if the step is still at `expect_state` and `expect_version`;
//! 4. decrements of `remaining_parents` (a pending step reaching zero becomes claimable now),
//!    and the decisions steps took ([`NewDecision`]; never in a plan executed on its own);
//! 5. parking and unparking;
//! 6. task counter and state updates;
//! 7. transition rows;
//! 8. the claim ([`ClaimSpec`]), with the new steps born claimed for it ([`NewStep::born`]);
//! 9. the notifications (`NOTIFY` on PostgreSQL), as [`Notify`] says.
//!
//! A guard or a step update that does not hold refuses the whole plan with
//! [`crate::Error::PlanStale`], nothing written. The store decides nothing else: every value
//! written is the engine's.

use super::rows::{ClaimedStep, FinishedTask, TaskRow, TransitionRow};
use crate::state::{StepState, TaskState};

/// A batch of row changes and an optional claim, applied atomically (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub now: i64,
    /// False for a cycle that records no outcome: its commit need not reach the disk (lost in
    /// a crash, its claim's steps are simply claimable again).
    pub durable: bool,
    /// Task rows as the engine assumed them (state, counters, version): locked and compared.
    /// Empty for a transaction that read and locked them itself.
    pub guards: Vec<TaskRow>,
    pub new_tasks: Vec<NewTask>,
    pub new_steps: Vec<NewStep>,
    pub step_updates: Vec<StepUpdate>,
    pub decrements: Vec<Decrement>,
    /// What decision steps chose (steps that exist; read back by
    /// [`super::StoreTx::decisions`]). A plan with decisions is applied in a transaction,
    /// never by [`super::Store::execute_plan`].
    pub decisions: Vec<NewDecision>,
    /// Tasks whose claimable steps are hidden from claims (`ready_at` moved to
    /// `parked_ready_at`): a step of theirs is out of attempts.
    pub park: Vec<i64>,
    /// Tasks whose parked steps become claimable again.
    pub unpark: Vec<i64>,
    pub task_updates: Vec<TaskUpdate>,
    pub transitions: Vec<TransitionRow>,
    pub notify: Notify,
    /// Tasks this plan finishes that a waiter of this process watches: the store may return
    /// them as the plan left them ([`PlanOutcome::finished`]), sparing the waiter a read.
    pub watched: Vec<i64>,
}

impl Plan {
    /// A plan with no writes yet.
    pub fn new(now: i64, durable: bool) -> Plan {
        Plan {
            now,
            durable,
            ..Plan::default()
        }
    }

    /// True when applying it would change no row (a claim may still run).
    pub fn writes_nothing(&self) -> bool {
        self.guards.is_empty()
            && self.new_tasks.is_empty()
            && self.new_steps.is_empty()
            && self.step_updates.is_empty()
            && self.decrements.is_empty()
            && self.decisions.is_empty()
            && self.park.is_empty()
            && self.unpark.is_empty()
            && self.task_updates.is_empty()
            && self.transitions.is_empty()
    }

    /// True when the plan's writes make a step claimable now: what a quiet claim
    /// ([`ClaimSpec::only_if_readied`]) runs for, besides a decrement that readies a step
    /// (which only the store can tell).
    pub fn readies_steps(&self) -> bool {
        !self.unpark.is_empty()
            || self
                .step_updates
                .iter()
                .any(|u| u.ready_at.is_some_and(|t| t <= self.now))
            || self.new_steps.iter().any(|s| s.ready_at.is_some())
    }
}

/// What to tell other processes at commit (PostgreSQL `NOTIFY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    /// Steps became claimable.
    pub work: bool,
    /// A task reached a terminal state (waiters in other processes read it).
    pub task_changed: bool,
    /// No steps-ready notification when the plan's claim comes back short: it took everything
    /// claimable ([`crate::engine::decide::claim_took_everything`]).
    pub quiet_if_claim_short: bool,
}

/// A new task ([`Plan::new_tasks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub named_task_id: i64,
    pub state: TaskState,
    pub context: String,
    pub initiator: String,
    pub source_system: String,
    pub reason: String,
    pub tags: String,
    pub bypass_steps: String,
    pub idempotency_key: Option<String>,
    pub steps_total: i64,
    pub steps_done: i64,
    pub version: i64,
    /// A child task's parent task and the step that waits for it.
    pub parent_task_id: Option<i64>,
    pub parent_step_id: Option<i64>,
}

/// A new step ([`Plan::new_steps`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStep {
    /// Its task: a new one's stand-in (`-k`) or an existing id.
    pub task_id: i64,
    pub position: i32,
    pub name: String,
    pub handler: String,
    pub state: StepState,
    pub retry_limit: i64,
    pub remaining_parents: i64,
    pub ready_at: Option<i64>,
    pub priority: i32,
    pub version: i64,
    /// Positions of the step's parents (kept so a claim can return their results).
    pub parents: Vec<i32>,
    /// Inserted already claimed by the plan's claim (a creation handing its ready steps to an
    /// idle worker of its process): the store inserts it as that claim would leave it and
    /// returns it among the claimed steps. The step is inserted ready (`pending`,
    /// `ready_at`): the claim's rule, not the engine, says what a claimed row is.
    pub born: bool,
    /// A fan-out instance's place among its batch (0-based); `None` for every other step.
    pub batch_index: Option<i64>,
    /// A fan-out instance's item, JSON text.
    pub batch: Option<String>,
}

/// A conditional change of one step: applied only when the step is still at `expect_state`
/// and `expect_version` (and, when given, `expect_attempts`), so a change decided from a row
/// that has changed since can never overwrite it. `ready_at` and `parked_ready_at` are always
/// written (the latter cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpdate {
    pub step_id: i64,
    pub expect_state: StepState,
    pub expect_attempts: Option<i64>,
    /// The version the engine read or knows (its transitions so far).
    pub expect_version: i64,
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
    /// `from -> to` for the step at `version`, changing nothing else (set the other fields on
    /// the result).
    pub fn new(step_id: i64, version: i64, from: StepState, to: StepState) -> StepUpdate {
        StepUpdate {
            step_id,
            expect_state: from,
            expect_attempts: None,
            expect_version: version,
            state: to,
            attempts: None,
            results: None,
            error: None,
            ready_at: None,
            processed_at: None,
            transitions: 1,
        }
    }

    /// The step's version once applied.
    pub fn new_version(&self) -> i64 {
        self.expect_version + self.transitions
    }
}

/// `remaining_parents` of one step drops by `by` ([`Plan::decrements`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decrement {
    pub task_id: i64,
    pub position: i32,
    pub by: i64,
}

/// A step's wait, for the attempt that returned it ([`super::StoreTx::insert_wait`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewWait<'a> {
    pub step_id: i64,
    pub task_id: i64,
    pub attempt: i64,
    pub signal: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub deadline_at: Option<i64>,
    pub now: i64,
}

/// A decision a step took: the names of the children it chose ([`Plan::decisions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDecision {
    pub task_id: i64,
    pub step_id: i64,
    /// A JSON array of step names.
    pub chosen: String,
}

/// Counter deltas and an optional new state for one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskUpdate {
    pub task_id: i64,
    pub d_done: i64,
    pub d_blocked: i64,
    /// Steps added to (or taken from) `steps_total`: a fan-out of n instances adds n - 1.
    pub d_total: i64,
    pub state: Option<TaskState>,
    /// How many transitions this change writes (the task's version grows by it).
    pub transitions: i64,
    pub completed_at: Option<i64>,
}

/// What to claim, after a plan's writes.
///
/// The claim takes up to `max` claimable steps (`ready_at <= now`) whose handler is one of
/// `handlers`, priority first, then oldest `ready_at`, then id, skipping rows other
/// transactions hold; each becomes `in_progress`, `attempts + 1`, leased to `worker_id` until
/// `lease_until`; tasks still `pending` start; the claim's transition rows are written by the
/// store (steps: `error -> pending` for a retry, then `pending -> in_progress` with `{attempt,
/// worker}`; tasks: `pending -> in_progress` with `{reason: "step_claimed"}`). Steps born
/// claimed count toward `max`.
#[derive(Debug, Clone)]
pub struct ClaimSpec<'a> {
    pub now: i64,
    pub max: i64,
    /// Only steps with these handler names (None: any handler).
    pub handlers: Option<&'a [String]>,
    pub worker_id: &'a str,
    pub lease_until: i64,
    /// Claim only if the same plan made a step claimable (a worker that found nothing last
    /// time and heard of no new work since): [`Plan::readies_steps`], or a decrement that
    /// readied a step.
    pub only_if_readied: bool,
}

/// What [`super::StoreTx::apply`] and [`super::Store::execute_plan`] did.
#[derive(Debug, Clone, Default)]
pub struct PlanOutcome {
    /// The steps claimed after the writes (born claimed ones included).
    pub claimed: Vec<ClaimedStep>,
    /// How many steps the decrements made claimable.
    pub ready: u64,
    /// Whether the claim ran (a quiet claim, [`ClaimSpec::only_if_readied`], may not).
    pub claim_ran: bool,
    /// The ids the plan's new tasks and steps got, in plan order.
    pub task_ids: Vec<i64>,
    pub step_ids: Vec<i64>,
    /// Tasks of [`Plan::watched`] as the plan left them (a store may leave this empty: waiters
    /// then read the task).
    pub finished: Vec<FinishedTask>,
    /// Child tasks (with a parent step) this plan brought to `complete`, `error` or
    /// `cancelled`, by id: their parents' steps have an outcome to take.
    pub finished_children: Vec<i64>,
    /// Set by the engine once it handed those children's outcomes to their parents (after
    /// the commit): their parents' next steps may be claimable.
    pub children_settled: bool,
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

/// A template to insert ([`super::StoreTx::insert_template`]).
#[derive(Debug, Clone)]
pub struct NewTemplate<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub description: Option<&'a str>,
    /// The canonical JSON of the template, stored as is.
    pub definition: &'a str,
    pub definition_hash: &'a str,
    pub revision: i64,
    pub now: i64,
}

/// A task's `reason` and/or `tags` (JSON array text), not a state change
/// ([`super::StoreTx::update_task_details`]).
#[derive(Debug, Clone)]
pub struct TaskDetailsUpdate<'a> {
    pub task_id: i64,
    pub reason: Option<&'a str>,
    pub tags: Option<&'a str>,
    /// Pause or resume the task (the engine parks or unparks its steps in the same
    /// transaction's plan).
    pub paused: Option<bool>,
    pub now: i64,
}

/// A step's new `retry_limit` ([`super::StoreTx::set_retry_limit`]); with `ready_at`, also
/// when it becomes claimable (`None`: never, it is out of attempts), clearing any parked time.
#[derive(Debug, Clone, Copy)]
pub struct RetryLimitUpdate {
    pub step_id: i64,
    pub limit: i64,
    pub ready_at: Option<Option<i64>>,
    pub now: i64,
}

/// A running attempt's checkpoint ([`super::StoreTx::save_checkpoint`]): saved only while the
/// step is `in_progress` at that attempt.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointSave<'a> {
    pub step_id: i64,
    pub attempt: i64,
    /// JSON text.
    pub checkpoint: &'a str,
    pub now: i64,
}

/// Leases of running attempts extended to `until` ([`super::Store::extend_leases`]).
#[derive(Debug, Clone)]
pub struct LeaseExtension {
    /// (step id, attempt): only a step still running at that attempt is extended.
    pub steps: Vec<(i64, i64)>,
    pub until: i64,
    pub now: i64,
}

/// One batch of a retention prune ([`super::StoreTx::prune_tasks`]).
#[derive(Debug, Clone, Copy)]
pub struct PruneBatch<'a> {
    /// A terminal task state.
    pub state: &'a str,
    /// Tasks whose `completed_at` is before this time (epoch ms).
    pub before: i64,
    pub limit: i64,
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

/// The transition rows a claim leaves ([`ClaimSpec`]), in order: per claimed step `error ->
/// pending` (`{attempt}`) when it re-runs a failed step, then `pending -> in_progress`
/// (`{attempt, worker}`); then per started task `pending -> in_progress` (`{"reason":
/// "step_claimed"}`), by task id. SQLite writes these rows; PostgreSQL's `tasker_claim_v2`
/// writes the same in SQL (the conformance suite holds the two together); the engine announces
/// them after commit.
pub fn claim_transitions(claimed: &[ClaimedStep], worker: &str, now: i64) -> Vec<TransitionRow> {
    let step =
        |s: &ClaimedStep, from: StepState, sort_key: i64, meta: serde_json::Value| TransitionRow {
            task_id: s.task_id,
            step_id: Some(s.step_id),
            from_state: Some(from.as_str()),
            to_state: if from == StepState::Error {
                StepState::Pending.as_str()
            } else {
                StepState::InProgress.as_str()
            },
            metadata: meta.to_string(),
            sort_key,
            created_at: now,
        };
    let mut rows = Vec::with_capacity(claimed.len() + 1);
    let mut started: Vec<(i64, i64)> = Vec::new();
    for s in claimed {
        if s.attempts > 1 {
            rows.push(step(
                s,
                StepState::Error,
                s.version - 1,
                serde_json::json!({"attempt": s.attempts}),
            ));
        }
        rows.push(step(
            s,
            StepState::Pending,
            s.version,
            serde_json::json!({"attempt": s.attempts, "worker": worker}),
        ));
        if let Some(v) = s.started_version {
            started.push((s.task_id, v));
        }
    }
    started.sort_unstable();
    started.dedup_by_key(|s| s.0);
    rows.extend(started.into_iter().map(|(task_id, version)| TransitionRow {
        task_id,
        step_id: None,
        from_state: Some(TaskState::Pending.as_str()),
        to_state: TaskState::InProgress.as_str(),
        metadata: serde_json::json!({"reason": "step_claimed"}).to_string(),
        sort_key: version,
        created_at: now,
    }));
    rows
}
