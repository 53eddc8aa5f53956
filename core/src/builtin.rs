//! Built-in step handlers, usable from every host and from the CLI: a step whose handler is
//! `command` or `http` runs one of these unless the host registered a handler of that name.
//!
//! * **`command`** runs a program. `handler_config: {command: [argv...] | "shell string", env,
//!   cwd, permanent_exit_codes}`. The program reads `{task_id, step, attempt, context,
//!   results}` as JSON on stdin (and a fan-out instance's `batch` and `batch_index`, an
//!   earlier attempt's `checkpoint`, when there are). Exit 0: stdout (JSON, else plain text as a JSON string) is the
//!   step's results. Non-zero: a retryable failure with the tail of stderr, permanent for an exit
//!   code listed in `permanent_exit_codes`; a JSON object on stdout may give `error` and
//!   `retry_after` (seconds). A timeout kills the whole process group. Nothing from the context
//!   is ever put into the command line: data travels on stdin (and `TASKER_*` variables).
//! * **`http`** makes a request. `handler_config: {method, url, headers, body,
//!   timeout_seconds}`; `url`, header values and `body` may contain `{{context.x}}` and
//!   `{{results.step.field}}`, escaped for their place (percent-encoded in the URL, except a
//!   placeholder that starts it: a base URL; refused in a header if they hold a line break;
//!   substituted as JSON values in a JSON body). 2xx: the JSON
//!   body (or `{status, body}`) is the results. 429 and 503: retryable, honouring `Retry-After`
//!   (seconds or HTTP-date). 400, 401, 403, 404, 422: permanent. Anything else, and connection
//!   errors: retryable. Header values are never logged.
//! * **`wait`** waits for the world: `handler_config: {signal, timeout_seconds, results}` (all
//!   optional) is a `Wait` (a human approval: `{signal: approved, timeout_seconds: 86400}`);
//!   the step ends by `signal`, `complete_step` or `fail_step`, or times out.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use crate::error::TemplateError;
use crate::handler::{HandlerError, Registry, StepContext, StepHandler};
use crate::template::TaskTemplate;

pub const COMMAND: &str = "command";
pub const HTTP: &str = "http";
pub const WAIT: &str = "wait";

/// The names of the built-in handlers.
pub const NAMES: [&str; 3] = [COMMAND, HTTP, WAIT];

/// Adds the built-in handlers to `registry`, keeping any handler the host registered under the
/// same name.
pub fn register(registry: &mut Registry) {
    if registry.get(COMMAND).is_none() {
        registry.register(COMMAND, CommandHandler);
    }
    if registry.get(HTTP).is_none() {
        registry.register(HTTP, HttpHandler::default());
    }
    if registry.get(WAIT).is_none() {
        registry.register(WAIT, WaitHandler);
    }
}

/// The `wait` handler's `handler_config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitConfig {
    signal: Option<String>,
    timeout_seconds: Option<f64>,
    #[serde(default)]
    results: Value,
}

impl WaitConfig {
    fn parse(v: &Value) -> Result<crate::protocol::Wait, String> {
        let c: WaitConfig = match v {
            Value::Null => WaitConfig {
                signal: None,
                timeout_seconds: None,
                results: Value::Null,
            },
            v => serde_json::from_value(v.clone()).map_err(|e| {
                format!("handler_config of the wait handler ({{signal, timeout_seconds, results}}): {e}")
            })?,
        };
        let w = crate::protocol::Wait {
            signal: c.signal,
            correlation_id: None,
            timeout: c.timeout_seconds,
            results: c.results,
        };
        match w.problem() {
            Some(p) => Err(format!("handler_config: {p}")),
            None => Ok(w),
        }
    }
}

/// Returns the `Wait` its `handler_config` describes; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct WaitHandler;

#[async_trait]
impl StepHandler for WaitHandler {
    async fn call(&self, step: &StepContext) -> Result<Value, HandlerError> {
        let w = WaitConfig::parse(&step.config).map_err(HandlerError::permanent)?;
        Ok(w.into_value())
    }
}

