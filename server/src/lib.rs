//! `tasker serve`: one axum server over the core's [`Engine`] with the original engine's REST
//! routes and body shapes, health probes, Prometheus metrics and bearer-token or JWT auth.
//!
//! Module map: [`routes`] (the handlers), [`views`] (the JSON bodies), [`auth`] (the access
//! table and its middleware), [`error`] (`{error: {code, message, details}}`), [`metrics`].

pub mod auth;
pub mod batch;
pub mod dashboard;
pub mod error;
pub mod graphql;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;

use axum::routing::{get, post};
use axum::Router;
use tasker_core::Engine;

pub use auth::Auth;

/// How to serve.
#[derive(Clone)]
pub struct ServeOptions {
    pub bind: SocketAddr,
    /// Mount point (`/tasker`), or empty for the root.
    pub base_path: String,
    pub auth: Auth,
    /// Allow binding to a non-loopback address with auth off.
    pub insecure: bool,
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub auth: Auth,
    pub base_path: String,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// `POST /tasks` goes through it (group commit).
    pub creator: batch::Creator,
    pub graphql: graphql::TaskerSchema,
    /// `/openapi.json`, rendered once.
    pub openapi: std::sync::Arc<String>,
}

/// Checks a base path: empty, or `/segment[/segment...]` without a trailing slash.
pub fn normalize_base_path(raw: &str) -> Result<String, String> {
    let p = raw.trim_end_matches('/');
    if p.is_empty() {
        return Ok(String::new());
    }
    let ok = p.starts_with('/')
        && p[1..].split('/').all(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
        });
    if ok {
        Ok(p.to_owned())
    } else {
        Err(format!(
            "--base-path {raw:?}: expected /segment[/segment...] (letters, digits, - _ . ~)"
        ))
    }
}

/// The application: every route of `auth::ROUTES`, under `base_path`.
pub fn app(engine: Engine, base_path: &str, auth: Auth) -> Router {
    let st = AppState {
        engine: engine.clone(),
        base_path: base_path.to_owned(),
        metrics: metrics::handle(),
        creator: batch::Creator::start(engine.clone()),
        graphql: graphql::schema(engine.clone()),
        openapi: std::sync::Arc::new(
            openapi::document(base_path, auth.is_on())
                .to_pretty_json()
                .expect("the OpenAPI document serializes"),
        ),
        auth,
    };
    metrics::count_events(&engine);
    let api = Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{asset}", get(dashboard::asset))
        .route("/health/live", get(routes::live))
        .route("/health/ready", get(routes::ready))
        .route("/health/status", get(routes::status))
        .route("/metrics", get(routes::metrics))
        .route("/tasks", get(routes::list_tasks).post(routes::create_task))
        .route(
            "/tasks/{id}",
            get(routes::get_task)
                .patch(routes::update_task)
                .put(routes::update_task)
                .delete(routes::cancel_task),
        )
        .route("/tasks/{id}/transitions", get(routes::transitions))
        .route("/tasks/{id}/workflow_steps", get(routes::list_steps))
        .route(
            "/tasks/{id}/workflow_steps/{step}",
            get(routes::get_step)
                .patch(routes::update_step)
                .put(routes::update_step)
                .delete(routes::cancel_step),
        )
        .route(
            "/tasks/{id}/workflow_steps/{step}/retry",
            post(routes::retry_step),
        )
        .route(
            "/tasks/{id}/workflow_steps/{step}/resolve",
            post(routes::resolve_step),
        )
        .route(
            "/tasks/{id}/workflow_steps/{step}/complete",
            post(routes::complete_step),
        )
        .route(
            "/tasks/{id}/workflow_steps/{step}/fail",
            post(routes::fail_step),
        )
        .route("/tasks/{id}/signals/{name}", post(routes::signal))
        .route(
            "/correlations/{id}/complete",
            post(routes::complete_correlated),
        )
        .route(
            "/schedules",
            get(routes::list_schedules).post(routes::create_schedule),
        )
        .route(
            "/schedules/{name}",
            get(routes::get_schedule).delete(routes::delete_schedule),
        )
        .route("/schedules/{name}/pause", post(routes::pause_schedule))
        .route("/schedules/{name}/resume", post(routes::resume_schedule))
        .route("/tasks/{id}/{file}", get(routes::diagram))
        .route("/handlers", get(routes::handlers))
        .route("/handlers/{namespace}", get(routes::namespace_handlers))
        .route("/handlers/{namespace}/{name}", get(routes::handler))
        .route("/events", get(routes::event_catalog))
        .route("/graphql", post(graphql::handle))
        .route("/openapi.json", get(routes::openapi))
        .route("/analytics/performance", get(routes::performance))
        .route("/analytics/bottlenecks", get(routes::bottlenecks))
        .route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            auth::authorize,
        ))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .with_state(st.clone());
    if base_path.is_empty() {
        api
    } else {
        Router::new()
            .nest(base_path, api)
            // The dashboard at `/base/` too (a nested `/` matches `/base` only).
            .route(
                &format!("{base_path}/"),
                get(dashboard::index).with_state(st),
            )
            .fallback(|| async { error::ApiError::not_found("no such route") })
    }
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    engine: Engine,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    if !opts.auth.is_on() && !opts.bind.ip().is_loopback() && !opts.insecure {
        return Err(format!(
            "refusing to serve on {} without auth: give --auth-token, --jwt-secret or --jwt-public-key, or --insecure",
            opts.bind
        ));
    }
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Tests and scripts read this line to find the port of --bind 127.0.0.1:0.
    println!("tasker: serving on http://{addr}{}", opts.base_path);
    // `tasker serve` fires schedules too (every process does; a tick makes one task).
    let ticker = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_schedules().await })
    };
    let app = app(engine, &opts.base_path, opts.auth);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("server error: {e}"));
    ticker.abort();
    served
}
