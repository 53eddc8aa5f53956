//! Schedules: templates run on a cron pattern (`/schedules`).

use super::*;
use tasker_core::engine::ScheduleInfo;
use tasker_core::schedule::ScheduleSpec;

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ScheduleEnvelope {
    pub schedule: ScheduleInfo,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleInfo>,
}

/// Every schedule, by name, with its next run time.
#[utoipa::path(get, path = "/schedules", tag = "schedules",
    responses((status = 200, body = ScheduleList)))]
pub async fn list_schedules(State(st): State<AppState>) -> ApiResult {
    let schedules = st.engine.list_schedules().await?;
    Ok(Json(ScheduleList { schedules }).into_response())
}

/// Creates a schedule; 422 naming what is wrong (pattern, zone, policy, template, context),
/// 409 when one of that name exists.
#[utoipa::path(post, path = "/schedules", tag = "schedules", request_body = ScheduleSpec,
    responses((status = 201, body = ScheduleEnvelope), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_schedule(
    State(st): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(v) = body?;
    let spec: ScheduleSpec = serde_json::from_value(v).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("request body: {e}"),
        )
    })?;
    let schedule = st.engine.create_schedule(spec).await?;
    Ok((StatusCode::CREATED, Json(ScheduleEnvelope { schedule })).into_response())
}

/// One schedule.
#[utoipa::path(get, path = "/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleEnvelope), (status = 404, body = ErrorBody)))]
pub async fn get_schedule(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let schedule = st.engine.get_schedule(&name).await?;
    Ok(Json(ScheduleEnvelope { schedule }).into_response())
}

/// Deletes a schedule (its tasks stay).
#[utoipa::path(delete, path = "/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, description = "{\"deleted\": name}", body = Object), (status = 404, body = ErrorBody)))]
pub async fn delete_schedule(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    st.engine.delete_schedule(&name).await?;
    Ok(Json(serde_json::json!({ "deleted": name })).into_response())
}

/// Pauses a schedule: its ticks make no task until resumed (and are not caught up).
#[utoipa::path(post, path = "/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleEnvelope), (status = 404, body = ErrorBody)))]
pub async fn pause_schedule(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let schedule = st.engine.pause_schedule(&name).await?;
    Ok(Json(ScheduleEnvelope { schedule }).into_response())
}

/// Resumes a paused schedule from its next tick.
#[utoipa::path(post, path = "/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleEnvelope), (status = 404, body = ErrorBody)))]
pub async fn resume_schedule(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let schedule = st.engine.resume_schedule(&name).await?;
    Ok(Json(ScheduleEnvelope { schedule }).into_response())
}
