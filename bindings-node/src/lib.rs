//! The native half of the `tasker` npm package (napi-rs). It converts types and nothing else:
//! every decision is tasker-core's, every worker loop is core's host driver. Data crosses as
//! JSON text (parsed by the JS half); every call that can wait returns a Promise and runs on
//! napi's tokio runtime, never on the JS thread. Errors carry their kind as a `[tasker:KIND]`
//! prefix that the JS half turns into `TaskerError` subclasses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::Value;
use tasker_core::host::{self, DriverSpec, HostJob, TaskListQuery};
use tasker_core::{
    Engine, EngineOptions, Error as CoreError, Event, HostDriver, JobKey, Outcome, StepFailure,
    TaskRequest,
};
use tokio::sync::broadcast;

fn err(e: CoreError) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("[tasker:{}] {e}", e.kind()))
}

fn invalid(message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(Status::InvalidArg, format!("[tasker:validation] {message}"))
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("json")
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| invalid(format!("{what}: {e}")))
}

/// How to open an engine.
#[napi(object)]
pub struct CoreOptions {
    pub url: Option<String>,
    pub environment: Option<String>,
    pub schema: Option<String>,
    pub lease_seconds: Option<f64>,
    pub listen: Option<bool>,
    pub strict_templates: Option<bool>,
}

/// A claimed job, as the JS half's `Step` is built from it.
#[napi(object)]
pub struct NativeJob {
    pub task_id: i64,
    pub step_id: i64,
    pub attempt: u32,
    pub position: u32,
    pub name: String,
    pub handler: String,
    pub max_attempts: u32,
    pub context: String,
    pub results: String,
    pub config: String,
    pub custom_events: Vec<String>,
    /// A fan-out instance's item (JSON) and place; absent otherwise.
    pub batch: Option<String>,
    pub batch_index: Option<u32>,
    /// What an earlier attempt saved (JSON); absent at first.
    pub checkpoint: Option<String>,
}

/// What `Driver.next` returns.
#[napi(object)]
pub struct NativeBatch {
    pub jobs: Vec<NativeJob>,
    pub done: bool,
}

/// The durability commits get.
#[napi(object)]
pub struct NativeDurability {
    pub description: String,
    pub durable: bool,
}

/// What a run did.
#[napi(object)]
pub struct NativeStats {
    pub completed: i64,
    pub failed: i64,
    pub stale: i64,
    pub cycles: i64,
}

impl From<HostJob> for NativeJob {
    fn from(j: HostJob) -> NativeJob {
        NativeJob {
            task_id: j.task_id,
            step_id: j.step_id,
            attempt: j.attempt,
            position: j.position,
            name: j.step_name,
            handler: j.handler,
            max_attempts: j.max_attempts,
            context: j.context,
            results: j.results,
            config: j.config,
            custom_events: j.custom_events,
            batch: j.batch,
            batch_index: j.batch_index,
            checkpoint: j.checkpoint,
        }
    }
}

fn key(task_id: i64, step_id: i64, attempt: u32, position: u32) -> JobKey {
    JobKey {
        task_id,
        step_id,
        attempt,
        position,
    }
}

/// Opens (and migrates) the database.
#[napi]
pub async fn open(options: CoreOptions) -> Result<Core> {
    let lease = options.lease_seconds.unwrap_or(30.0);
    if !(lease.is_finite() && lease >= 0.1) {
        return Err(invalid(format!(
            "leaseSeconds must be at least 0.1, got {lease}"
        )));
    }
    let opts = EngineOptions {
        url: options.url,
        environment: options.environment,
        schema: options.schema,
        listen: options.listen.unwrap_or(true),
        strict_templates: options.strict_templates.unwrap_or(false),
        lease: Duration::from_secs_f64(lease),
        ..Default::default()
    };
    let engine = Engine::open_with(opts).await.map_err(err)?;
    Ok(Core {
        engine,
        events: Arc::new(Mutex::new(None)),
    })
}

/// The engine on a database.
#[napi]
pub struct Core {
    engine: Engine,
    events: Arc<Mutex<Option<broadcast::Receiver<Arc<Event>>>>>,
}

