//! Steps that wait: a task's signals, and completing or failing a waiting step from outside
//! (also by the correlation id its handler handed out).

use super::steps::{step_after, step_name};
use super::*;

/// How many waiting steps a signal or a correlated completion completed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Completed {
    /// 0 for a signal no step waits for yet: it is kept for the first that does.
    pub completed: usize,
}

/// Sends signal `name` to the task: completes its steps waiting for it with `payload` as
/// their results (none: the wait's own), or keeps it for the first step that waits for it.
#[utoipa::path(post, path = "/tasks/{id}/signals/{name}", tag = "steps", params(("id" = i64, Path, description = "Task id"), ("name" = String, Path, description = "Signal name")),
    request_body(content = Object, description = "Optional: {\"payload\": any JSON}"),
    responses((status = 200, body = Completed), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn signal(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = task_id(&id)?;
    let payload = body_fields(body, &["payload"])?
        .remove("payload")
        .unwrap_or(Value::Null);
    let completed = st.engine.signal(id, &name, payload).await?;
    Ok(Json(Completed { completed }).into_response())
}

/// Completes a waiting step with results (none: the wait's own); 409 for a step not waiting.
#[utoipa::path(post, path = "/tasks/{id}/workflow_steps/{step}/complete", tag = "steps", params(("id" = i64, Path, description = "Task id"), ("step" = String, Path, description = "Step name or id")),
    request_body(content = Resolution, description = "Optional: {\"results\": any JSON}"),
    responses((status = 200, body = StepEnvelope), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn complete_step(
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = task_id(&id)?;
    let results = body_fields(body, &["results"])?
        .remove("results")
        .unwrap_or(Value::Null);
    let name = step_name(&st, id, &step).await?;
    st.engine.complete_step(id, &name, results).await?;
    step_after(&st, id, &name).await
}

/// Fails a waiting step: `{"message": ..., "permanent": false}`; retried (its handler runs
/// again) unless permanent.
#[utoipa::path(post, path = "/tasks/{id}/workflow_steps/{step}/fail", tag = "steps", params(("id" = i64, Path, description = "Task id"), ("step" = String, Path, description = "Step name or id")),
    request_body(content = Object, description = "{\"message\": text, \"permanent\"?: bool}"),
    responses((status = 200, body = StepEnvelope), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn fail_step(
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = task_id(&id)?;
    let f = body_fields(body, &["message", "permanent"])?;
    let invalid = |m: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", m);
    let message = match f.get("message") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(invalid("request body: message (text) is required")),
    };
    let permanent = match f.get("permanent") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("request body: permanent must be true or false")),
    };
    let name = step_name(&st, id, &step).await?;
    st.engine.fail_step(id, &name, &message, permanent).await?;
    step_after(&st, id, &name).await
}

/// Completes every step waiting with this correlation id (the id its handler handed to
/// another system) with results.
#[utoipa::path(post, path = "/correlations/{id}/complete", tag = "steps", params(("id" = String, Path, description = "Correlation id")),
    request_body(content = Resolution, description = "Optional: {\"results\": any JSON}"),
    responses((status = 200, body = Completed), (status = 422, body = ErrorBody)))]
pub async fn complete_correlated(
    State(st): State<AppState>,
    Path(correlation_id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let results = body_fields(body, &["results"])?
        .remove("results")
        .unwrap_or(Value::Null);
    let completed = st
        .engine
        .complete_correlated(&correlation_id, results)
        .await?;
    Ok(Json(Completed { completed }).into_response())
}
