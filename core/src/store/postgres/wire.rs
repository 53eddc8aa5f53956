//! The shapes that cross the wire to PostgreSQL: one struct per composite type of the
//! function files (`migrations/postgres/functions/*.sql`), encoded and decoded by sqlx as
//! records, and the rows of plain reads, decoded by column name (`sqlx::FromRow`).
//!
//! A record is positional: each struct lists its fields in the order of its type's attributes.
//! The conformance suite compares every struct's field names, in order, with the database's
//! catalog (`composite_types_match_their_structs`), so a field added on one side only fails a
//! test instead of shifting values.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::state::{StepState, TaskState};
use crate::store::*;

fn task_state(s: &str) -> Result<TaskState> {
    s.parse().map_err(Error::Corrupt)
}

fn step_state(s: &str) -> Result<StepState> {
    s.parse().map_err(Error::Corrupt)
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_guard_v1")]
pub(crate) struct PgGuard {
    pub task_id: i64,
    pub state: String,
    pub steps_done: i64,
    pub steps_blocked: i64,
    pub version: i64,
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_new_task_v2")]
pub(crate) struct PgNewTask {
    pub named_task_id: i64,
    pub state: String,
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
    pub parent_task_id: Option<i64>,
    pub parent_step_id: Option<i64>,
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_new_step_v2")]
pub(crate) struct PgNewStep {
    pub task_id: i64,
    pub position: i64,
    pub name: String,
    pub handler: String,
    pub state: String,
    pub retry_limit: i64,
    pub remaining_parents: i64,
    pub ready_at: Option<i64>,
    pub priority: i64,
    pub version: i64,
    /// NULL when the step has none (as rows stored before parents were kept).
    pub parents: Option<Vec<i64>>,
    pub born: bool,
    pub batch_index: Option<i64>,
    pub batch: Option<String>,
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_step_update_v1")]
pub(crate) struct PgStepUpdate {
    pub step_id: i64,
    pub expect_state: String,
    pub expect_attempts: Option<i64>,
    pub expect_version: i64,
    pub state: String,
    pub attempts: Option<i64>,
    pub set_results: bool,
    pub results: Option<String>,
    pub set_error: bool,
    pub error: Option<String>,
    pub ready_at: Option<i64>,
    pub processed_at: Option<i64>,
    pub transitions: i64,
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_decrement_v1")]
pub(crate) struct PgDecrement {
    pub task_id: i64,
    pub position: i64,
    pub by: i64,
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_task_update_v2")]
pub(crate) struct PgTaskUpdate {
    pub task_id: i64,
    pub d_done: i64,
    pub d_blocked: i64,
    pub state: Option<String>,
    pub transitions: i64,
    pub completed_at: Option<i64>,
    pub d_total: i64,
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_transition_v1")]
pub(crate) struct PgTransition {
    pub task_id: i64,
    pub step_id: Option<i64>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub metadata: String,
    pub sort_key: i64,
    pub created_at: i64,
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_claim_spec_v1")]
pub(crate) struct PgClaimSpec {
    pub max: i64,
    pub handlers: Option<Vec<String>>,
    pub worker: String,
    pub lease_until: i64,
    pub only_if_readied: bool,
}

#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_notify_v1")]
pub(crate) struct PgNotify {
    pub channel: String,
    pub work: bool,
    pub task_changed: bool,
    pub quiet_if_claim_short: bool,
}

/// A claimed step (`tasker_claimed_v2`).
#[derive(Debug, Default, Serialize, sqlx::Type)]
#[sqlx(type_name = "tasker_claimed_v2")]
pub(crate) struct PgClaimed {
    pub step_id: i64,
    pub task_id: i64,
    pub position: i64,
    pub attempts: i64,
    pub version: i64,
    pub lease_expires_at: i64,
    pub retry_limit: i64,
    pub named_task_id: i64,
    pub task_state: String,
    pub context: String,
    pub task_created_at: i64,
    pub started_version: Option<i64>,
    pub steps_total: i64,
    pub steps_done: i64,
    pub steps_blocked: i64,
    pub task_version: i64,
    pub parent_results: Option<String>,
    pub batch_index: Option<i64>,
    pub batch: Option<String>,
    pub checkpoint: Option<String>,
}

/// A task with its template's names (`tasker_task_v2`, and the columns of
/// [`crate::store::sql::detail_cols`]).
#[derive(Debug, Default, Serialize, sqlx::Type, sqlx::FromRow)]
#[sqlx(type_name = "tasker_task_v2")]
pub(crate) struct PgTask {
    pub task_id: i64,
    pub named_task_id: i64,
    pub state: String,
    pub steps_total: i64,
    pub steps_done: i64,
    pub steps_blocked: i64,
    pub version: i64,
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
    pub template_version: String,
    pub parent_task_id: Option<i64>,
    pub parent_step_id: Option<i64>,
    pub parent_step: Option<String>,
}

/// A step (`tasker_step_v1`, and the columns of [`crate::store::sql::step_cols`]).
#[derive(Debug, Default, Serialize, sqlx::Type, sqlx::FromRow)]
#[sqlx(type_name = "tasker_step_v1")]
pub(crate) struct PgStep {
    pub step_id: i64,
    pub task_id: i64,
    pub position: i64,
    pub name: String,
    pub handler: String,
    pub state: String,
    pub attempts: i64,
    pub retry_limit: i64,
    pub remaining_parents: i64,
    pub ready_at: Option<i64>,
    pub parked_ready_at: Option<i64>,
    pub claimed_by: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub results: Option<String>,
    pub error: Option<String>,
    pub last_attempted_at: Option<i64>,
    pub processed_at: Option<i64>,
    pub version: i64,
}

/// The task columns of [`PgTask`] (table `tasks` alone).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgTaskRow {
    pub task_id: i64,
    pub named_task_id: i64,
    pub state: String,
    pub steps_total: i64,
    pub steps_done: i64,
    pub steps_blocked: i64,
    pub version: i64,
    pub paused: bool,
}

/// A task read for a snapshot ([`crate::store::sql::detail_cols`]): [`PgTask`] and whether
/// it is paused (which the composite `tasker_task_v2` a plan answers does not carry).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgTaskDetail {
    #[sqlx(flatten)]
    pub task: PgTask,
    pub paused: bool,
}

impl PgTaskDetail {
    pub fn into_detail(self) -> Result<TaskDetail> {
        let mut d = self.task.into_detail()?;
        d.row.paused = self.paused;
        Ok(d)
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgTemplate {
    pub named_task_id: i64,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub definition: String,
    pub definition_hash: String,
    pub revision: i32,
    pub created_at: i64,
}

/// A row of `event_definitions`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgEventDefinition {
    pub name: String,
    pub definition: String,
    pub registered_at: i64,
}

impl PgEventDefinition {
    pub fn into_row(self) -> EventDefinitionRow {
        EventDefinitionRow {
            name: self.name,
            definition: self.definition,
            registered_at: self.registered_at,
        }
    }
}

/// A row of `schedules`: the same fields as [`ScheduleRow`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgSchedule {
    pub name: String,
    pub namespace: String,
    pub template: String,
    pub version: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub context: String,
    pub overlap: String,
    pub catch_up: String,
    pub paused: bool,
    pub next_run_at: Option<i64>,
    pub last_tick_at: Option<i64>,
    pub fired: i64,
    pub skipped: i64,
    pub origin: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl PgSchedule {
    pub fn into_row(self) -> ScheduleRow {
        ScheduleRow {
            name: self.name,
            namespace: self.namespace,
            template: self.template,
            version: self.version,
            cron: self.cron,
            timezone: self.timezone,
            context: self.context,
            overlap: self.overlap,
            catch_up: self.catch_up,
            paused: self.paused,
            next_run_at: self.next_run_at,
            last_tick_at: self.last_tick_at,
            fired: self.fired,
            skipped: self.skipped,
            origin: self.origin,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A row of `step_decisions`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgDecision {
    pub step_id: i64,
    pub chosen: String,
}

impl PgDecision {
    pub fn into_row(self) -> DecisionRow {
        DecisionRow {
            step_id: self.step_id,
            chosen: self.chosen,
        }
    }
}

/// A [`WaitRow`] ([`crate::store::sql::WAITS_OF_TASK`] and its kin).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgWait {
    pub step_id: i64,
    pub task_id: i64,
    pub position: i64,
    pub attempt: i64,
    pub signal: Option<String>,
    pub correlation_id: Option<String>,
    pub deadline_at: Option<i64>,
    pub created_at: i64,
}

impl PgWait {
    pub fn into_row(self) -> WaitRow {
        WaitRow {
            step_id: self.step_id,
            task_id: self.task_id,
            position: self.position as i32,
            attempt: self.attempt,
            signal: self.signal,
            correlation_id: self.correlation_id,
            deadline_at: self.deadline_at,
            created_at: self.created_at,
        }
    }
}

/// A row of [`crate::store::sql::CHILD_TASKS`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgChildLink {
    pub task_id: i64,
    pub parent_step_id: i64,
    pub state: String,
}

impl PgChildLink {
    pub fn into_row(self) -> Result<ChildLink> {
        Ok(ChildLink {
            task_id: self.task_id,
            parent_step_id: self.parent_step_id,
            state: task_state(&self.state)?,
        })
    }
}

/// The answer of `tasker_apply_v3`: one row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PgApplied {
    pub claimed: Vec<PgClaimed>,
    pub ready: i64,
    pub claim_ran: bool,
    pub task_ids: Vec<i64>,
    pub step_ids: Vec<i64>,
    pub finished_tasks: Vec<PgTask>,
    pub finished_steps: Vec<PgStep>,
    pub finished_children: Vec<i64>,
}

impl PgTaskRow {
    pub fn into_row(self) -> Result<TaskRow> {
        Ok(TaskRow {
            task_id: self.task_id,
            named_task_id: self.named_task_id,
            state: task_state(&self.state)?,
            steps_total: self.steps_total,
            steps_done: self.steps_done,
            steps_blocked: self.steps_blocked,
            version: self.version,
            paused: self.paused,
        })
    }
}

impl PgTask {
    pub fn into_detail(self) -> Result<TaskDetail> {
        Ok(TaskDetail {
            row: TaskRow {
                task_id: self.task_id,
                named_task_id: self.named_task_id,
                state: task_state(&self.state)?,
                steps_total: self.steps_total,
                steps_done: self.steps_done,
                steps_blocked: self.steps_blocked,
                version: self.version,
                paused: false,
            },
            context: self.context,
            initiator: self.initiator,
            source_system: self.source_system,
            reason: self.reason,
            tags: self.tags,
            bypass_steps: self.bypass_steps,
            idempotency_key: self.idempotency_key,
            requested_at: self.requested_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
            namespace: self.namespace,
            name: self.name,
            template_version: self.template_version,
            parent_task_id: self.parent_task_id,
            parent_step_id: self.parent_step_id,
            parent_step: self.parent_step,
        })
    }
}

impl PgStep {
    pub fn into_row(self) -> Result<StepRow> {
        Ok(StepRow {
            step_id: self.step_id,
            task_id: self.task_id,
            position: self.position as i32,
            name: self.name,
            handler: self.handler,
            state: step_state(&self.state)?,
            attempts: self.attempts,
            retry_limit: self.retry_limit,
            remaining_parents: self.remaining_parents,
            ready_at: self.ready_at,
            parked_ready_at: self.parked_ready_at,
            claimed_by: self.claimed_by,
            lease_expires_at: self.lease_expires_at,
            results: self.results,
            error: self.error,
            last_attempted_at: self.last_attempted_at,
            processed_at: self.processed_at,
            version: self.version,
        })
    }
}

impl PgClaimed {
    pub fn into_claimed(self) -> Result<ClaimedStep> {
        Ok(ClaimedStep {
            step_id: self.step_id,
            task_id: self.task_id,
            position: self.position as i32,
            attempts: self.attempts,
            retry_limit: self.retry_limit,
            version: self.version,
            lease_expires_at: self.lease_expires_at,
            named_task_id: self.named_task_id,
            task_state: task_state(&self.task_state)?,
            context: self.context,
            task_created_at: self.task_created_at,
            started_version: self.started_version,
            steps_total: self.steps_total,
            steps_done: self.steps_done,
            steps_blocked: self.steps_blocked,
            task_version: self.task_version,
            parent_results: self.parent_results,
            batch_index: self.batch_index,
            batch: self.batch,
            checkpoint: self.checkpoint,
        })
    }
}

impl PgTemplate {
    pub fn into_row(self) -> TemplateRow {
        TemplateRow {
            named_task_id: self.named_task_id,
            namespace: self.namespace,
            name: self.name,
            version: self.version,
            definition: self.definition,
            definition_hash: self.definition_hash,
            revision: self.revision as i64,
            created_at: self.created_at,
        }
    }
}

/// Every composite type of the function files with its struct's field names in order (for the
/// catalog test).
#[cfg(test)]
pub(crate) fn composite_fields() -> Vec<(&'static str, Vec<String>)> {
    // A struct serializes its fields in declaration order (a `Value` would sort them); the
    // defaults hold no quotes, so every `"name":` is a key.
    fn names<T: Serialize + Default>() -> Vec<String> {
        let text = serde_json::to_string(&T::default()).expect("serializes");
        text.split('"')
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[1].starts_with(':'))
            .map(|w| w[0].to_owned())
            .collect()
    }
    vec![
        ("tasker_guard_v1", names::<PgGuard>()),
        ("tasker_new_task_v2", names::<PgNewTask>()),
        ("tasker_new_step_v2", names::<PgNewStep>()),
        ("tasker_step_update_v1", names::<PgStepUpdate>()),
        ("tasker_decrement_v1", names::<PgDecrement>()),
        ("tasker_task_update_v2", names::<PgTaskUpdate>()),
        ("tasker_transition_v1", names::<PgTransition>()),
        ("tasker_claim_spec_v1", names::<PgClaimSpec>()),
        ("tasker_notify_v1", names::<PgNotify>()),
        ("tasker_claimed_v2", names::<PgClaimed>()),
        ("tasker_task_v2", names::<PgTask>()),
        ("tasker_step_v1", names::<PgStep>()),
    ]
}
