//! `/metrics`: Prometheus text. Counters come from the lifecycle events this process sees
//! (transitions made here: tasks created, cancelled, retried or resolved over the API) and from
//! the HTTP requests it answers; gauges of tasks and steps by state are read from the
//! database at scrape time (one statement), so they cover every worker process.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tasker_core::Engine;

use crate::error::ApiError;
use crate::AppState;

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder (installed once).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder (a host embedding the server) keeps its own; ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "tasker_tasks",
        "Tasks by state, read from the database at scrape time."
    );
    describe_gauge!(
        "tasker_steps",
        "Steps by state, read from the database at scrape time."
    );
    describe_gauge!(
        "tasker_steps_in_backoff",
        "Failed steps waiting for their next attempt."
    );
    describe_gauge!(
        "tasker_steps_exhausted",
        "Failed steps with no attempt left (their task is blocked or in error)."
    );
    describe_gauge!(
        "tasker_scrape_database_seconds",
        Unit::Seconds,
        "How long the scrape's database read took."
    );
    describe_counter!(
        "tasker_events_total",
        "Lifecycle events of transitions made by this process, by event name."
    );
    describe_counter!(
        "tasker_step_failures_total",
        "Failed attempts recorded by this process, by failure kind."
    );
    describe_counter!(
        "tasker_lease_expiries_total",
        "Attempts this process failed because their lease ran out (the worker died or stalled)."
    );
    describe_histogram!(
        "tasker_worker_cycle_seconds",
        Unit::Seconds,
        "One worker transaction: recording outcomes and/or claiming steps, by part."
    );
    describe_counter!(
        "tasker_steps_claimed_total",
        "Step attempts claimed by this process."
    );
    describe_counter!(
        "tasker_step_outcomes_total",
        "Attempts recorded by this process, by namespace, template, step and outcome (complete, retry, exhausted, cancelled, released)."
    );
    describe_histogram!(
        "tasker_step_duration_seconds",
        Unit::Seconds,
        "Handler run time of the steps this process ran, by handler and outcome."
    );
    describe_counter!(
        "tasker_tasks_created_total",
        "Tasks created by this process, by namespace and template."
    );
    describe_counter!(
        "tasker_tasks_finished_total",
        "Tasks this process moved to complete or error, by namespace, template and state."
    );
    describe_counter!(
        "tasker_events_dropped_total",
        "Events this process's metrics missed because it fell behind."
    );
    describe_counter!(
        "tasker_http_requests_total",
        "HTTP requests answered, by method, route and status."
    );
    describe_histogram!(
        "tasker_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by method and route."
    );
}

/// Counts the events of this process by name (`tasker_events_total{event}`: lifecycle, derived
/// `workflow.*` and worker events, custom ones) and step
/// failures by kind. (The engine itself records the rest when opened with
/// `EngineOptions::metrics`: see [`describe`].)
pub fn count_events(engine: &Engine) {
    let mut rx = engine.subscribe();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    metrics::counter!("tasker_events_total", "event" => ev.name.to_string())
                        .increment(1);
                    if ev.name == "step.failed" {
                        let kind = ev
                            .metadata
                            .get("kind")
                            .and_then(|k| k.as_str())
                            .unwrap_or("retryable")
                            .to_owned();
                        metrics::counter!("tasker_step_failures_total", "kind" => kind)
                            .increment(1);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("tasker_events_dropped_total").increment(n);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// Counts and times every request by method, route pattern and status.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    // `otel.*` and `http.*` fields follow OpenTelemetry's HTTP server conventions when the span
    // is exported (`tasker serve` with OTEL_EXPORTER_OTLP_ENDPOINT).
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    let status = resp.status().as_u16().to_string();
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        )
    });
    metrics::counter!("tasker_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("tasker_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// The exposition: scrape-time gauges from the database, then everything recorded.
pub async fn render(st: &AppState) -> Result<String, ApiError> {
    let started = Instant::now();
    let c = st.engine.state_counts().await?;
    for (state, n) in &c.tasks {
        metrics::gauge!("tasker_tasks", "state" => state.clone()).set(*n as f64);
    }
    for (state, n) in &c.steps {
        metrics::gauge!("tasker_steps", "state" => state.clone()).set(*n as f64);
    }
    metrics::gauge!("tasker_steps_in_backoff").set(c.in_backoff as f64);
    metrics::gauge!("tasker_steps_exhausted").set(c.exhausted as f64);
    metrics::gauge!("tasker_scrape_database_seconds").set(started.elapsed().as_secs_f64());
    Ok(st.metrics.render())
}

/// Serves this process's metrics alone at `GET /metrics` on `bind` (`tasker worker
/// --metrics-bind`): returns the bound address and the server's task.
pub async fn serve_metrics(
    bind: std::net::SocketAddr,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), String> {
    let h = handle();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = h.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    h.render(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("--metrics-bind {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}
