//! Who may call what: off, one bearer token, or JWTs (HS256/RS256) whose `permissions` claim
//! lists the original engine's `resource:action` strings. Checked by one middleware from a
//! table keyed by the matched route, so a route missing from the table is refused (fails
//! closed), never left open.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Everything is open (the server then binds only to loopback unless told `--insecure`).
    Off,
    /// `Authorization: Bearer <token>` with this token grants every permission.
    Token(String),
    /// `Authorization: Bearer <jwt>`: a valid, unexpired JWT whose `permissions` claim holds
    /// the route's permission.
    Jwt(Arc<(DecodingKey, Validation)>),
}

impl Auth {
    /// JWTs signed with HS256 and this secret.
    pub fn jwt_secret(secret: &str) -> Auth {
        Auth::Jwt(Arc::new((
            DecodingKey::from_secret(secret.as_bytes()),
            Validation::new(Algorithm::HS256),
        )))
    }

    /// JWTs signed with RS256; `pem` is the public key.
    pub fn jwt_public_key(pem: &str) -> Result<Auth, String> {
        let key = DecodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| format!("--jwt-public-key: not an RSA public key in PEM: {e}"))?;
        Ok(Auth::Jwt(Arc::new((
            key,
            Validation::new(Algorithm::RS256),
        ))))
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, Auth::Off)
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (liveness and readiness probes).
    Public,
    /// Any valid credentials.
    Authenticated,
    /// Credentials carrying this `resource:action` permission.
    Permission(&'static str),
}

/// The access rule of every route, by method and route pattern (relative to the base path).
/// A route that is not here is refused to everybody when auth is on.
pub const ROUTES: &[(&str, &str, Access)] = {
    use Access::*;
    &[
        ("GET", "/", Public),
        ("GET", "/assets/{asset}", Public),
        ("GET", "/health/live", Public),
        ("GET", "/health/ready", Public),
        (
            "GET",
            "/health/status",
            Permission("tasker.health_status:index"),
        ),
        ("GET", "/metrics", Permission("tasker.metrics:index")),
        ("GET", "/tasks", Permission("tasker.task:index")),
        ("POST", "/tasks", Permission("tasker.task:create")),
        ("GET", "/tasks/{id}", Permission("tasker.task:show")),
        ("PATCH", "/tasks/{id}", Permission("tasker.task:update")),
        ("PUT", "/tasks/{id}", Permission("tasker.task:update")),
        ("DELETE", "/tasks/{id}", Permission("tasker.task:destroy")),
        (
            "GET",
            "/tasks/{id}/transitions",
            Permission("tasker.task:show"),
        ),
        (
            "GET",
            "/tasks/{id}/workflow_steps",
            Permission("tasker.workflow_step:index"),
        ),
        (
            "GET",
            "/tasks/{id}/workflow_steps/{step}",
            Permission("tasker.workflow_step:show"),
        ),
        (
            "PATCH",
            "/tasks/{id}/workflow_steps/{step}",
            Permission("tasker.workflow_step:update"),
        ),
        (
            "PUT",
            "/tasks/{id}/workflow_steps/{step}",
            Permission("tasker.workflow_step:update"),
        ),
        (
            "DELETE",
            "/tasks/{id}/workflow_steps/{step}",
            Permission("tasker.workflow_step:destroy"),
        ),
        (
            "POST",
            "/tasks/{id}/workflow_steps/{step}/retry",
            Permission("tasker.workflow_step:retry"),
        ),
        (
            "POST",
            "/tasks/{id}/workflow_steps/{step}/resolve",
            Permission("tasker.workflow_step:update"),
        ),
        (
            "POST",
            "/tasks/{id}/workflow_steps/{step}/complete",
            Permission("tasker.workflow_step:complete"),
        ),
        (
            "POST",
            "/tasks/{id}/workflow_steps/{step}/fail",
            Permission("tasker.workflow_step:fail"),
        ),
        (
            "POST",
            "/tasks/{id}/signals/{name}",
            Permission("tasker.task:signal"),
        ),
        (
            "POST",
            "/correlations/{id}/complete",
            Permission("tasker.workflow_step:complete"),
        ),
        ("GET", "/schedules", Permission("tasker.schedule:index")),
        ("POST", "/schedules", Permission("tasker.schedule:create")),
        (
            "GET",
            "/schedules/{name}",
            Permission("tasker.schedule:show"),
        ),
        (
            "DELETE",
            "/schedules/{name}",
            Permission("tasker.schedule:destroy"),
        ),
        (
            "POST",
            "/schedules/{name}/pause",
            Permission("tasker.schedule:update"),
        ),
        (
            "POST",
            "/schedules/{name}/resume",
            Permission("tasker.schedule:update"),
        ),
        // task_diagrams, task_diagrams.json, .html, .mmd (other names: 404)
        (
            "GET",
            "/tasks/{id}/{file}",
            Permission("tasker.task_diagram:index"),
        ),
        ("GET", "/handlers", Permission("tasker.handler:index")),
        (
            "GET",
            "/handlers/{namespace}",
            Permission("tasker.handler:index"),
        ),
        (
            "GET",
            "/handlers/{namespace}/{name}",
            Permission("tasker.handler:show"),
        ),
        ("GET", "/events", Permission("tasker.event:index")),
        // Each query and mutation checks its own permission (graphql.rs).
        ("POST", "/graphql", Authenticated),
        ("GET", "/openapi.json", Authenticated),
        (
            "GET",
            "/analytics/performance",
            Permission("tasker.analytics:index"),
        ),
        (
            "GET",
            "/analytics/bottlenecks",
            Permission("tasker.analytics:index"),
        ),
    ]
};

