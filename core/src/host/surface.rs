//! The engine calls every binding makes in the same shape, written once: a task listing from a host's filter
//! ([`TaskListQuery`]), a worker loop from a host's `run_worker` arguments ([`DriverSpec`]),
//! and a bounded wait that answers the task's state ([`crate::Engine::wait_for_task_state`]).
//! A binding converts these to its language and back; it never re-checks or re-defaults them.

use std::time::Duration;

use serde::Deserialize;

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
