//! Health, metrics and analytics.

use super::*;

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
