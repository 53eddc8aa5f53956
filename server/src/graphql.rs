//! `POST /graphql`: the original engine's queries (`tasks`, `tasksByStatus`, `task`, `step`)
//! and mutations (`createTask`, `updateTask`, `cancelTask`, `updateStep`, `cancelStep`, plus
//! `retryStep` and `resolveStep`), each checking its own permission as the original's controller mapped them.
//! Types come from the same core snapshots as the REST bodies.

use async_graphql::{
    ComplexObject, Context, EmptySubscription, ErrorExtensions, Json, Object, Schema, SimpleObject,
    ID,
};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tasker_core::{Engine, StepSnapshot, TaskFilter, TaskRequest, TaskSnapshot, TaskState};

use crate::auth::Principal;
use crate::AppState;

pub type TaskerSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

pub fn schema(engine: Engine) -> TaskerSchema {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .data(engine)
        .limit_depth(12)
        .limit_complexity(5_000)
        .finish()
}

fn deny(permission: &str) -> async_graphql::Error {
    async_graphql::Error::new(format!(
        "forbidden: the token lacks the permission {permission}"
    ))
    .extend_with(|_, e| e.set("code", "FORBIDDEN"))
}

fn require(ctx: &Context<'_>, permission: &str) -> async_graphql::Result<()> {
    match ctx.data_opt::<Principal>() {
        Some(p) if p.allows(permission) => Ok(()),
        _ => Err(deny(permission)),
    }
}

fn core_err(e: tasker_core::Error) -> async_graphql::Error {
    let code = match &e {
        tasker_core::Error::NotFound(_) => "NOT_FOUND",
        tasker_core::Error::Validation(_) | tasker_core::Error::Template(_) => "VALIDATION",
        tasker_core::Error::Conflict(_)
        | tasker_core::Error::IllegalTaskTransition { .. }
        | tasker_core::Error::IllegalStepTransition { .. } => "CONFLICT",
        _ => "INTERNAL",
    };
    async_graphql::Error::new(e.to_string()).extend_with(|_, x| x.set("code", code))
}

/// A step of a task.
#[derive(SimpleObject, Clone)]
pub struct Step {
    workflow_step_id: ID,
    task_id: i64,
    name: String,
    handler: String,
    status: String,
    attempts: i64,
    retry_limit: i64,
    results: Json<Value>,
    error: Option<Json<Value>>,
    parents: Vec<String>,
    children: Vec<String>,
    processed_at: Option<String>,
    next_attempt_at: Option<String>,
    last_attempted_at: Option<String>,
    /// A fan-out instance's batch worker step (`work` for `work_003`).
    instance_of: Option<String>,
    /// A fan-out instance's 0-based place among the items.
    batch_index: Option<u32>,
    /// The task this step created (it returned a ChildTask; the newest after a retry).
    child_task_id: Option<i64>,
    /// What a waiting step waits for: `{signal?, correlation_id?, timeout_at?}` or
    /// `{child_task_id}`.
    waiting_for: Option<Json<Value>>,
}

impl Step {
    fn new(t: &TaskSnapshot, s: &StepSnapshot) -> Step {
        Step {
            workflow_step_id: ID(s.id.to_string()),
            task_id: t.id,
            name: s.name.clone(),
            handler: s.handler.clone(),
            status: s.status.as_str().to_owned(),
            attempts: s.attempts,
            retry_limit: s.max_attempts,
            results: Json(s.results.clone()),
            error: s.error.clone().map(Json),
            parents: s.depends_on.clone(),
            children: t.children_of(s.template_name()),
            processed_at: s.completed_at.clone(),
            next_attempt_at: s.next_attempt_at.clone(),
            last_attempted_at: s.last_attempted_at.clone(),
            instance_of: s.instance_of.clone(),
            batch_index: s.batch_index,
            child_task_id: s.child_task_id,
            waiting_for: s.waiting_for.clone().map(Json),
        }
    }
}

/// A task; `workflowSteps` and `context` are loaded when asked for.
#[derive(SimpleObject, Clone)]
#[graphql(complex)]
pub struct Task {
    task_id: i64,
    name: String,
    namespace: String,
    version: String,
    full_name: String,
    status: String,
    complete: bool,
    requested_at: String,
    completed_at: Option<String>,
    /// A child task's parent task (null for a task created any other way).
    parent_task_id: Option<i64>,
    #[graphql(skip)]
    snapshot: Option<TaskSnapshot>,
}