impl Registry {
    /// A registry holding the built-in `command` and `http` handlers; handlers registered
    /// afterwards under those names replace them. (Defined here, beside the handlers, so the
    /// handler module knows nothing of them.)
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        register(&mut r);
        r
    }
}

/// Checks the `handler_config` of every step that uses a built-in handler, so a bad command
/// or URL is reported before anything runs.
pub fn check_template(t: &TaskTemplate) -> Result<(), TemplateError> {
    for s in &t.steps {
        let err = |message: String| TemplateError::Step {
            template: t.key(),
            step: s.name.clone(),
            message,
        };
        match s.handler.as_str() {
            COMMAND => {
                CommandConfig::parse(&s.handler_config).map_err(err)?;
            }
            WAIT => {
                WaitConfig::parse(&s.handler_config).map_err(err)?;
            }
            HTTP => {
                let c = HttpConfig::parse(&s.handler_config).map_err(err)?;
                // Placeholders are filled at run time; the rest must already form a URL.
                let probe = replace_placeholders_at(&c.url, |_, at_start| {
                    Ok(if at_start {
                        "http://placeholder".into()
                    } else {
                        "x".into()
                    })
                })
                .map_err(|m| err(format!("handler_config.url: {m}")))?;
                check_url(&probe).map_err(|m| err(format!("handler_config.url: {m}")))?;
                reqwest::Method::from_bytes(c.method.as_bytes()).map_err(|_| {
                    err(format!(
                        "handler_config.method: {:?} is not an HTTP method",
                        c.method
                    ))
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("invalid URL {url:?}: scheme must be http or https"));
    }
    Ok(u)
}

fn config_error(e: serde_json::Error) -> String {
    format!("handler_config: {e}")
}

// ---- command -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandConfig {
    command: CommandSpec,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    permanent_exit_codes: Vec<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CommandSpec {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandConfig {
    fn parse(v: &Value) -> Result<CommandConfig, String> {
        let c: CommandConfig = serde_json::from_value(v.clone()).map_err(config_error)?;
        match &c.command {
            CommandSpec::Argv(a) if a.is_empty() => {
                Err("handler_config.command: the argument list is empty".into())
            }
            CommandSpec::Shell(s) if s.trim().is_empty() => {
                Err("handler_config.command: the command is empty".into())
            }
            _ => Ok(c),
        }
    }
}

/// Runs a program per attempt; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommandHandler;

/// Kills the process group when dropped before the program finished (timeout, shutdown).
struct GroupKiller(Option<i32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

const TAIL: usize = 2000;

fn tail(s: &str) -> String {
    let s = s.trim_end();
    if s.len() <= TAIL {
        return s.to_owned();
    }
    let mut start = s.len() - TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[async_trait]
impl StepHandler for CommandHandler {
    async fn call(&self, step: &StepContext) -> Result<Value, HandlerError> {
        let cfg = CommandConfig::parse(&step.config).map_err(HandlerError::permanent)?;
        let (program, mut cmd) = match &cfg.command {
            CommandSpec::Argv(argv) => {
                let mut c = tokio::process::Command::new(&argv[0]);
                c.args(&argv[1..]);
                (argv[0].clone(), c)
            }
            CommandSpec::Shell(s) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(s);
                (s.clone(), c)
            }
        };
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env("TASKER_TASK_ID", step.task_id().to_string())
            .env("TASKER_STEP", &step.step_name)
            .env("TASKER_ATTEMPT", step.attempt().to_string())
            .env("TASKER_MAX_ATTEMPTS", step.max_attempts.to_string())
            .envs(&cfg.env)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &cfg.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().map_err(|e| {
            HandlerError::permanent(format!("cannot start command {program:?}: {e}"))
        })?;
        let mut killer = GroupKiller(child.id().map(|p| p as i32));
        let mut input = json!({
            "task_id": step.task_id(),
            "step": step.step_name,
            "attempt": step.attempt(),
            "context": *step.context,
            "results": step.results,
        });
        // A fan-out instance's item and place, and an earlier attempt's checkpoint.
        if let Some(b) = &step.batch {
            input["batch"] = b.clone();
        }
        if let Some(i) = step.batch_index {
            input["batch_index"] = json!(i);
        }
        if let Some(c) = &step.checkpoint {
            input["checkpoint"] = c.clone();
        }
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = tokio::spawn(async move {
            let bytes = serde_json::to_vec(&input).expect("json");
            // A program that does not read its input closes the pipe: not an error.
            let _ = stdin.write_all(&bytes).await;
            let _ = stdin.shutdown().await;
        });
        let out = child.wait_with_output().await.map_err(|e| {
            HandlerError::retryable(format!("command {program:?} failed to run: {e}"))
        })?;
        killer.0 = None;
        let _ = writer.await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let text = stdout.trim();
            return Ok(if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
            });
        }
        let code = out.status.code();
        let reported: Option<Map<String, Value>> = serde_json::from_str::<Value>(stdout.trim())
            .ok()
            .and_then(|v| v.as_object().cloned());
        let how = match code {
            Some(c) => format!("exit code {c}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("killed by signal {}", out.status.signal().unwrap_or(0))
            }
        };
        let detail = reported
            .as_ref()
            .and_then(|m| m.get("error"))
            .map(|e| {
                e.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string())
            })
            .unwrap_or_else(|| {
                let t = tail(&stderr);
                if t.is_empty() {
                    "(no output on stderr)".to_owned()
                } else {
                    t
                }
            });
        let message = format!("{how}: {detail}");
        if code.is_some_and(|c| cfg.permanent_exit_codes.contains(&c)) {
            return Err(HandlerError::permanent(message));
        }
        let retry_after = reported
            .as_ref()
            .and_then(|m| m.get("retry_after"))
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        Err(HandlerError::Retryable {
            message,
            retry_after,
        })
    }
}

// ---- http --------------------------------------------------------------------------------------

fn default_method() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    #[serde(default = "default_method")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    timeout_seconds: Option<f64>,
}

impl HttpConfig {
    fn parse(v: &Value) -> Result<HttpConfig, String> {
        let c: HttpConfig = serde_json::from_value(v.clone()).map_err(config_error)?;
        if let Some(t) = c.timeout_seconds {
            if !(t.is_finite() && t > 0.0) {
                return Err(format!(
                    "handler_config.timeout_seconds must be > 0, got {t}"
                ));
            }
        }
        Ok(c)
    }
}

/// Makes an HTTP request per attempt; see the module docs.
#[derive(Debug, Clone)]
pub struct HttpHandler {
    client: reqwest::Client,
}

impl Default for HttpHandler {
    fn default() -> Self {
        HttpHandler {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .user_agent(concat!("tasker/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("HTTP client"),
        }
    }
}

/// Replaces every `{{path}}` in `s` with `f(path)`.
fn replace_placeholders(
    s: &str,
    mut f: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    replace_placeholders_at(s, |p, _| f(p))
}

/// Like [`replace_placeholders`], telling `f` whether the placeholder starts the string.
fn replace_placeholders_at(
    s: &str,
    mut f: impl FnMut(&str, bool) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let at_start = out.is_empty();
        let after = &rest[i + 2..];
        let j = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in {s:?}"))?;
        out.push_str(&f(after[..j].trim(), at_start)?);
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Fills a URL: a placeholder that starts it is a base URL, inserted as is; any other value is
/// percent-encoded.
fn fill_url(url: &str, scope: &Value) -> Result<String, String> {
    replace_placeholders_at(url, |p, at_start| {
        let v = as_text(lookup(scope, p)?);
        Ok(if at_start { v } else { percent_encode(&v) })
    })
}

/// Looks up `context.a.b` or `results.step.field` (array indexes allowed).
fn lookup<'v>(scope: &'v Value, path: &str) -> Result<&'v Value, String> {
    let mut parts = path.split('.');
    let root = parts.next().unwrap_or_default();
    if root != "context" && root != "results" {
        return Err(format!(
            "{{{{{path}}}}}: placeholders start with context. or results."
        ));
    }
    let mut cur = &scope[root];
    for p in parts {
        let next = match cur {
            Value::Object(m) => m.get(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        cur = next.ok_or_else(|| format!("{{{{{path}}}}}: {path} is not set"))?;
    }
    Ok(cur)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Substitutes placeholders inside a JSON body: a string that is one placeholder becomes the
/// value itself; placeholders inside longer strings are inserted as text.
fn fill_body(v: &Value, scope: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with("{{") && t.ends_with("}}") && t.matches("{{").count() == 1 {
                lookup(scope, t[2..t.len() - 2].trim())?.clone()
            } else {
                Value::String(replace_placeholders(s, |p| lookup(scope, p).map(as_text))?)
            }
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| fill_body(x, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), fill_body(x, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Seconds to wait from a `Retry-After` value: delta-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<f64> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then_some(s);
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs =
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0;
    Some(secs.max(0.0))
}

#[async_trait]
impl StepHandler for HttpHandler {
    async fn call(&self, step: &StepContext) -> Result<Value, HandlerError> {
        let cfg = HttpConfig::parse(&step.config).map_err(HandlerError::permanent)?;
        let scope = json!({"context": *step.context, "results": step.results});
        let url = fill_url(&cfg.url, &scope)
            .map_err(|m| HandlerError::permanent(format!("handler_config.url: {m}")))?;
        let url = check_url(&url)
            .map_err(|m| HandlerError::permanent(format!("handler_config.url: {m}")))?;
        let method = reqwest::Method::from_bytes(cfg.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                HandlerError::permanent(format!(
                    "handler_config.method: {:?} is not an HTTP method",
                    cfg.method
                ))
            })?;
        let mut req = self.client.request(method.clone(), url.clone());
        let mut has_content_type = false;
        for (name, value) in &cfg.headers {
            let value =
                replace_placeholders(value, |p| lookup(&scope, p).map(as_text)).map_err(|m| {
                    HandlerError::permanent(format!("handler_config.headers.{name}: {m}"))
                })?;
            if value.contains(['\r', '\n']) {
                return Err(HandlerError::permanent(format!(
                    "handler_config.headers.{name}: the value contains a line break"
                )));
            }
            has_content_type |= name.eq_ignore_ascii_case("content-type");
            req = req.header(name.as_str(), value);
        }
        match &cfg.body {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                let text = replace_placeholders(s, |p| lookup(&scope, p).map(as_text))
                    .map_err(|m| HandlerError::permanent(format!("handler_config.body: {m}")))?;
                if !has_content_type {
                    req = req.header("content-type", "text/plain; charset=utf-8");
                }
                req = req.body(text);
            }
            Some(b) => {
                let body = fill_body(b, &scope)
                    .map_err(|m| HandlerError::permanent(format!("handler_config.body: {m}")))?;
                if !has_content_type {
                    req = req.header("content-type", "application/json");
                }
                req = req.body(serde_json::to_vec(&body).expect("json"));
            }
        }
        if let Some(t) = cfg.timeout_seconds {
            req = req.timeout(Duration::from_secs_f64(t));
        }
        let what = format!("{method} {}", redact(&url));
        let resp = req.send().await.map_err(|e| {
            HandlerError::retryable(format!("{what}: request failed: {}", error_chain(&e)))
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| {
            HandlerError::retryable(format!(
                "{what}: reading the response failed: {}",
                error_chain(&e)
            ))
        })?;
        classify_http_response(&what, status, retry_after.as_deref(), &bytes)
    }
}

/// What an HTTP response means for the step that made it — the one rule shared by the built-in
/// `http` handler and the bindings' API handlers (the Ruby gem's `Tasker::StepHandler::Api`):
///
/// - 2xx: success; the results are the body parsed as JSON, else `{status, body}` (text);
/// - 429 and 503: retryable, after `Retry-After` (delta-seconds or an HTTP-date) when given;
/// - 400, 401, 403, 404, 422: permanent;
/// - anything else (other 5xx, 3xx, 1xx): retryable.
///
/// `what` names the request in the failure message (for example `GET http://host/path`).
pub fn classify_http_response(
    what: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<Value, HandlerError> {
    let text = String::from_utf8_lossy(body);
    if (200..300).contains(&status) {
        return Ok(serde_json::from_slice(body)
            .unwrap_or_else(|_| json!({"status": status, "body": text})));
    }
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let snippet: String = text.chars().take(300).collect();
    let message = format!("{what}: HTTP {status} {reason}: {}", snippet.trim());
    match status {
        429 | 503 => Err(HandlerError::Retryable {
            message,
            retry_after: retry_after
                .and_then(parse_retry_after)
                .map(Duration::from_secs_f64),
        }),
        400 | 401 | 403 | 404 | 422 => Err(HandlerError::permanent(message)),
        _ => Err(HandlerError::retryable(message)),
    }
}

/// The URL without user info or query (they may carry secrets).
fn redact(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    if u.query().is_some() {
        u.set_query(Some("…"));
    }
    u.to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_are_classified_by_status() {
        let ok = classify_http_response("GET x", 201, None, br#"{"id": 7}"#).unwrap();
        assert_eq!(ok, json!({"id": 7}));
        let text = classify_http_response("GET x", 200, None, b"plain").unwrap();
        assert_eq!(text, json!({"status": 200, "body": "plain"}));
        for (status, retryable) in [(429, true), (503, true), (500, true), (302, true)] {
            let e = classify_http_response("GET x", status, Some("7"), b"").unwrap_err();
            let f = e.into_failure();
            assert_eq!(f.kind == crate::protocol::FailureKind::Retryable, retryable);
            let expect = matches!(status, 429 | 503).then_some(7.0);
            assert_eq!(f.retry_after_seconds, expect, "status {status}");
        }
        for status in [400, 401, 403, 404, 422] {
            let f = classify_http_response("GET x", status, None, b"no")
                .unwrap_err()
                .into_failure();
            assert_eq!(f.kind, crate::protocol::FailureKind::Permanent);
            assert!(
                f.message.contains(&format!("HTTP {status} ")),
                "{}",
                f.message
            );
        }
    }

    #[test]
    fn placeholders_are_escaped_for_the_url() {
        let scope = json!({"context": {"q": "a b/c?d"}, "results": {"s": {"id": 7}}});
        let url = fill_url("http://h/x/{{context.q}}?id={{ results.s.id }}", &scope).unwrap();
        assert_eq!(url, "http://h/x/a%20b%2Fc%3Fd?id=7");
        let scope =
            json!({"context": {"base": "http://127.0.0.1:9/api", "q": "a/b"}, "results": {}});
        assert_eq!(
            fill_url("{{context.base}}/x/{{context.q}}", &scope).unwrap(),
            "http://127.0.0.1:9/api/x/a%2Fb"
        );
        let err = replace_placeholders("{{context.nope}}", |p| lookup(&scope, p).map(as_text))
            .unwrap_err();
        assert!(err.contains("context.nope is not set"), "{err}");
    }

    #[test]
    fn a_whole_string_placeholder_in_a_body_keeps_its_json_type() {
        let scope = json!({"context": {"n": 5, "name": "x\"y"}, "results": {}});
        let body = fill_body(
            &json!({"n": "{{context.n}}", "msg": "hi {{context.name}}"}),
            &scope,
        )
        .unwrap();
        assert_eq!(body, json!({"n": 5, "msg": "hi x\"y"}));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("120"), Some(120.0));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(0.0)
        );
        let future = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let s = parse_retry_after(&future).unwrap();
        assert!((28.0..=30.0).contains(&s), "{s}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
