//! The handlers of every route (see `auth::ROUTES` for who may call them).

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use tasker_core::{diagram, Engine, TaskFilter, TaskRequest, TaskSnapshot, TaskState};

use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::views::{self, *};
use crate::AppState;

type ApiResult<T = Response> = Result<T, ApiError>;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn task_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(format!("task id must be a positive integer, got {raw:?}"))
    })
}

/// The query parameters, refusing any not in `known`.
fn params(
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    known: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let Query(q) = q?;
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?} (known: {})",
            known.join(", ")
        )));
    }
    Ok(q)
}

fn int_param(
    q: &HashMap<String, String>,
    name: &str,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (0..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "query parameter {name} must be an integer from 0 to {max}, got {v:?}"
            ))),
        },
    }
}

/// A time query parameter: RFC 3339 (`2026-11-26T10:00:00Z`) or epoch milliseconds.
fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = q.get(name) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "query parameter {name} must be an RFC 3339 time (2026-11-26T10:00:00Z) or epoch milliseconds, got {v:?}: {e}"
            ))
        })
}

async fn snapshot_with_template(
    engine: &Engine,
    id: i64,
) -> ApiResult<(
    TaskSnapshot,
    Option<std::sync::Arc<tasker_core::TaskTemplate>>,
)> {
    let t = engine.get_task(id).await?;
    let template = engine
        .template(Some(&t.namespace), &t.name, Some(&t.version))
        .await
        .ok();
    Ok((t, template))
}

// ---- tasks ----

/// Tasks, newest or oldest first, filtered and paged.
#[utoipa::path(get, path = "/tasks", tag = "tasks",
    params(
        ("status" = Option<TaskState>, Query, description = "Only tasks in this state"),
        ("name" = Option<String>, Query, description = "Only tasks of this template name"),
        ("namespace" = Option<String>, Query, description = "Only tasks of this namespace"),
        ("limit" = Option<i64>, Query, description = "At most this many (default 20, at most 1000)"),
        ("offset" = Option<i64>, Query, description = "Skip this many"),
        ("sort_by" = Option<String>, Query, description = "task_id, requested_at or created_at (the same order)"),
        ("sort_order" = Option<String>, Query, description = "asc (default) or desc"),
        ("since" = Option<String>, Query, description = "Only tasks created at or after this time (RFC 3339, or epoch milliseconds)"),
        ("until" = Option<String>, Query, description = "Only tasks created before this time (RFC 3339, or epoch milliseconds)"),
    ),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody)))]
pub async fn list_tasks(
    State(st): State<AppState>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let q = params(
        q,
        &[
            "status",
            "name",
            "namespace",
            "limit",
            "offset",
            "sort_by",
            "sort_order",
            "since",
            "until",
        ],
    )?;
    let state = q
        .get("status")
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|m| ApiError::bad_request(format!("query parameter status: {m}")))
        })
        .transpose()?;
    let limit = int_param(&q, "limit", 20, 1000)?;
    let offset = int_param(&q, "offset", 0, i64::MAX)?;
    match q.get("sort_by").map(String::as_str) {
        None | Some("task_id" | "requested_at" | "created_at") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "query parameter sort_by: {other:?} is not supported (task_id, requested_at or created_at: the same order)"
            )))
        }
    }
    let oldest_first = match q.get("sort_order").map(String::as_str) {
        None | Some("asc") => true,
        Some("desc") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "query parameter sort_order must be asc or desc, got {other:?}"
            )))
        }
    };
    let filter = TaskFilter {
        state,
        name: q.get("name").cloned(),
        namespace: q.get("namespace").cloned(),
        limit: Some(limit),
        offset: Some(offset),
        oldest_first,
        created_from: time_param(&q, "since")?,
        created_until: time_param(&q, "until")?,
    };
    let (tasks, total) = tokio::try_join!(
        st.engine.list_tasks(&filter),
        st.engine.count_tasks(&filter)
    )?;
    Ok(Json(TaskList {
        tasks: tasks.iter().map(views::summary).collect(),
        pagination: Pagination {
            limit,
            offset,
            total,
        },
    })
    .into_response())
}

