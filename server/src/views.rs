//! The JSON bodies: the original engine's serializers (task, step, handler), built from the
//! core's snapshots. Each is a type deriving [`ToSchema`], so `/openapi.json` describes exactly
//! what the handlers send ([`crate::openapi`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tasker_core::{StepSnapshot, StepState, TaskSnapshot, TaskState, TaskSummary, TaskTemplate};
use utoipa::ToSchema;

pub fn full_name(namespace: &str, name: &str, version: &str) -> String {
    format!("{namespace}.{name}@{version}")
}

/// A step of a task.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub workflow_step_id: i64,
    pub task_id: i64,
    pub name: String,
    pub handler: String,
    pub status: StepState,
    /// Attempts made so far.
    pub attempts: i64,
    /// Attempts allowed in all, the first included.
    pub retry_limit: i64,
    /// From the template (null when the template is gone).
    pub retryable: Option<bool>,
    pub skippable: Option<bool>,
    /// What the handler returned (or what an operator resolved it with): any JSON.
    pub results: Value,
    /// The last failure: `{message, kind, attempt, at, retry_after_seconds?, detail?}`.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// The steps this one depends on.
    pub parents: Vec<String>,
    /// The steps that depend on this one.
    pub children: Vec<String>,
    pub processed_at: Option<String>,
    /// When a failed step runs again.
    pub next_attempt_at: Option<String>,
    pub last_attempted_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// A fan-out instance's batch worker step (`work` for `work_003`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_of: Option<String>,
    /// A fan-out instance's 0-based place among the items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
    /// The task this step created (it returned a ChildTask; the newest after a retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_task_id: Option<i64>,
    /// What a waiting step waits for: `{signal?, correlation_id?, timeout_at?}` or
    /// `{child_task_id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub waiting_for: Option<Value>,
}

/// A step as `GET /tasks/:id/workflow_steps/:step` shows it.
pub fn step(task: &TaskSnapshot, s: &StepSnapshot, template: Option<&TaskTemplate>) -> StepView {
    // An instance is its batch worker's step in the template.
    let tname = s.template_name();
    let st = template.and_then(|t| t.step_index(tname).map(|i| &t.steps[i]));
    StepView {
        workflow_step_id: s.id,
        task_id: task.id,
        name: s.name.clone(),
        handler: s.handler.clone(),
        status: s.status,
        attempts: s.attempts,
        retry_limit: s.max_attempts,
        retryable: st.map(|x| x.retryable),
        skippable: st.map(|x| x.skippable),
        results: s.results.clone(),
        error: s.error.clone(),
        parents: s.depends_on.clone(),
        children: task.children_of(tname),
        processed_at: s.completed_at.clone(),
        next_attempt_at: s.next_attempt_at.clone(),
        last_attempted_at: s.last_attempted_at.clone(),
        duration_ms: s.duration_ms,
        instance_of: s.instance_of.clone(),
        batch_index: s.batch_index,
        child_task_id: s.child_task_id,
        waiting_for: s.waiting_for.clone(),
    }
}

/// The fields a task line and a whole task share.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskHead {
    pub task_id: i64,
    pub name: String,
    pub namespace: String,
    pub version: String,
    /// `namespace.name@version`
    pub full_name: String,
    pub status: TaskState,
    pub complete: bool,
    pub requested_at: String,
    pub completed_at: Option<String>,
    /// A child task's parent task (null for a task created any other way).
    pub parent_task_id: Option<i64>,
}

fn head(
    id: i64,
    namespace: &str,
    name: &str,
    version: &str,
    status: TaskState,
    requested_at: &str,
    completed_at: &Option<String>,
    parent_task_id: Option<i64>,
) -> TaskHead {
    TaskHead {
        task_id: id,
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        version: version.to_owned(),
        full_name: full_name(namespace, name, version),
        status,
        complete: status == TaskState::Complete,
        requested_at: requested_at.to_owned(),
        completed_at: completed_at.clone(),
        parent_task_id,
    }
}