/// What registering a template did ([`Core::register_template`]).
#[napi(object)]
pub struct Registered {
    pub key: String,
    pub warnings: Vec<String>,
}

#[napi]
impl Core {
    /// Registers YAML text, a file or a JSON document (`kind`: `yaml`, `file`, `json`);
    /// resolves to the key and what parsing warned about (unknown keys), which `index.js`
    /// emits as process warnings.
    #[napi]
    pub async fn register_template(&self, kind: String, text: String) -> Result<Registered> {
        let r = self
            .engine
            .register_template_kind(&kind, &text)
            .await
            .map_err(err)?;
        Ok(Registered {
            key: r.key,
            warnings: r.warnings,
        })
    }

    /// Creates a task from a JSON task request; resolves to its id.
    #[napi]
    pub async fn create_task(&self, request_json: String) -> Result<i64> {
        let req: TaskRequest = parse("task request", &request_json)?;
        self.engine.create_task(req).await.map_err(err)
    }

    #[napi]
    pub async fn create_tasks(&self, requests_json: String) -> Result<Vec<i64>> {
        let reqs: Vec<TaskRequest> = parse("task requests", &requests_json)?;
        self.engine.create_tasks(reqs).await.map_err(err)
    }

    /// Registers event definitions (`kind`: `yaml` text or a `path`, file or directory);
    /// resolves to the registered definitions as JSON.
    #[napi]
    pub async fn register_events(&self, kind: String, text: String) -> Result<String> {
        self.engine
            .register_events_kind(&kind, &text)
            .await
            .map(|d| json_text(&d))
            .map_err(err)
    }

    /// The event catalogue, as JSON.
    #[napi]
    pub async fn event_catalog(&self) -> Result<String> {
        self.engine
            .event_catalog()
            .await
            .map(|c| json_text(&c))
            .map_err(err)
    }

    /// Every stored event definition, as JSON.
    #[napi]
    pub async fn event_definitions(&self) -> Result<String> {
        self.engine
            .event_definitions()
            .await
            .map(|d| json_text(&d))
            .map_err(err)
    }

    #[napi]
    pub async fn get_task(&self, task_id: i64) -> Result<String> {
        self.engine
            .get_task(task_id)
            .await
            .map(|t| json_text(&t))
            .map_err(err)
    }

    #[napi]
    pub async fn list_tasks(&self, filter_json: String) -> Result<String> {
        let q = TaskListQuery::from_json("listTasks options", &filter_json).map_err(err)?;
        self.engine
            .list_tasks_query(q)
            .await
            .map(|l| json_text(&l))
            .map_err(err)
    }

    #[napi]
    pub async fn cancel_task(&self, task_id: i64) -> Result<()> {
        self.engine.cancel_task(task_id).await.map_err(err)
    }

    #[napi]
    pub async fn retry_step(&self, task_id: i64, step: String) -> Result<()> {
        self.engine.retry_step(task_id, &step).await.map_err(err)
    }

    #[napi]
    pub async fn update_task(
        &self,
        task_id: i64,
        reason: Option<String>,
        tags: Option<Vec<String>>,
    ) -> Result<()> {
        self.engine
            .update_task(task_id, reason, tags)
            .await
            .map_err(err)
    }

    #[napi]
    pub async fn cancel_step(&self, task_id: i64, step: String) -> Result<()> {
        self.engine.cancel_step(task_id, &step).await.map_err(err)
    }

    #[napi]
    pub async fn set_step_retry_limit(
        &self,
        task_id: i64,
        step: String,
        retry_limit: i64,
    ) -> Result<()> {
        self.engine
            .set_step_retry_limit(task_id, &step, retry_limit)
            .await
            .map_err(err)
    }

    /// The task's audit history, as JSON.
    #[napi]
    pub async fn transitions(&self, task_id: i64) -> Result<String> {
        self.engine
            .task_transitions(task_id)
            .await
            .map(|t| json_text(&t))
            .map_err(err)
    }

