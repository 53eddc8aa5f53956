//! The web dashboard at `/` (under `--base-path`): three static files compiled into the binary
//! (`include_str!`; no Node, no CDN, nothing fetched at runtime) that read the REST API with the
//! user's token. The pages hold no data themselves, so they need no auth; every API call does.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

const INDEX: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// `GET /`: the page, its asset links made absolute under the base path.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "The dashboard", content_type = "text/html", body = String)))]
pub async fn index(State(st): State<AppState>) -> Response {
    let html = INDEX
        .replace(
            "href=\"assets/",
            &format!("href=\"{}/assets/", st.base_path),
        )
        .replace("src=\"assets/", &format!("src=\"{}/assets/", st.base_path))
        .replace(
            "<html lang=\"en\">",
            &format!("<html lang=\"en\" data-base=\"{}\">", st.base_path),
        );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

/// `GET /assets/{asset}`: `app.js` and `app.css`.
#[utoipa::path(get, path = "/assets/{asset}", tag = "dashboard",
    params(("asset" = String, Path, description = "app.js or app.css")),
    responses((status = 200, description = "The script or the style sheet", body = String), (status = 404, body = crate::error::ErrorBody)))]
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return Err(ApiError::not_found(format!("no asset {file:?}"))),
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}
