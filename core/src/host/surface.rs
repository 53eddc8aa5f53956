//! The engine calls every binding makes in the same shape, written once: a task listing from a host's filter
//! ([`TaskListQuery`]), a worker loop from a host's `run_worker` arguments ([`DriverSpec`]),
//! and a bounded wait that answers the task's state ([`crate::Engine::wait_for_task_state`]).
//! A binding converts these to its language and back; it never re-checks or re-defaults them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{HostDriver, HostOptions, RunMode};
use crate::engine::{Engine, TaskSummary};
use crate::error::{Error, Result};
use crate::handler::Registry;
pub use crate::protocol::HostJob;
use crate::state::TaskState;
use crate::store::TaskFilter;

/// A task listing as the bindings take it (`list_tasks(status=, name=, namespace=, limit=100,
/// offset=0)`; the same keys as JSON from Node and Ruby), newest first.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    pub status: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl TaskListQuery {
    /// From a binding's JSON options (`what` names them in the error).
    pub fn from_json(what: &str, text: &str) -> Result<TaskListQuery> {
        serde_json::from_str(text).map_err(|e| Error::Validation(format!("{what}: {e}")))
    }

    /// The filter: `status` must name a task state; limit 100 and offset 0 unless given.
    pub fn filter(self) -> Result<TaskFilter> {
        let state = self
            .status
            .map(|s| {
                s.parse::<TaskState>()
                    .map_err(|m| Error::Validation(format!("status: {m}")))
            })
            .transpose()?;
        Ok(TaskFilter {
            oldest_first: false,
            state,
            name: self.name,
            namespace: self.namespace,
            limit: Some(self.limit.unwrap_or(100)),
            offset: Some(self.offset.unwrap_or(0)),
            ..Default::default()
        })
    }
}

/// A binding's worker loop: its handlers (run by the host; the built-in ones run in the
/// driver), how many at once, and when the run ends.
#[derive(Debug, Clone)]
pub struct DriverSpec {
    pub handlers: Vec<String>,
    /// At least 1.
    pub concurrency: i64,
    /// `forever`, `until_idle`, or `until_task` (with `task_id`).
    pub mode: String,
    pub task_id: Option<i64>,
    pub worker_id: Option<String>,
    /// Clamped to 0..=86,400 (default 30 s).
    pub shutdown_grace_seconds: Option<f64>,
}

impl DriverSpec {
    /// The driver's options, or a [`Error::Validation`] naming what is wrong.
    pub fn options(self) -> Result<HostOptions> {
        if self.concurrency < 1 {
            return Err(Error::Validation(format!(
                "concurrency must be at least 1, got {}",
                self.concurrency
            )));
        }
        let mode = match (self.mode.as_str(), self.task_id) {
            ("forever", _) => RunMode::Forever,
            ("until_idle", _) => RunMode::UntilIdle,
            ("until_task", Some(id)) => RunMode::UntilTask(id),
            _ => {
                return Err(Error::Validation(format!(
                    "unknown run mode {:?} (task_id {:?}): expected forever, until_idle or until_task with a task id",
                    self.mode, self.task_id
                )))
            }
        };
        let grace = self.shutdown_grace_seconds.unwrap_or(30.0);
        let grace = if grace.is_finite() {
            grace.clamp(0.0, 86_400.0)
        } else {
            30.0
        };
        let mut opts = HostOptions {
            concurrency: self.concurrency as usize,
            mode,
            host_handlers: self.handlers,
            shutdown_grace: Duration::from_secs_f64(grace),
            ..Default::default()
        };
        if let Some(w) = self.worker_id {
            opts.worker_id = w;
        }
        Ok(opts)
    }
}

impl HostDriver {
    /// Starts a binding's worker loop on the current tokio runtime: `spec`'s handlers run on
    /// the host, the built-in ones in the driver.
    pub fn start_spec(engine: Engine, spec: DriverSpec) -> Result<HostDriver> {
        Ok(HostDriver::start(
            engine,
            Registry::with_builtins(),
            spec.options()?,
        ))
    }
}

impl Engine {
    /// Tasks as a binding lists them ([`TaskListQuery`]).
    pub async fn list_tasks_query(&self, q: TaskListQuery) -> Result<Vec<TaskSummary>> {
        self.list_tasks(&q.filter()?).await
    }

    /// Waits up to `seconds` (clamped to an hour) for the task to finish; answers its state
    /// then, finished or not (a binding's `run_until_complete` loop asks again).
    pub async fn wait_for_task_state(&self, task_id: i64, seconds: f64) -> Result<TaskState> {
        let secs = if seconds.is_finite() {
            seconds.clamp(0.0, 3600.0)
        } else {
            0.0
        };
        match self
            .wait_for_task(task_id, Some(Duration::from_secs_f64(secs)))
            .await
        {
            Ok(s) => Ok(s.status),
            Err(Error::Timeout(_)) => self.get_task_state(task_id).await,
            Err(e) => Err(e),
        }
    }
}