/// The create body: the original's OpenAPI shape, or the same wrapped in `{task: {...}}` (what
/// its Rails controller received after parameter wrapping).
fn task_request(body: Value) -> Result<TaskRequest, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "request body: expected a JSON object {name, context, ...}",
        ));
    };
    if !obj.contains_key("name") {
        if let Some(Value::Object(inner)) = obj.remove("task") {
            obj = inner;
        }
    }
    match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(other) if !other.is_string() => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "name must be a string",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid parameters: requires task name (name)",
            ))
        }
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("request body: {e}"),
        )
    })
}

/// Creates a task (201), or answers with the task an idempotency key already names (200).
#[utoipa::path(post, path = "/tasks", tag = "tasks",
    request_body(content = TaskRequest, description = "The task; also accepted wrapped in {\"task\": {...}}"),
    responses((status = 201, body = TaskEnvelope), (status = 200, body = TaskEnvelope, description = "The task an idempotency key already named"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "No such template"), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_task(
    State(st): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let req = task_request(body)?;
    let (id, created) = st.creator.create(req).await?;
    let (t, template) = snapshot_with_template(&st.engine, id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(TaskEnvelope {
            task: views::task(&t, template.as_deref()),
        }),
    )
        .into_response())
}

/// A task with its steps.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = TaskEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_task(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let (t, template) = snapshot_with_template(&st.engine, task_id(&id)?).await?;
    Ok(Json(TaskEnvelope {
        task: views::task(&t, template.as_deref()),
    })
    .into_response())
}

/// Cancels a task: steps not started are cancelled, steps in flight finish.
#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = Cancelled), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Already finished")))]
pub async fn cancel_task(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    st.engine.cancel_task(task_id(&id)?).await?;
    Ok(Json(Cancelled { cancelled: true }).into_response())
}

/// `PATCH /tasks/:id` (also PUT): only `reason` and `tags` change, as in the original.
#[utoipa::path(patch, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    request_body(content = TaskChange, description = "Also accepted wrapped in {\"task\": {...}}"),
    responses((status = 200, body = TaskEnvelope), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_task(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = task_id(&id)?;
    let Json(body) = body?;
    let c: TaskChange = serde_json::from_value(match body {
        Value::Object(mut m)
            if !m.contains_key("reason") && !m.contains_key("tags") && m.contains_key("task") =>
        {
            m.remove("task").unwrap_or(Value::Null)
        }
        other => other,
    })
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("request body: {e} (only reason and tags can change)"),
        )
    })?;
    st.engine.update_task(id, c.reason, c.tags).await?;
    let (t, template) = snapshot_with_template(&st.engine, id).await?;
    Ok(Json(TaskEnvelope {
        task: views::task(&t, template.as_deref()),
    })
    .into_response())
}

/// The audit history of a task and its steps, in order.
#[utoipa::path(get, path = "/tasks/{id}/transitions", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = TransitionList), (status = 404, body = ErrorBody)))]
pub async fn transitions(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = task_id(&id)?;
    let t = st.engine.get_task(id).await?;
    let names: HashMap<i64, &str> = t.steps.iter().map(|s| (s.id, s.name.as_str())).collect();
    let rows = st.engine.transitions(id).await?;
    let transitions = rows
        .iter()
        .map(|r| TransitionView {
            task_id: r.task_id,
            workflow_step_id: r.step_id,
            step_name: r
                .step_id
                .and_then(|s| names.get(&s).map(|n| (*n).to_owned())),
            from_state: r.from_state.map(str::to_owned),
            to_state: r.to_state.to_owned(),
            metadata: serde_json::from_str::<Value>(&r.metadata).unwrap_or(Value::Null),
            sort_key: r.sort_key,
            created_at: tasker_core::clock::format_ms(r.created_at),
        })
        .collect();
    Ok(Json(TransitionList { transitions }).into_response())
}

// ---- steps ----

/// The step named `raw`, or whose id it is.
fn find_step<'a>(
    t: &'a TaskSnapshot,
    raw: &str,
) -> Result<&'a tasker_core::StepSnapshot, ApiError> {
    t.steps
        .iter()
        .find(|s| s.name == raw)
        .or_else(|| {
            raw.parse::<i64>()
                .ok()
                .and_then(|id| t.steps.iter().find(|s| s.id == id))
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "task {} has no step named or numbered {raw:?}",
                t.id
            ))
        })
}