    /// Figures for the tasks created in the last `window_seconds`, as JSON.
    #[napi]
    pub async fn analytics(
        &self,
        window_seconds: f64,
        namespace: Option<String>,
        name: Option<String>,
    ) -> Result<String> {
        self.engine
            .analytics_seconds(window_seconds, namespace.as_deref(), name.as_deref())
            .await
            .map(|a| json_text(&a))
            .map_err(err)
    }

    #[napi]
    pub async fn signal(&self, task_id: i64, name: String, payload_json: String) -> Result<u32> {
        let payload: Value = parse("payload", &payload_json)?;
        self.engine
            .signal(task_id, &name, payload)
            .await
            .map(|n| n as u32)
            .map_err(err)
    }

    #[napi]
    pub async fn complete_step(
        &self,
        task_id: i64,
        step: String,
        results_json: String,
    ) -> Result<()> {
        let results: Value = parse("results", &results_json)?;
        self.engine
            .complete_step(task_id, &step, results)
            .await
            .map_err(err)
    }

    #[napi]
    pub async fn fail_step(
        &self,
        task_id: i64,
        step: String,
        message: String,
        permanent: bool,
    ) -> Result<()> {
        self.engine
            .fail_step(task_id, &step, &message, permanent)
            .await
            .map_err(err)
    }

    #[napi]
    pub async fn complete_correlated(
        &self,
        correlation_id: String,
        results_json: String,
    ) -> Result<u32> {
        let results: Value = parse("results", &results_json)?;
        self.engine
            .complete_correlated(&correlation_id, results)
            .await
            .map(|n| n as u32)
            .map_err(err)
    }

    /// Steering tasks: `op` pause_task, resume_task, retry_task, rerun_from, pause_template,
    /// resume_template, retry_tasks, cancel_tasks or prune (`arg`: its keys as JSON); JSON
    /// text back.
    #[napi]
    pub async fn flow_op(&self, op: String, arg: String) -> Result<String> {
        self.engine.flow_op(&op, &arg).await.map_err(err)
    }

    /// Schedules: `op` create (`arg`: the spec as JSON), list, get, pause, resume, delete
    /// (`arg`: the name); JSON text back.
    #[napi]
    pub async fn schedule_op(&self, op: String, arg: String) -> Result<String> {
        self.engine.schedule_op(&op, &arg).await.map_err(err)
    }

    #[napi]
    pub async fn resolve_step_manually(
        &self,
        task_id: i64,
        step: String,
        results_json: String,
    ) -> Result<()> {
        let results: Value = parse("results", &results_json)?;
        self.engine
            .resolve_step_manually(task_id, &step, results)
            .await
            .map_err(err)
    }

    /// The durability commits get, as the database reports it.
    #[napi]
    pub async fn durability(&self) -> Result<NativeDurability> {
        let d = self.engine.durability().await.map_err(err)?;
        Ok(NativeDurability {
            description: d.description,
            durable: d.durable,
        })
    }

    /// Waits up to `seconds` for the task to finish; resolves to its state then.
    #[napi]
    pub async fn wait_for_task(&self, task_id: i64, seconds: f64) -> Result<String> {
        self.engine
            .wait_for_task_state(task_id, seconds)
            .await
            .map(|s| s.as_str().to_owned())
            .map_err(err)
    }

    /// Publishes a custom event from a running job.
    #[napi]
    pub fn publish_custom_event(
        &self,
        job: NativeJob,
        name: String,
        payload_json: String,
    ) -> Result<()> {
        let payload: Value = parse(&format!("custom event {name}: payload"), &payload_json)?;
        self.engine
            .publish_custom_event_for(
                key(job.task_id, job.step_id, job.attempt, job.position),
                &job.name,
                &job.custom_events,
                &name,
                payload,
            )
            .map_err(err)
    }

    /// Saves a running job's checkpoint (JSON text), durably.
    #[napi]
    pub async fn save_checkpoint(
        &self,
        task_id: i64,
        step_id: i64,
        attempt: u32,
        position: u32,
        value_json: String,
    ) -> Result<()> {
        let value: Value = parse("checkpoint", &value_json)?;
        self.engine
            .save_checkpoint(&key(task_id, step_id, attempt, position), &value)
            .await
            .map_err(err)
    }