impl Task {
    fn from_snapshot(t: TaskSnapshot) -> Task {
        Task {
            task_id: t.id,
            name: t.name.clone(),
            namespace: t.namespace.clone(),
            version: t.version.clone(),
            full_name: crate::views::full_name(&t.namespace, &t.name, &t.version),
            status: t.status.as_str().to_owned(),
            complete: t.status == TaskState::Complete,
            requested_at: t.created_at.clone(),
            completed_at: t.completed_at.clone(),
            parent_task_id: t.parent_task_id,
            snapshot: Some(t),
        }
    }

    async fn snapshot(&self, ctx: &Context<'_>) -> async_graphql::Result<TaskSnapshot> {
        match &self.snapshot {
            Some(s) => Ok(s.clone()),
            None => ctx
                .data::<Engine>()?
                .get_task(self.task_id)
                .await
                .map_err(core_err),
        }
    }
}

#[ComplexObject]
impl Task {
    async fn context(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<Value>> {
        Ok(Json(self.snapshot(ctx).await?.context))
    }
    async fn initiator(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(self.snapshot(ctx).await?.initiator)
    }
    async fn source_system(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(self.snapshot(ctx).await?.source_system)
    }
    async fn reason(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(self.snapshot(ctx).await?.reason)
    }
    /// A child task's step of its parent that waits for it.
    async fn parent_step(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(self.snapshot(ctx).await?.parent_step)
    }
    async fn tags(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<Value>> {
        Ok(Json(self.snapshot(ctx).await?.tags))
    }
    async fn workflow_steps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Step>> {
        let t = self.snapshot(ctx).await?;
        Ok(t.steps.iter().map(|s| Step::new(&t, s)).collect())
    }
}

async fn list(
    ctx: &Context<'_>,
    state: Option<TaskState>,
    limit: i32,
    offset: i32,
    sort_order: Option<String>,
) -> async_graphql::Result<Vec<Task>> {
    if !(0..=100).contains(&limit) || offset < 0 {
        return Err(async_graphql::Error::new(
            "limit must be 0 to 100 and offset at least 0",
        ));
    }
    let oldest_first = match sort_order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            return Err(async_graphql::Error::new(format!(
                "sortOrder must be asc or desc, got {o:?}"
            )))
        }
    };
    let filter = TaskFilter {
        state,
        limit: Some(limit as i64),
        offset: Some(offset as i64),
        oldest_first,
        ..Default::default()
    };
    let rows = ctx
        .data::<Engine>()?
        .list_tasks(&filter)
        .await
        .map_err(core_err)?;
    Ok(rows
        .into_iter()
        .map(|t| Task {
            task_id: t.id,
            full_name: crate::views::full_name(&t.namespace, &t.name, &t.version),
            name: t.name,
            namespace: t.namespace,
            version: t.version,
            status: t.status.as_str().to_owned(),
            complete: t.status == TaskState::Complete,
            requested_at: t.created_at,
            completed_at: t.completed_at,
            parent_task_id: t.parent_task_id,
            snapshot: None,
        })
        .collect())
}

async fn find_step(
    ctx: &Context<'_>,
    task_id: i64,
    step: &ID,
) -> async_graphql::Result<(TaskSnapshot, String)> {
    let t = ctx
        .data::<Engine>()?
        .get_task(task_id)
        .await
        .map_err(core_err)?;
    let name = t
        .steps
        .iter()
        .find(|s| s.name == step.as_str() || s.id.to_string() == step.as_str())
        .map(|s| s.name.clone())
        .ok_or_else(|| {
            async_graphql::Error::new(format!(
                "task {task_id} has no step named or numbered {:?}",
                step.as_str()
            ))
            .extend_with(|_, e| e.set("code", "NOT_FOUND"))
        })?;
    Ok((t, name))
}

async fn step_now(ctx: &Context<'_>, task_id: i64, name: &str) -> async_graphql::Result<Step> {
    let t = ctx
        .data::<Engine>()?
        .get_task(task_id)
        .await
        .map_err(core_err)?;
    let s = t.step(name).expect("the step exists");
    Ok(Step::new(&t, s))
}

/// One event of the catalogue (`eventCatalog`; `GET /events` in REST).
#[derive(SimpleObject)]
struct EventEntry {
    name: String,
    category: String,
    description: String,
    payload_keys: Vec<String>,
    /// False for the original's events with no meaning here (`note` says why).
    emitted: bool,
    note: Option<String>,
    fired_by: Vec<String>,
    source: Option<String>,
}