impl Engine {
    /// Registers a template as a binding hands it over: `kind` `yaml` (text), `file` (a path)
    /// or `json` (a document the host serialized). The binding shows the warnings.
    pub async fn register_template_kind(
        &self,
        kind: &str,
        text: &str,
    ) -> Result<crate::engine::Registration> {
        use crate::engine::TemplateSource;
        let src = match kind {
            "yaml" => TemplateSource::Yaml(text),
            "file" => TemplateSource::File(text.as_ref()),
            "json" => TemplateSource::Value(serde_json::from_str(text).map_err(|e| {
                crate::error::TemplateError::Shape {
                    template: "<unnamed>".into(),
                    path: ".".into(),
                    message: format!("template is not JSON: {e}"),
                }
            })?),
            other => {
                return Err(Error::Validation(format!(
                    "register_template: kind {other:?} is not yaml, file or json"
                )))
            }
        };
        self.register_source(src).await
    }

    /// Registers event definitions as a binding hands them over: `kind` `yaml` (text) or
    /// `path` (a file or a directory).
    pub async fn register_events_kind(
        &self,
        kind: &str,
        text: &str,
    ) -> Result<Vec<crate::events::EventDefinition>> {
        use crate::engine::EventSource;
        let src = match kind {
            "yaml" => EventSource::Yaml(text),
            "path" => EventSource::Path(text.as_ref()),
            other => {
                return Err(Error::Validation(format!(
                    "register_events: kind {other:?} is not yaml or path"
                )))
            }
        };
        self.register_events(src).await
    }

    /// [`Engine::analytics`] for a window in seconds as a host gives it: refused unless a
    /// positive, finite number.
    pub async fn analytics_seconds(
        &self,
        window_seconds: f64,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<crate::engine::Analytics> {
        if !(window_seconds.is_finite() && window_seconds > 0.0) {
            return Err(Error::Validation(format!(
                "analytics: window_seconds must be a positive number, got {window_seconds}"
            )));
        }
        self.analytics(Duration::from_secs_f64(window_seconds), namespace, name)
            .await
    }
}

impl Engine {
    /// Schedules as a binding calls them, one entry point for every language: `op` is
    /// `create` (`arg`: a [`crate::schedule::ScheduleSpec`] as JSON, the binding's keyword
    /// arguments), `list`, or `get` / `pause` / `resume` / `delete` (`arg`: the name). Answers
    /// JSON text: the schedule, the list, or `null` for `delete`.
    pub async fn schedule_op(&self, op: &str, arg: &str) -> Result<String> {
        match op {
            "create" => {
                let de = &mut serde_json::Deserializer::from_str(arg);
                let spec: crate::schedule::ScheduleSpec = serde_path_to_error::deserialize(de)
                    .map_err(|e| {
                        let at = e.path().to_string();
                        Error::Validation(if at == "." {
                            format!("create_schedule: {}", e.inner())
                        } else {
                            format!("create_schedule: {at}: {}", e.inner())
                        })
                    })?;
                Ok(json_text(&self.create_schedule(spec).await?))
            }
            "list" => Ok(json_text(&self.list_schedules().await?)),
            "get" => Ok(json_text(&self.get_schedule(arg).await?)),
            "pause" => Ok(json_text(&self.pause_schedule(arg).await?)),
            "resume" => Ok(json_text(&self.resume_schedule(arg).await?)),
            "delete" => {
                self.delete_schedule(arg).await?;
                Ok("null".into())
            }
            other => Err(Error::Validation(format!(
                "schedule operation {other:?}: expected create, list, get, pause, resume or delete"
            ))),
        }
    }
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("json")
}

/// A bulk action's selection as hosts give it (bindings' keyword arguments, CLI flags, REST
/// bodies): `status` names a task state, `since` is an RFC 3339 time or an age (`"24h"`,
/// `"7d"`: created within it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkQuery {
    pub status: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub since: Option<String>,
}

impl BulkQuery {
    /// The selection, `since` resolved against `now_ms`.
    pub fn selection(self, now_ms: i64) -> Result<crate::engine::TaskSelection> {
        let status = self
            .status
            .map(|s| {
                s.parse::<TaskState>()
                    .map_err(|m| Error::Validation(format!("status: {m}")))
            })
            .transpose()?;
        let since = self.since.map(|s| parse_since(&s, now_ms)).transpose()?;
        Ok(crate::engine::TaskSelection {
            status,
            name: self.name,
            namespace: self.namespace,
            since,
        })
    }
}