/// A task with its steps.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    #[serde(flatten)]
    pub head: TaskHead,
    #[schema(value_type = Object)]
    pub context: Value,
    pub initiator: String,
    pub source_system: String,
    pub reason: String,
    #[schema(value_type = Vec<String>)]
    pub tags: Value,
    #[schema(value_type = Vec<String>)]
    pub bypass_steps: Value,
    pub idempotency_key: Option<String>,
    pub updated_at: String,
    /// A child task's step of its parent that waits for it (null otherwise).
    pub parent_step: Option<String>,
    pub workflow_steps: Vec<StepView>,
}

/// A task with its steps, as `GET /tasks/:id` shows it.
pub fn task(t: &TaskSnapshot, template: Option<&TaskTemplate>) -> TaskView {
    TaskView {
        head: head(
            t.id,
            &t.namespace,
            &t.name,
            &t.version,
            t.status,
            &t.created_at,
            &t.completed_at,
            t.parent_task_id,
        ),
        parent_step: t.parent_step.clone(),
        context: t.context.clone(),
        initiator: t.initiator.clone(),
        source_system: t.source_system.clone(),
        reason: t.reason.clone(),
        tags: t.tags.clone(),
        bypass_steps: t.bypass_steps.clone(),
        idempotency_key: t.idempotency_key.clone(),
        updated_at: t.updated_at.clone(),
        workflow_steps: t.steps.iter().map(|s| step(t, s, template)).collect(),
    }
}

/// A line of `GET /tasks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskLine {
    #[serde(flatten)]
    pub head: TaskHead,
    pub steps_total: i64,
    /// Steps complete, resolved by hand or cancelled.
    pub steps_done: i64,
}

