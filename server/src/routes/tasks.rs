//! Tasks: list, create, show, cancel, update, history.

use super::*;

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
    let transitions = st.engine.task_transitions(task_id(&id)?).await?;
    Ok(Json(TransitionList { transitions }).into_response())
}