/// The rule for a request; `pattern` is the matched route without the base path.
pub fn access(method: &Method, pattern: &str) -> Option<Access> {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == pattern)
        .map(|(_, _, a)| *a)
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    permissions: Vec<String>,
}

/// Who is calling, as far as permissions go (GraphQL checks them per field).
#[derive(Debug, Clone)]
pub enum Principal {
    /// Auth off, or the static token: every permission.
    All,
    /// A JWT's `permissions` claim.
    Permissions(Vec<String>),
    /// No credentials (a public route).
    Anonymous,
}

impl Principal {
    pub fn allows(&self, permission: &str) -> bool {
        match self {
            Principal::All => true,
            Principal::Permissions(p) => p.iter().any(|x| x == permission),
            Principal::Anonymous => false,
        }
    }
}

/// The request's credentials checked against its route's rule.
pub fn check(
    auth: &Auth,
    rule: Option<Access>,
    bearer: Option<&str>,
) -> Result<Principal, ApiError> {
    let rule = match (auth, rule) {
        (Auth::Off, _) => return Ok(Principal::All),
        (_, Some(Access::Public)) => return Ok(Principal::Anonymous),
        (_, Some(r)) => r,
        // Not in the table: nobody may call it.
        (_, None) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route has no access rule (unknown.resource:unknown)",
            ))
        }
    };
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(token) = bearer else {
        return Err(unauthorized(
            "missing credentials: send Authorization: Bearer <token>",
        ));
    };
    match auth {
        Auth::Off => Ok(Principal::All),
        Auth::Token(expected) => {
            if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
                Ok(Principal::All)
            } else {
                Err(unauthorized("invalid token"))
            }
        }
        Auth::Jwt(kv) => {
            let data = jsonwebtoken::decode::<Claims>(token, &kv.0, &kv.1)
                .map_err(|e| unauthorized(&format!("invalid token: {e}")))?;
            match rule {
                Access::Permission(p) if !data.claims.permissions.iter().any(|x| x == p) => {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!("the token lacks the permission {p}"),
                    ))
                }
                _ => Ok(Principal::Permissions(data.claims.permissions)),
            }
        }
    }
}

/// The middleware: finds the route's rule and checks the bearer credentials.
pub async fn authorize(
    State(st): State<crate::AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let pattern = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let pattern = pattern
        .strip_prefix(st.base_path.as_str())
        .unwrap_or(&pattern);
    let rule = access(req.method(), pattern);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let principal = check(&st.auth, rule, bearer)?;
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}