pub fn summary(t: &TaskSummary) -> TaskLine {
    TaskLine {
        head: head(
            t.id,
            &t.namespace,
            &t.name,
            &t.version,
            t.status,
            &t.created_at,
            &t.completed_at,
            t.parent_task_id,
        ),
        steps_total: t.steps_total,
        steps_done: t.steps_done,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskEnvelope {
    pub task: TaskView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepEnvelope {
    pub step: StepView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepList {
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    pub limit: i64,
    pub offset: i64,
    /// Tasks matching the filters.
    pub total: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskLine>,
    pub pagination: Pagination,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cancelled {
    pub cancelled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionList {
    pub transitions: Vec<tasker_core::engine::TransitionEntry>,
}

/// `PATCH /tasks/:id` (also accepted wrapped in `{task: {...}}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskChange {
    pub reason: Option<String>,
    pub tags: Option<Vec<String>>,
}

/// `PATCH /tasks/:id/workflow_steps/:step` (also accepted wrapped in `{workflow_step: {...}}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepChange {
    /// Attempts allowed in all, the first included (1 to 10000).
    pub retry_limit: i64,
}

/// `POST /tasks/:id/workflow_steps/:step/resolve`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Resolution {
    /// The step's results, as if its handler had returned them: any JSON.
    pub results: Value,
}

// ---- handlers (templates) ----

#[derive(Debug, Serialize, ToSchema)]
pub struct NamespaceLine {
    pub name: String,
    pub handler_count: usize,
}

/// `GET /events`: every event a subscriber may hear.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventCatalog {
    pub events: Vec<tasker_core::events::CatalogEntry>,
    pub generated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NamespaceList {
    pub namespaces: Vec<NamespaceLine>,
    pub total_namespaces: usize,
    pub generated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HandlerLine {
    pub name: String,
    pub namespace: String,
    pub versions: Vec<String>,
    pub latest_version: Option<String>,
    pub handler_count: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NamespaceHandlers {
    pub namespace: String,
    pub handlers: Vec<HandlerLine>,
    pub total_handlers: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepTemplateView {
    pub name: String,
    pub handler_class: String,
    pub handler_config: Value,
    pub depends_on_steps: Vec<String>,
    pub default_retryable: bool,
    pub default_retry_limit: u32,
    pub skippable: bool,
    pub timeout_seconds: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Edge {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DependencyGraph {
    pub nodes: Vec<String>,
    pub edges: Vec<Edge>,
    /// Steps by dependency level, then template order.
    pub execution_order: Vec<String>,
}

/// A registered template.
#[derive(Debug, Serialize, ToSchema)]
pub struct HandlerView {
    pub name: String,
    pub namespace: String,
    pub version: String,
    pub full_name: String,
    pub description: Option<String>,
    /// The JSON Schema a task's context must satisfy.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    pub step_templates: Vec<StepTemplateView>,
    pub dependency_graph: DependencyGraph,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HandlerEnvelope {
    pub handler: HandlerView,
    pub generated_at: String,
}

/// A template as `GET /handlers/:namespace/:name` shows it.
pub fn handler(t: &TaskTemplate) -> HandlerView {
    let levels = t.levels();
    let mut order: Vec<usize> = (0..t.steps.len()).collect();
    order.sort_by_key(|&i| (levels[i], i));
    let version = t.version.to_string();
    HandlerView {
        name: t.name.clone(),
        namespace: t.namespace.clone(),
        full_name: full_name(&t.namespace, &t.name, &version),
        version,
        description: t.description.clone(),
        schema: t.schema.clone(),
        step_templates: t
            .steps
            .iter()
            .map(|s| StepTemplateView {
                name: s.name.clone(),
                handler_class: s.handler.clone(),
                handler_config: (*s.handler_config).clone(),
                depends_on_steps: s.depends_on.clone(),
                default_retryable: s.retryable,
                default_retry_limit: s.max_attempts,
                skippable: s.skippable,
                timeout_seconds: s.timeout_seconds,
            })
            .collect(),
        dependency_graph: DependencyGraph {
            nodes: t.steps.iter().map(|s| s.name.clone()).collect(),
            edges: t
                .steps
                .iter()
                .flat_map(|s| {
                    s.depends_on.iter().map(move |d| Edge {
                        from: d.clone(),
                        to: s.name.clone(),
                    })
                })
                .collect(),
            execution_order: order.iter().map(|&i| t.steps[i].name.clone()).collect(),
        },
    }
}

// ---- health ----

#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    pub alive: bool,
    pub timestamp: String,
    pub service: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// `healthy` or `unhealthy`.
    pub status: String,
    pub message: String,
    pub response_time_ms: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Checks {
    pub database: Check,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    pub checks: Checks,
    pub timestamp: String,
    pub check_duration: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Retries {
    pub in_backoff: i64,
    pub exhausted_retries: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorRates {
    pub tasks: f64,
    pub steps: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusMetrics {
    /// `total` and a count per task state.
    pub tasks: std::collections::BTreeMap<String, i64>,
    /// `total` and a count per step state.
    pub steps: std::collections::BTreeMap<String, i64>,
    pub retries: Retries,
    pub error_rates: ErrorRates,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// False (and HTTP 503) when more than half of the tasks or steps are in error.
    pub healthy: bool,
    pub status: String,
    pub metrics: StatusMetrics,
    pub timestamp: String,
    pub generation_duration: f64,
}

// ---- analytics ----

pub use tasker_core::engine::analytics::{Analytics, DurationStat, FailureStat, Slice};

#[derive(Debug, Serialize, ToSchema)]
pub struct SystemOverview {
    /// Tasks pending or in progress now.
    pub active_tasks_count: i64,
    pub total_namespaces_count: usize,
    pub unique_task_types_count: usize,
    /// Complete / (complete + error) over the last hour; 1 without data.
    pub system_health_score: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Trends {
    pub last_hour: Analytics,
    pub last_4_hours: Analytics,
    pub last_24_hours: Analytics,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Performance {
    pub system_overview: SystemOverview,
    pub performance_trends: Trends,
    pub generated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Bottlenecks {
    pub period_hours: u64,
    pub slowest_tasks: Vec<DurationStat>,
    pub slowest_steps: Vec<DurationStat>,
    /// The steps that fail most.
    pub error_patterns: Vec<FailureStat>,
    /// Every figure of the period.
    pub analysis: Analytics,
    pub generated_at: String,
}
