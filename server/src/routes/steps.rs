//! Steps of a task: list, show, update the retry limit, cancel, retry, resolve.

use super::*;

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
pub(super) async fn step_name(st: &AppState, id: i64, raw: &str) -> Result<String, ApiError> {
    Ok(find_step(&st.engine.get_task(id).await?, raw)?.name.clone())
}

pub(super) async fn step_after(st: &AppState, id: i64, name: &str) -> ApiResult {
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
    let results = body_fields(body, &["results"])?
        .remove("results")
        .unwrap_or(Value::Null);
    let name = step_name(&st, id, &step).await?;
    st.engine.resolve_step_manually(id, &name, results).await?;
    step_after(&st, id, &name).await
}