/// A schedule (`schedules`; `GET /schedules` in REST).
#[derive(SimpleObject)]
struct Schedule {
    name: String,
    template: String,
    namespace: String,
    version: Option<String>,
    cron: String,
    timezone: String,
    context: Json<Value>,
    overlap: String,
    catch_up: String,
    paused: bool,
    next_run_at: Option<String>,
    last_run_at: Option<String>,
    last_task_id: Option<i64>,
    fired: i64,
    skipped: i64,
    origin: String,
}

impl From<tasker_core::engine::ScheduleInfo> for Schedule {
    fn from(s: tasker_core::engine::ScheduleInfo) -> Schedule {
        Schedule {
            name: s.name,
            template: s.template,
            namespace: s.namespace,
            version: s.version,
            cron: s.cron,
            timezone: s.timezone,
            context: Json(s.context),
            overlap: s.overlap,
            catch_up: s.catch_up,
            paused: s.paused,
            next_run_at: s.next_run_at,
            last_run_at: s.last_run_at,
            last_task_id: s.last_task_id,
            fired: s.fired,
            skipped: s.skipped,
            origin: s.origin,
        }
    }
}

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// Tasks, newest first (sortOrder asc: oldest first); at most 100.
    async fn tasks(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] limit: i32,
        #[graphql(default = 0)] offset: i32,
        sort_order: Option<String>,
    ) -> async_graphql::Result<Vec<Task>> {
        require(ctx, "tasker.task:index")?;
        list(ctx, None, limit, offset, sort_order).await
    }

    /// Tasks in one state.
    async fn tasks_by_status(
        &self,
        ctx: &Context<'_>,
        status: String,
        #[graphql(default = 20)] limit: i32,
        #[graphql(default = 0)] offset: i32,
        sort_order: Option<String>,
    ) -> async_graphql::Result<Vec<Task>> {
        require(ctx, "tasker.task:index")?;
        let state = status
            .parse::<TaskState>()
            .map_err(|m| async_graphql::Error::new(format!("status: {m}")))?;
        list(ctx, Some(state), limit, offset, sort_order).await
    }

    async fn task(&self, ctx: &Context<'_>, task_id: i64) -> async_graphql::Result<Task> {
        require(ctx, "tasker.task:show")?;
        let t = ctx
            .data::<Engine>()?
            .get_task(task_id)
            .await
            .map_err(core_err)?;
        Ok(Task::from_snapshot(t))
    }

    /// Every event a subscriber may hear (the original's included), defined and declared ones.
    async fn event_catalog(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<EventEntry>> {
        require(ctx, "tasker.event:index")?;
        let cat = ctx
            .data::<Engine>()?
            .event_catalog()
            .await
            .map_err(core_err)?;
        Ok(cat
            .into_iter()
            .map(|e| EventEntry {
                name: e.name,
                category: e.category,
                description: e.description,
                payload_keys: e.payload_keys,
                emitted: e.emitted,
                note: e.note,
                fired_by: e.fired_by,
                source: e.source,
            })
            .collect())
    }

    /// Every schedule, by name, with its next run time.
    async fn schedules(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Schedule>> {
        require(ctx, "tasker.schedule:index")?;
        let all = ctx
            .data::<Engine>()?
            .list_schedules()
            .await
            .map_err(core_err)?;
        Ok(all.into_iter().map(Schedule::from).collect())
    }

    async fn schedule(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<Schedule> {
        require(ctx, "tasker.schedule:show")?;
        let s = ctx
            .data::<Engine>()?
            .get_schedule(&name)
            .await
            .map_err(core_err)?;
        Ok(s.into())
    }

    /// A step by name or id.
    async fn step(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        step_id: ID,
    ) -> async_graphql::Result<Step> {
        require(ctx, "tasker.workflow_step:show")?;
        let (t, name) = find_step(ctx, task_id, &step_id).await?;
        Ok(Step::new(&t, t.step(&name).expect("found")))
    }
}

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    #[allow(clippy::too_many_arguments)]
    async fn create_task(
        &self,
        ctx: &Context<'_>,
        name: String,
        namespace: Option<String>,
        version: Option<String>,
        context: Option<Json<Value>>,
        initiator: Option<String>,
        source_system: Option<String>,
        reason: Option<String>,
        tags: Option<Vec<String>>,
        bypass_steps: Option<Vec<String>>,
        idempotency_key: Option<String>,
        deadline_seconds: Option<f64>,
    ) -> async_graphql::Result<Task> {
        require(ctx, "tasker.task:create")?;
        let engine = ctx.data::<Engine>()?;
        let req = TaskRequest {
            name,
            namespace,
            version,
            context: context.map(|c| c.0).unwrap_or(Value::Null),
            initiator,
            source_system,
            reason,
            tags: tags.unwrap_or_default(),
            bypass_steps: bypass_steps.unwrap_or_default(),
            idempotency_key,
            priority: 0,
            deadline_seconds,
        };
        let id = engine.create_task(req).await.map_err(core_err)?;
        Ok(Task::from_snapshot(
            engine.get_task(id).await.map_err(core_err)?,
        ))
    }

    async fn update_task(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        reason: Option<String>,
        tags: Option<Vec<String>>,
    ) -> async_graphql::Result<Task> {
        require(ctx, "tasker.task:update")?;
        let engine = ctx.data::<Engine>()?;
        engine
            .update_task(task_id, reason, tags)
            .await
            .map_err(core_err)?;
        Ok(Task::from_snapshot(
            engine.get_task(task_id).await.map_err(core_err)?,
        ))
    }

    async fn cancel_task(&self, ctx: &Context<'_>, task_id: i64) -> async_graphql::Result<Task> {
        require(ctx, "tasker.task:cancel")?;
        let engine = ctx.data::<Engine>()?;
        engine.cancel_task(task_id).await.map_err(core_err)?;
        Ok(Task::from_snapshot(
            engine.get_task(task_id).await.map_err(core_err)?,
        ))
    }

    /// The original's `updateStep`: only `retryLimit` can change (steps read the task's
    /// context; there are no per-step inputs).
    async fn update_step(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        step_id: ID,
        retry_limit: Option<i64>,
        inputs: Option<Json<Value>>,
    ) -> async_graphql::Result<Step> {
        require(ctx, "tasker.workflow_step:update")?;
        if inputs.is_some() {
            return Err(async_graphql::Error::new(
                "updateStep: inputs cannot change (steps read the task's context; there are no per-step inputs)",
            ));
        }
        let Some(limit) = retry_limit else {
            return Err(async_graphql::Error::new("updateStep: give retryLimit"));
        };
        let (_, name) = find_step(ctx, task_id, &step_id).await?;
        ctx.data::<Engine>()?
            .set_step_retry_limit(task_id, &name, limit)
            .await
            .map_err(core_err)?;
        step_now(ctx, task_id, &name).await
    }

    /// The original's `cancelStep`: the step and the steps that depend on it are cancelled.
    async fn cancel_step(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        step_id: ID,
    ) -> async_graphql::Result<Step> {
        require(ctx, "tasker.workflow_step:cancel")?;
        let (_, name) = find_step(ctx, task_id, &step_id).await?;
        ctx.data::<Engine>()?
            .cancel_step(task_id, &name)
            .await
            .map_err(core_err)?;
        step_now(ctx, task_id, &name).await
    }

    async fn retry_step(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        step_id: ID,
    ) -> async_graphql::Result<Step> {
        require(ctx, "tasker.workflow_step:retry")?;
        let (_, name) = find_step(ctx, task_id, &step_id).await?;
        ctx.data::<Engine>()?
            .retry_step(task_id, &name)
            .await
            .map_err(core_err)?;
        step_now(ctx, task_id, &name).await
    }

    async fn resolve_step(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        step_id: ID,
        results: Option<Json<Value>>,
    ) -> async_graphql::Result<Step> {
        require(ctx, "tasker.workflow_step:update")?;
        let (_, name) = find_step(ctx, task_id, &step_id).await?;
        ctx.data::<Engine>()?
            .resolve_step_manually(task_id, &name, or_null(results))
            .await
            .map_err(core_err)?;
        step_now(ctx, task_id, &name).await
    }

    /// Sends a signal to a task: completes its steps waiting for it (the count), or keeps it
    /// for the first that waits (0).
    async fn signal(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        name: String,
        payload: Option<Json<Value>>,
    ) -> async_graphql::Result<usize> {
        require(ctx, "tasker.task:signal")?;
        ctx.data::<Engine>()?
            .signal(task_id, &name, or_null(payload))
            .await
            .map_err(core_err)
    }

    /// Completes a waiting step.
    async fn complete_step(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        step_id: ID,
        results: Option<Json<Value>>,
    ) -> async_graphql::Result<Step> {
        require(ctx, "tasker.workflow_step:complete")?;
        let (_, name) = find_step(ctx, task_id, &step_id).await?;
        ctx.data::<Engine>()?
            .complete_step(task_id, &name, or_null(results))
            .await
            .map_err(core_err)?;
        step_now(ctx, task_id, &name).await
    }

    /// Fails a waiting step (retried unless `permanent`).
    async fn fail_step(
        &self,
        ctx: &Context<'_>,
        task_id: i64,
        step_id: ID,
        message: String,
        #[graphql(default)] permanent: bool,
    ) -> async_graphql::Result<Step> {
        require(ctx, "tasker.workflow_step:fail")?;
        let (_, name) = find_step(ctx, task_id, &step_id).await?;
        ctx.data::<Engine>()?
            .fail_step(task_id, &name, &message, permanent)
            .await
            .map_err(core_err)?;
        step_now(ctx, task_id, &name).await
    }

    /// Creates a schedule: a task of the template at each tick of `cron` (5 fields, or 6
    /// with seconds first); `overlap`: skip, allow, cancel_previous; `catchUp`: none,
    /// latest, all.
    #[allow(clippy::too_many_arguments)]
    async fn create_schedule(
        &self,
        ctx: &Context<'_>,
        name: String,
        template: String,
        cron: String,
        context: Option<Json<Value>>,
        namespace: Option<String>,
        version: Option<String>,
        #[graphql(default_with = "\"UTC\".to_string()")] timezone: String,
        #[graphql(default_with = "\"skip\".to_string()")] overlap: String,
        #[graphql(default_with = "\"latest\".to_string()")] catch_up: String,
    ) -> async_graphql::Result<Schedule> {
        require(ctx, "tasker.schedule:create")?;
        let invalid = |m: String| core_err(tasker_core::Error::Validation(m));
        let spec = tasker_core::schedule::ScheduleSpec {
            context: or_null(context),
            namespace,
            version,
            timezone,
            overlap: overlap.parse().map_err(invalid)?,
            catch_up: catch_up.parse().map_err(invalid)?,
            ..tasker_core::schedule::ScheduleSpec::new(&name, &template, &cron)
        };
        let s = ctx
            .data::<Engine>()?
            .create_schedule(spec)
            .await
            .map_err(core_err)?;
        Ok(s.into())
    }

    async fn pause_schedule(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<Schedule> {
        require(ctx, "tasker.schedule:update")?;
        let s = ctx
            .data::<Engine>()?
            .pause_schedule(&name)
            .await
            .map_err(core_err)?;
        Ok(s.into())
    }

    async fn resume_schedule(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<Schedule> {
        require(ctx, "tasker.schedule:update")?;
        let s = ctx
            .data::<Engine>()?
            .resume_schedule(&name)
            .await
            .map_err(core_err)?;
        Ok(s.into())
    }

    /// Deletes a schedule (its tasks stay); its name.
    async fn delete_schedule(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<String> {
        require(ctx, "tasker.schedule:destroy")?;
        ctx.data::<Engine>()?
            .delete_schedule(&name)
            .await
            .map_err(core_err)?;
        Ok(name)
    }

    /// Completes every step waiting with this correlation id; the count.
    async fn complete_correlated(
        &self,
        ctx: &Context<'_>,
        correlation_id: String,
        results: Option<Json<Value>>,
    ) -> async_graphql::Result<usize> {
        require(ctx, "tasker.workflow_step:complete")?;
        ctx.data::<Engine>()?
            .complete_correlated(&correlation_id, or_null(results))
            .await
            .map_err(core_err)
    }
}

/// The route: `{query, variables, operationName}` in, the GraphQL response out (200 with
/// `errors` for field errors, as GraphQL does).
pub async fn handle(
    State(st): State<AppState>,
    principal: Option<Extension<Principal>>,
    body: Result<axum::Json<async_graphql::Request>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, crate::error::ApiError> {
    let axum::Json(req) = body?;
    if req.query.trim().is_empty() {
        return Err(crate::error::ApiError::bad_request(
            "request body: query is required ({\"query\": \"...\", \"variables\": {...}})",
        ));
    }
    let principal = principal
        .map(|Extension(p)| p)
        .unwrap_or(Principal::Anonymous);
    let resp = st.graphql.execute(req.data(principal)).await;
    Ok(axum::Json(resp).into_response())
}

/// An optional JSON argument; null when not given.
fn or_null(v: Option<Json<Value>>) -> Value {
    v.map(|j| j.0).unwrap_or(Value::Null)
}