/// The steps of a task.
#[utoipa::path(get, path = "/tasks/{id}/workflow_steps", tag = "steps", params(("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = StepList), (status = 404, body = ErrorBody)))]
pub async fn list_steps(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let (t, template) = snapshot_with_template(&st.engine, task_id(&id)?).await?;
    let steps = t
        .steps
        .iter()
        .map(|s| views::step(&t, s, template.as_deref()))
        .collect();
    Ok(Json(StepList { steps }).into_response())
}

/// One step of a task.
#[utoipa::path(get, path = "/tasks/{id}/workflow_steps/{step}", tag = "steps", params(("id" = i64, Path, description = "Task id"), ("step" = String, Path, description = "Step name or id")),
    responses((status = 200, body = StepEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_step(
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult {
    let (t, template) = snapshot_with_template(&st.engine, task_id(&id)?).await?;
    let s = find_step(&t, &step)?;
    Ok(Json(StepEnvelope {
        step: views::step(&t, s, template.as_deref()),
    })
    .into_response())
}

/// The name of the step of task `id` named or numbered `raw`.
async fn step_name(st: &AppState, id: i64, raw: &str) -> Result<String, ApiError> {
    Ok(find_step(&st.engine.get_task(id).await?, raw)?.name.clone())
}

async fn step_after(st: &AppState, id: i64, name: &str) -> ApiResult {
    let (t, template) = snapshot_with_template(&st.engine, id).await?;
    let s = find_step(&t, name)?;
    Ok(Json(StepEnvelope {
        step: views::step(&t, s, template.as_deref()),
    })
    .into_response())
}

/// `PATCH /tasks/:id/workflow_steps/:step` (also PUT): only `retry_limit` changes (the original
/// also took `inputs`; steps here read the task's context, so there are none).
#[utoipa::path(patch, path = "/tasks/{id}/workflow_steps/{step}", tag = "steps", params(("id" = i64, Path, description = "Task id"), ("step" = String, Path, description = "Step name or id")),
    request_body(content = StepChange, description = "Also accepted wrapped in {\"workflow_step\": {...}}"),
    responses((status = 200, body = StepEnvelope), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_step(
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = task_id(&id)?;
    let Json(body) = body?;
    let body = match body {
        Value::Object(mut m)
            if !m.contains_key("retry_limit") && m.contains_key("workflow_step") =>
        {
            m.remove("workflow_step").unwrap_or(Value::Null)
        }
        other => other,
    };
    if body.get("inputs").is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "request body: inputs cannot change (steps read the task's context; there are no per-step inputs)",
        ));
    }
    let c: StepChange = serde_json::from_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!(
                "request body: {e} (expected {{\"retry_limit\": 1..{}}})",
                Engine::MAX_RETRY_LIMIT
            ),
        )
    })?;
    let name = step_name(&st, id, &step).await?;
    st.engine
        .set_step_retry_limit(id, &name, c.retry_limit)
        .await?;
    step_after(&st, id, &name).await
}

/// `DELETE /tasks/:id/workflow_steps/:step`: cancels the step and the steps that depend on it.
#[utoipa::path(delete, path = "/tasks/{id}/workflow_steps/{step}", tag = "steps", params(("id" = i64, Path, description = "Task id"), ("step" = String, Path, description = "Step name or id")),
    responses((status = 200, body = Cancelled), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The step is running or finished")))]
pub async fn cancel_step(
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult {
    let id = task_id(&id)?;
    let name = step_name(&st, id, &step).await?;
    st.engine.cancel_step(id, &name).await?;
    Ok(Json(Cancelled { cancelled: true }).into_response())
}

/// Gives a failed step a fresh set of attempts.
#[utoipa::path(post, path = "/tasks/{id}/workflow_steps/{step}/retry", tag = "steps", params(("id" = i64, Path, description = "Task id"), ("step" = String, Path, description = "Step name or id")),
    responses((status = 200, body = StepEnvelope), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "The step is not in error, or the task is finished")))]
