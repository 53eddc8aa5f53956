//! The handlers of every route (see `auth::ROUTES` for who may call them), a file per
//! resource: `tasks.rs`, `steps.rs`, `diagrams.rs`, `templates.rs` (the original's
//! `/handlers`), `health.rs` (health, metrics, analytics); the query-parameter helpers they
//! share are here.

mod diagrams;
mod health;
mod schedules;
mod steps;
mod tasks;
mod templates;
mod waits;

pub use diagrams::*;
pub use health::*;
pub use schedules::*;
pub use steps::*;
pub use tasks::*;
pub use waits::*;
// (Named: `handler` is also a view's name, which the glob of views below brings in.)
pub use templates::{
    __path_event_catalog, __path_handler, __path_handlers, __path_namespace_handlers,
    event_catalog, handler, handlers, namespace_handlers,
};

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

/// An optional JSON object body's fields, refusing any not in `known` (no body: none).
fn body_fields(
    body: Result<Json<Value>, JsonRejection>,
    known: &[&str],
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let expected = || {
        let keys: Vec<String> = known.iter().map(|k| format!("\"{k}\": ...")).collect();
        format!("{{{}}}", keys.join(", "))
    };
    match body {
        Ok(Json(Value::Object(m))) => match m.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                format!(
                    "request body: unknown field {k:?} (expected {})",
                    expected()
                ),
            )),
            None => Ok(m),
        },
        Ok(Json(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("request body: expected a JSON object {}", expected()),
        )),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(serde_json::Map::new()),
        Err(other) => Err(other.into()),
    }
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
