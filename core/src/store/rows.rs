//! What the stores read back: one struct per kind of row, the same for every backend. Each
//! backend decodes them by column name (PostgreSQL with `sqlx::FromRow` on its wire types,
//! SQLite by name in `sqlite/rows.rs`) from the column lists in [`super::sql`].

use crate::state::{StepState, TaskState};

/// A task row (without its context): what deciding an outcome needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub task_id: i64,
    pub named_task_id: i64,
    pub state: TaskState,
    pub steps_total: i64,
    pub steps_done: i64,
    pub steps_blocked: i64,
    /// The number of transitions the task has had (the sort key of its next one is this + 1).
    pub version: i64,
    /// Paused by an operator: its claimable steps are parked until it is resumed. Read as
    /// false from the rows a plan returns for the tasks it finished.
    pub paused: bool,
}

/// A task row with everything a snapshot shows, and its template's namespace, name and
/// version.
#[derive(Debug, Clone, PartialEq)]
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
    pub namespace: String,
    pub name: String,
    /// The template's version (not the row's [`TaskRow::version`]).
    pub template_version: String,
    /// A child task's parent: the task and the step that waits for it (and that step's name).
    pub parent_task_id: Option<i64>,
    pub parent_step_id: Option<i64>,
    pub parent_step: Option<String>,
}

/// A step's wait ([`super::StoreTx::insert_wait`]) that still speaks for it: the step is
/// `waiting` at that attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitRow {
    pub step_id: i64,
    pub task_id: i64,
    pub position: i32,
    pub attempt: i64,
    pub signal: Option<String>,
    pub correlation_id: Option<String>,
    pub deadline_at: Option<i64>,
    /// When the step began to wait.
    pub created_at: i64,
}

/// A signal kept until a step of its task waits for it ([`super::StoreTx::take_signal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRow {
    pub signal_id: i64,
    /// JSON text, or none.
    pub payload: Option<String>,
}

/// A step and the newest task it created ([`super::StoreTx::step_child`]): the one it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepChild {
    pub position: i32,
    pub state: StepState,
    pub attempts: i64,
    pub child: Option<i64>,
}

/// A task created by a step of another ([`super::Store::child_tasks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildLink {
    pub task_id: i64,
    pub parent_step_id: i64,
    pub state: TaskState,
}

/// A step row.
#[derive(Debug, Clone, PartialEq)]
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

/// What an outcome's report needs of its step, read with the step locked
/// ([`super::StoreTx::lock_steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLock {
    pub step_id: i64,
    pub task_id: i64,
    pub state: StepState,
    pub attempts: i64,
    pub version: i64,
    /// The step's own limit (a template default an operator may have changed).
    pub retry_limit: i64,
}

/// A step just claimed, with what the job needs of its task (read, not locked).
#[derive(Debug, Clone, PartialEq)]
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
    /// Set when this claim moved the step's task from `pending` to `in_progress`: the task's
    /// new version (on every claimed step of that task).
    pub started_version: Option<i64>,
    /// The task's counters and version as the claim saw them (after starting it), so the
    /// engine can plan the outcome's cycle ([`super::Store::execute_plan`]).
    pub steps_total: i64,
    pub steps_done: i64,
    pub steps_blocked: i64,
    pub task_version: i64,
    /// The results of the step's parents as a JSON object `{parent name: results}`, when the
    /// store read them with the claim; `None`: the engine reads them
    /// ([`super::Store::parent_results`]).
    pub parent_results: Option<String>,
    /// A fan-out instance's place and item (JSON text); `None` for every other step.
    pub batch_index: Option<i64>,
    pub batch: Option<String>,
    /// The JSON value the step's handler last saved (`step.save_checkpoint`).
    pub checkpoint: Option<String>,
}

/// A transition row.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A registered template row.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A stored event definition ([`super::Store::event_definitions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDefinitionRow {
    pub name: String,
    /// [`crate::events::EventDefinition`] as JSON.
    pub definition: String,
    pub registered_at: i64,
}

/// A decision a step took ([`super::Store::decisions`], [`super::plan::NewDecision`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRow {
    pub step_id: i64,
    /// The names of the children it chose, a JSON array.
    pub chosen: String,
}

/// A running step whose lease expired ([`super::StoreTx::expired_leases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredLease {
    pub step_id: i64,
    pub task_id: i64,
    pub position: i32,
    pub attempts: i64,
}

/// A step of a task, by its place in the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    pub task_id: i64,
    pub position: i32,
}

/// The results of a parent step, for the jobs of its children ([`super::Store::parent_results`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentResult {
    pub task_id: i64,
    pub position: i32,
    pub name: String,
    pub results: Option<String>,
    /// A fan-out instance's place (the rows of one batch_worker step share the position).
    pub batch_index: Option<i64>,
    /// The stored error: a failed instance's (under `continue_on_failure`) is what its
    /// convergence sees in its place.
    pub error: Option<String>,
}

/// A task a plan brought to a terminal state, as the plan left it (for its waiters).
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedTask {
    pub task: TaskDetail,
    /// By position.
    pub steps: Vec<StepRow>,
}

/// One step of a task created in an analytics window, with its task
/// ([`super::Store::analytics_rows`]).
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
    /// From the rows of [`super::sql::STATE_COUNTS`]: `(kind, state, count)`.
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

/// What [`super::Store::next_times`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextTimes {
    /// The earliest time a step becomes claimable, if any is waiting.
    pub ready_at: Option<i64>,
    /// The earliest lease expiry of a running step, if any runs.
    pub lease_expiry: Option<i64>,
}

/// What [`super::Store::durability`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DurabilityReport {
    /// e.g. `PostgreSQL fsync=on synchronous_commit=on full_page_writes=on ...`.
    pub description: String,
    /// True when commits that record outcomes or create tasks are durable.
    pub durable: bool,
}

/// A row of `schedules` ([`crate::schedule`]): its definition, whether it is paused, its next
/// tick and what it fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    pub name: String,
    pub namespace: String,
    /// The template's name.
    pub template: String,
    pub version: Option<String>,
    pub cron: String,
    pub timezone: String,
    /// JSON text of an object.
    pub context: String,
    pub overlap: String,
    pub catch_up: String,
    pub paused: bool,
    /// The next tick (ms), `None` when the pattern has no further tick.
    pub next_run_at: Option<i64>,
    /// The latest tick that made a task.
    pub last_tick_at: Option<i64>,
    /// Ticks that made a task, and ticks passed over (overlap `skip`, catch-up).
    pub fired: i64,
    pub skipped: i64,
    /// `api`, or the template (`namespace/name/version`) whose `schedules:` block declared it.
    pub origin: String,
    pub created_at: i64,
    pub updated_at: i64,
}