pub async fn retry_step(
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult {
    let id = task_id(&id)?;
    let name = step_name(&st, id, &step).await?;
    st.engine.retry_step(id, &name).await?;
    step_after(&st, id, &name).await
}

/// Marks a pending or failed step `resolved_manually` with results; its children may run.
#[utoipa::path(post, path = "/tasks/{id}/workflow_steps/{step}/resolve", tag = "steps", params(("id" = i64, Path, description = "Task id"), ("step" = String, Path, description = "Step name or id")),
    request_body(content = Resolution, description = "Optional: without a body the results are null"),
    responses((status = 200, body = StepEnvelope), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn resolve_step(
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = task_id(&id)?;
    let results = match body {
        Ok(Json(Value::Object(mut m))) => {
            if let Some(k) = m.keys().find(|k| k.as_str() != "results") {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation",
                    format!("request body: unknown field {k:?} (expected {{\"results\": ...}})"),
                ));
            }
            m.remove("results").unwrap_or(Value::Null)
        }
        Ok(Json(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "request body: expected a JSON object {\"results\": ...}",
            ))
        }
        Err(JsonRejection::MissingJsonContentType(_)) => Value::Null,
        Err(other) => return Err(other.into()),
    };
    let name = step_name(&st, id, &step).await?;
    st.engine.resolve_step_manually(id, &name, results).await?;
    step_after(&st, id, &name).await
}

// ---- diagrams ----

/// `/tasks/:id/task_diagrams` (JSON) and `task_diagrams.json|.html|.mmd`.
#[utoipa::path(get, path = "/tasks/{id}/{file}", tag = "tasks",
    params(("id" = i64, Path, description = "Task id"), ("file" = String, Path, description = "task_diagrams, task_diagrams.json, task_diagrams.html or task_diagrams.mmd")),
    responses((status = 200, description = "JSON {nodes, edges, direction, title}, an HTML page, or Mermaid text", content(
        (Object = "application/json"), (String = "text/html"), (String = "text/vnd.mermaid"))),
        (status = 404, body = ErrorBody)))]
pub async fn diagram(
    State(st): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> ApiResult {
    let format = match file.as_str() {
        "task_diagrams" | "task_diagrams.json" => "json",
        "task_diagrams.html" => "html",
        "task_diagrams.mmd" => "mmd",
        _ => return Err(ApiError::not_found(format!("no route /tasks/{id}/{file}"))),
    };
    let (t, template) = snapshot_with_template(&st.engine, task_id(&id)?).await?;
    let template = template
        .ok_or_else(|| ApiError::not_found(format!("the template of task {} is gone", t.id)))?;
    Ok(match format {
        "json" => Json(diagram::graph(&template, Some(&t))).into_response(),
        "mmd" => (
            [(header::CONTENT_TYPE, "text/vnd.mermaid; charset=utf-8")],
            diagram::mermaid(&template, Some(&t)),
        )
            .into_response(),
        _ => Html(diagram_page(
            &format!("Task {}: {}", t.id, template.key()),
            &diagram::mermaid(&template, Some(&t)),
        ))
        .into_response(),
    })
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An HTML page with the Mermaid text; it renders when the browser can load Mermaid and shows
/// the text otherwise (no CDN is required to read it).
fn diagram_page(title: &str, mermaid: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body>\n<h1>{t}</h1>\n<pre class=\"mermaid\">\n{m}</pre>\n<script type=\"module\">try {{ const m = await import('https://cdn.jsdelivr.net/npm/mermaid@10/dist/mermaid.esm.min.mjs'); m.default.initialize({{startOnLoad: true}}); }} catch (e) {{}}</script>\n</body></html>\n",
        t = escape_html(title),
        m = escape_html(mermaid)
    )
}

// ---- handlers (templates) ----

/// The namespaces of the registered templates.
#[utoipa::path(get, path = "/handlers", tag = "handlers", responses((status = 200, body = NamespaceList)))]
pub async fn handlers(State(st): State<AppState>) -> ApiResult {
    let list = st.engine.templates().await?;
    let mut by_ns: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for t in list.iter() {
        by_ns
            .entry(t.namespace.as_str())
            .or_default()
            .insert(t.name.as_str());
    }
    let namespaces: Vec<NamespaceLine> = by_ns
        .iter()
        .map(|(ns, names)| NamespaceLine {
            name: (*ns).to_owned(),
            handler_count: names.len(),
        })
        .collect();
    Ok(Json(NamespaceList {
        total_namespaces: namespaces.len(),
        namespaces,
        generated_at: now(),
    })
    .into_response())
}

/// The templates of a namespace and their versions.
#[utoipa::path(get, path = "/handlers/{namespace}", tag = "handlers", params(("namespace" = String, Path)),
    responses((status = 200, body = NamespaceHandlers), (status = 404, body = ErrorBody)))]