    /// Starts collecting lifecycle events for `drainEvents`.
    #[napi]
    pub fn subscribe(&self) {
        let mut g = self.events.lock().unwrap();
        if g.is_none() {
            *g = Some(self.engine.subscribe());
        }
    }

    /// Events since the last call, as JSON objects, oldest first.
    #[napi]
    pub fn drain_events(&self) -> Vec<String> {
        match self.events.lock().unwrap().as_mut() {
            Some(rx) => host::drain_events(rx)
                .iter()
                .map(|e| json_text(&**e))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Starts the worker loop (core's host driver) for `handlers` (run in JS) plus the
    /// built-in handlers (run in Rust). `mode`: "forever", "until_idle" or "until_task".
    #[napi]
    pub async fn start_driver(
        &self,
        handlers: Vec<String>,
        concurrency: u32,
        mode: String,
        task_id: Option<i64>,
        shutdown_grace_seconds: Option<f64>,
    ) -> Result<Driver> {
        let spec = DriverSpec {
            handlers,
            concurrency: concurrency as i64,
            mode,
            task_id,
            worker_id: None,
            shutdown_grace_seconds,
        };
        let driver = HostDriver::start_spec(self.engine.clone(), spec).map_err(err)?;
        Ok(Driver {
            driver: Arc::new(driver),
        })
    }

    #[napi]
    pub fn event_names() -> Vec<&'static str> {
        tasker_core::state::all_event_names()
    }

    /// Checks a subscription: `*`, a lifecycle event or a custom event name.
    #[napi]
    pub fn check_subscription(name: String) -> Result<()> {
        tasker_core::events::check_subscription(&name).map_err(invalid)
    }
}

/// A running worker loop for this process's JS handlers.
#[napi]
pub struct Driver {
    driver: Arc<HostDriver>,
}

#[napi]
impl Driver {
    /// Resolves (off the JS thread) with the jobs to start, once some are ready or after
    /// `waitMs`; `done` when the run is over.
    #[napi]
    pub async fn next(&self, wait_ms: u32) -> Result<NativeBatch> {
        let b = self
            .driver
            .next(Duration::from_millis(wait_ms as u64))
            .await;
        Ok(NativeBatch {
            jobs: b
                .jobs
                .iter()
                .map(|j| NativeJob::from(j.to_host()))
                .collect(),
            done: b.done,
        })
    }

    /// The handler of this job starts now (its timeout counts from here).
    #[napi]
    pub fn started(&self, task_id: i64, step_id: i64, attempt: u32, position: u32) {
        self.driver
            .started(key(task_id, step_id, attempt, position));
    }

    /// The handler finished: `ok` with the results as JSON text, or a failure
    /// `{message, kind, retry_after_seconds?, detail?}` as JSON text.
    #[napi]
    pub fn finished(
        &self,
        task_id: i64,
        step_id: i64,
        attempt: u32,
        position: u32,
        ok: bool,
        payload: String,
    ) {
        let outcome = Outcome::from_host_json(ok, &payload);
        self.driver
            .finished(key(task_id, step_id, attempt, position), outcome);
    }

    /// The handler's value does not convert to JSON (`reason` says why).
    #[napi]
    pub fn finished_not_json(
        &self,
        task_id: i64,
        step_id: i64,
        attempt: u32,
        position: u32,
        reason: String,
    ) {
        self.driver.finished(
            key(task_id, step_id, attempt, position),
            Outcome::Failed(StepFailure::not_json(reason)),
        );
    }

    /// Stops claiming; running handlers get the grace period, then are reported.
    #[napi]
    pub fn shutdown(&self) {
        self.driver.shutdown();
    }

    /// Resolves when the run is over.
    #[napi]
    pub async fn join(&self) -> Result<NativeStats> {
        let s = self.driver.join().await.map_err(err)?;
        Ok(NativeStats {
            completed: s.completed as i64,
            failed: s.failed as i64,
            stale: s.stale as i64,
            cycles: s.cycles as i64,
        })
    }
}
