//! The registered templates, as the original's `/handlers` routes show them.

use super::*;

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

/// The event catalogue: the engine's events (the original's included, `emitted: false` where
/// they have no meaning here), the defined ones and those templates declare.
#[utoipa::path(get, path = "/events", tag = "events", responses((status = 200, body = EventCatalog)))]
pub async fn event_catalog(State(st): State<AppState>) -> ApiResult {
    Ok(Json(EventCatalog {
        events: st.engine.event_catalog().await?,
        generated_at: now(),
    })
    .into_response())
}