pub async fn namespace_handlers(State(st): State<AppState>, Path(ns): Path<String>) -> ApiResult {
    let list = st.engine.templates().await?;
    let mut by_name: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for t in list.iter().filter(|t| t.namespace == ns && t.current) {
        by_name
            .entry(t.name.as_str())
            .or_default()
            .push(t.version.clone());
    }
    if by_name.is_empty() {
        return Err(ApiError::not_found(format!(
            "namespace {ns:?} has no registered templates"
        )));
    }
    let handlers: Vec<HandlerLine> = by_name
        .iter()
        .map(|(name, versions)| HandlerLine {
            name: (*name).to_owned(),
            namespace: ns.clone(),
            latest_version: tasker_core::template::latest_version(
                versions.iter().map(String::as_str),
            )
            .map(|v| v.to_string()),
            handler_count: versions.len(),
            versions: versions.clone(),
        })
        .collect();
    Ok(Json(NamespaceHandlers {
        namespace: ns.clone(),
        total_handlers: handlers.len(),
        handlers,
    })
    .into_response())
}

/// A template: its steps, their settings and the dependency graph.
#[utoipa::path(get, path = "/handlers/{namespace}/{name}", tag = "handlers",
    params(("namespace" = String, Path), ("name" = String, Path), ("version" = Option<String>, Query, description = "A version, or latest (default)")),
    responses((status = 200, body = HandlerEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn handler(
    State(st): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let q = params(q, &["version"])?;
    let version = q
        .get("version")
        .map(String::as_str)
        .filter(|v| *v != "latest");
    let t = st.engine.template(Some(&ns), &name, version).await?;
    Ok(Json(HandlerEnvelope {
        handler: views::handler(&t),
        generated_at: now(),
    })
    .into_response())
}

// ---- health and metrics ----

/// Liveness: the process answers (never needs auth).
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Live)))]
pub async fn live() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
            (header::EXPIRES, "0"),
        ],
        Json(Live {
            alive: true,
            timestamp: now(),
            service: "tasker".into(),
        }),
    )
        .into_response()
}

/// Readiness: the database answers within 5 s (never needs auth).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = Ready, description = "The database is down")))]
pub async fn ready(State(st): State<AppState>) -> Response {
    let started = Instant::now();
    let check =
        tokio::time::timeout(std::time::Duration::from_secs(5), st.engine.durability()).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (ok, message) = match check {
        Ok(Ok(d)) => (true, format!("database answered ({})", d.description)),
        Ok(Err(e)) => (false, format!("database check failed: {e}")),
        Err(_) => (false, "database check timed out after 5 s".to_owned()),
    };
    let body = Ready {
        ready: ok,
        checks: Checks {
            database: Check {
                status: if ok { "healthy" } else { "unhealthy" }.into(),
                message,
                response_time_ms: ms,
            },
        },
        timestamp: now(),
        check_duration: ms,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")],
        Json(body),
    )
        .into_response()
}

/// Tasks and steps by state, retries, error rates.
#[utoipa::path(get, path = "/health/status", tag = "health",
    responses((status = 200, body = Status), (status = 503, body = Status, description = "More than half of the tasks or steps are in error")))]