/// An age as operators write it: seconds (`3600`), or a number with units (`30d`, `12h`,
/// `90m`, `1w`, `2h 30m`).
pub fn parse_age(what: &str, s: &str) -> Result<Duration> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(t).map_err(|e| {
        Error::Validation(format!(
            "{what}: {s:?} is not an age ({e}); write seconds or a number with units, as 30d, 12h, 90m"
        ))
    })
}

/// `since` as epoch ms: an RFC 3339 time, or an age before `now_ms` ([`parse_age`]).
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.timestamp_millis());
    }
    let age = parse_age("since", s).map_err(|_| {
        Error::Validation(format!(
            "since: {s:?} is neither an RFC 3339 time (2026-12-01T00:00:00Z) nor an age (24h, 7d)"
        ))
    })?;
    Ok(now_ms - age.as_millis().min(i64::MAX as u128) as i64)
}

/// The arguments of [`Engine::flow_op`]: the union of every operation's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowArgs {
    task_id: Option<i64>,
    step: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    status: Option<String>,
    since: Option<String>,
    older_than: Option<serde_json::Value>,
    statuses: Option<Vec<String>>,
}

impl FlowArgs {
    fn need<T: Clone>(v: &Option<T>, op: &str, key: &str) -> Result<T> {
        v.clone()
            .ok_or_else(|| Error::Validation(format!("{op}: {key} is required")))
    }
}

impl Engine {
    /// Steering a task or many as a binding calls it, one entry point for every language:
    /// `pause_task`, `resume_task`, `retry_task` (`{task_id}`), `rerun_from` (`{task_id,
    /// step}`), `pause_template`, `resume_template` (`{name, namespace}`), `retry_tasks`,
    /// `cancel_tasks` ([`BulkQuery`]'s keys), `prune` (`{older_than, statuses}`: seconds or an
    /// age such as `"30d"`). Answers JSON text: whether the task changed (pause, resume), or
    /// how many steps or tasks.
    pub async fn flow_op(&self, op: &str, arg: &str) -> Result<String> {
        let a: FlowArgs = serde_json::from_str(if arg.trim().is_empty() { "{}" } else { arg })
            .map_err(|e| Error::Validation(format!("{op}: {e}")))?;
        let ns = || {
            a.namespace
                .clone()
                .unwrap_or_else(|| crate::template::DEFAULT_NAMESPACE.into())
        };
        let bulk = || BulkQuery {
            status: a.status.clone(),
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            since: a.since.clone(),
        };
        let answer = match op {
            "pause_task" => json!(self.pause_task(FlowArgs::need(&a.task_id, op, "task_id")?).await?),
            "resume_task" => {
                json!(self.resume_task(FlowArgs::need(&a.task_id, op, "task_id")?).await?)
            }
            "retry_task" => json!(self.retry_task(FlowArgs::need(&a.task_id, op, "task_id")?).await?),
            "rerun_from" => {
                let id = FlowArgs::need(&a.task_id, op, "task_id")?;
                json!(self.rerun_from(id, &FlowArgs::need(&a.step, op, "step")?).await?)
            }
            "pause_template" => {
                json!(self.pause_template(&FlowArgs::need(&a.name, op, "name")?, &ns()).await?)
            }
            "resume_template" => {
                json!(self.resume_template(&FlowArgs::need(&a.name, op, "name")?, &ns()).await?)
            }
            "retry_tasks" => json!(self.retry_tasks(&bulk().selection(self.now())?).await?),
            "cancel_tasks" => json!(self.cancel_tasks(&bulk().selection(self.now())?).await?),
            "prune" => {
                let age = match FlowArgs::need(&a.older_than, op, "older_than")? {
                    serde_json::Value::String(s) => parse_age("older_than", &s)?,
                    serde_json::Value::Number(n) => parse_age("older_than", &n.to_string())?,
                    other => {
                        return Err(Error::Validation(format!(
                            "prune: older_than must be seconds or an age such as \"30d\", got {other}"
                        )))
                    }
                };
                let statuses = a
                    .statuses
                    .iter()
                    .flatten()
                    .map(|s| {
                        s.parse::<TaskState>()
                            .map_err(|m| Error::Validation(format!("prune: statuses: {m}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                json!(self.prune(age, &statuses).await?)
            }
            other => {
                return Err(Error::Validation(format!(
                    "unknown operation {other:?}: expected pause_task, resume_task, retry_task, rerun_from, pause_template, resume_template, retry_tasks, cancel_tasks or prune"
                )))
            }
        };
        Ok(answer.to_string())
    }
}
