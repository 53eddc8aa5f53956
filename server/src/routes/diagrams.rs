//! Diagrams of a task: JSON, Mermaid text, or an HTML page (`server/dashboard/diagram.html`).

use super::*;

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

/// The diagram page: the Mermaid text, rendered when the browser can load Mermaid and shown as
/// text otherwise (no CDN is required to read it).
const DIAGRAM_PAGE: &str = include_str!("../../dashboard/diagram.html");

fn diagram_page(title: &str, mermaid: &str) -> String {
    DIAGRAM_PAGE
        .replace("@TITLE@", &escape_html(title))
        .replace("@MERMAID@", &escape_html(mermaid))
}