pub async fn status(State(st): State<AppState>) -> ApiResult {
    let started = Instant::now();
    let c = st.engine.state_counts().await?;
    let total_tasks: i64 = c.tasks.values().sum();
    let total_steps: i64 = c.steps.values().sum();
    let rate = |n: i64, of: i64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let task_error_rate = rate(c.tasks["error"], total_tasks);
    let step_error_rate = rate(c.steps["error"], total_steps);
    let healthy = task_error_rate <= 0.5 && step_error_rate <= 0.5;
    let with_total = |m: &std::collections::BTreeMap<String, i64>, total: i64| {
        let mut out = m.clone();
        out.insert("total".into(), total);
        out
    };
    let body = Status {
        healthy,
        status: if healthy { "healthy" } else { "unhealthy" }.into(),
        metrics: StatusMetrics {
            tasks: with_total(&c.tasks, total_tasks),
            steps: with_total(&c.steps, total_steps),
            retries: Retries {
                in_backoff: c.in_backoff,
                exhausted_retries: c.exhausted,
            },
            error_rates: ErrorRates {
                tasks: task_error_rate,
                steps: step_error_rate,
            },
        },
        timestamp: now(),
        generation_duration: started.elapsed().as_secs_f64(),
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(body)).into_response())
}

pub async fn openapi(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.openapi.as_str().to_owned(),
    )
        .into_response()
}

/// Prometheus text: this process's counters and histograms, tasks and steps by state.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(State(st): State<AppState>) -> ApiResult {
    let text = crate::metrics::render(&st).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// ---- analytics ----

/// The figures of the last 1 h, 4 h and 24 h (the original's `/analytics/performance`).
#[utoipa::path(get, path = "/analytics/performance", tag = "analytics",
    responses((status = 200, body = Performance)))]
pub async fn performance(State(st): State<AppState>) -> ApiResult {
    let h = |n: u64| std::time::Duration::from_secs(n * 3600);
    let mut w = st
        .engine
        .analytics_windows(&[h(1), h(4), h(24)], None, None)
        .await?
        .into_iter();
    let (Some(last_hour), Some(last_4_hours), Some(last_24_hours)) = (w.next(), w.next(), w.next())
    else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "analytics: three windows asked, fewer answered",
        ));
    };
    let templates = st.engine.templates().await?;
    let namespaces: std::collections::BTreeSet<&str> =
        templates.iter().map(|t| t.namespace.as_str()).collect();
    let types: std::collections::BTreeSet<(&str, &str)> = templates
        .iter()
        .map(|t| (t.namespace.as_str(), t.name.as_str()))
        .collect();
    let c = st.engine.state_counts().await?;
    let active = c.tasks.get("pending").copied().unwrap_or(0)
        + c.tasks.get("in_progress").copied().unwrap_or(0);
    Ok(Json(Performance {
        system_overview: SystemOverview {
            active_tasks_count: active,
            total_namespaces_count: namespaces.len(),
            unique_task_types_count: types.len(),
            system_health_score: last_hour.completion_rate,
        },
        performance_trends: Trends {
            last_hour,
            last_4_hours,
            last_24_hours,
        },
        generated_at: now(),
    })
    .into_response())
}

/// The slowest tasks and steps and the steps that fail most over `period` hours (the
/// original's `/analytics/bottlenecks`).
#[utoipa::path(get, path = "/analytics/bottlenecks", tag = "analytics",
    params(
        ("period" = Option<u64>, Query, description = "Hours (1 to 720, default 24)"),
        ("namespace" = Option<String>, Query), ("name" = Option<String>, Query),
    ),
    responses((status = 200, body = Bottlenecks), (status = 400, body = ErrorBody)))]
pub async fn bottlenecks(
    State(st): State<AppState>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let q = params(q, &["period", "namespace", "name", "version"])?;
    let period = int_param(&q, "period", 24, 720)?.max(1) as u64;
    let a = st
        .engine
        .analytics(
            std::time::Duration::from_secs(period * 3600),
            q.get("namespace").map(String::as_str),
            q.get("name").map(String::as_str),
        )
        .await?;
    Ok(Json(Bottlenecks {
        period_hours: period,
        slowest_tasks: a.slowest_tasks.clone(),
        slowest_steps: a.slowest_steps.clone(),
        error_patterns: a.failing_steps.clone(),
        analysis: a,
        generated_at: now(),
    })
    .into_response())
}
