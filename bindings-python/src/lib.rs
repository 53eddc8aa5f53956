//! `tasker._tasker`: the native half of the Python package. It converts types and nothing
//! else: every decision is tasker-core's. Data crosses as JSON text (decoded by Python's `json`)
//! and tuples; every call that waits on the database releases the GIL.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use serde_json::Value;
use tasker_core::host::{self, DriverSpec, HostJob, TaskListQuery};
use tasker_core::{
    Engine, EngineOptions, Error, Event, HostDriver, JobKey, Outcome, StepFailure, TaskRequest,
};
use tokio::sync::broadcast;

create_exception!(
    _tasker,
    TaskerError,
    PyException,
    "Base class of every error Tasker raises."
);
create_exception!(
    _tasker,
    TemplateError,
    TaskerError,
    "A template that cannot be accepted."
);
create_exception!(
    _tasker,
    ValidationError,
    TaskerError,
    "Bad input: task request, context, results, options."
);
create_exception!(
    _tasker,
    NotFoundError,
    TaskerError,
    "No such task, step or template."
);
create_exception!(
    _tasker,
    ConflictError,
    TaskerError,
    "The task's or step's state does not allow this."
);
create_exception!(
    _tasker,
    DatabaseError,
    TaskerError,
    "The database failed or is unreachable."
);
create_exception!(
    _tasker,
    TimeoutError,
    TaskerError,
    "A wait ran out of time."
);

fn err(e: Error) -> PyErr {
    let m = e.to_string();
    match e.kind() {
        "template" => TemplateError::new_err(m),
        "validation" => ValidationError::new_err(m),
        "not_found" => NotFoundError::new_err(m),
        "conflict" | "illegal_transition" => ConflictError::new_err(m),
        "timeout" => TimeoutError::new_err(m),
        "database" => DatabaseError::new_err(m),
        _ => TaskerError::new_err(m),
    }
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tasker-core")
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Runs a future on the core's runtime with the GIL released. The future is made and driven
/// on the same (detached) thread, so it need not be `Send`.
fn block<T, F, Fut>(py: Python<'_>, make: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    py.detach(|| rt().block_on(make())).map_err(err)
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("json")
}

/// A claimed job (core's [`HostJob`]): what `tasker.Step` is built from. JSON as text.
#[pyclass(frozen, get_all, module = "tasker._tasker", name = "Job")]
struct PyJob {
    task_id: i64,
    step_id: i64,
    attempt: u32,
    position: u32,
    step_name: String,
    handler: String,
    max_attempts: u32,
    context: String,
    results: String,
    config: String,
    custom_events: Vec<String>,
    batch: Option<String>,
    batch_index: Option<u32>,
    checkpoint: Option<String>,
}

#[pymethods]
impl PyJob {
    /// The key handed back with the outcome: (task_id, step_id, attempt, position).
    #[getter]
    fn key(&self) -> KeyTuple {
        (self.task_id, self.step_id, self.attempt, self.position)
    }
}

impl From<HostJob> for PyJob {
    fn from(j: HostJob) -> PyJob {
        PyJob {
            task_id: j.task_id,
            step_id: j.step_id,
            attempt: j.attempt,
            position: j.position,
            step_name: j.step_name,
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

type KeyTuple = (i64, i64, u32, u32);

fn job_key((task_id, step_id, attempt, position): KeyTuple) -> JobKey {
    JobKey {
        task_id,
        step_id,
        attempt,
        position,
    }
}

/// A running worker loop (tasker-core's host driver) for this process's handlers. The Python
/// side only runs handlers: it asks `next` for jobs, reports `started` and `finished`.
#[pyclass(frozen, module = "tasker._tasker")]
struct Driver {
    driver: HostDriver,
}

#[pymethods]
impl Driver {
    /// Waits (without the GIL) up to `wait_seconds` for jobs to start or for the run to end.
    /// Returns (jobs, done).
    fn next(&self, py: Python<'_>, wait_seconds: f64) -> (Vec<PyJob>, bool) {
        let wait = Duration::from_secs_f64(wait_seconds.clamp(0.0, 60.0));
        let batch = py.detach(|| rt().block_on(self.driver.next(wait)));
        let jobs = batch
            .jobs
            .iter()
            .map(|j| PyJob::from(j.to_host()))
            .collect();
        (jobs, batch.done)
    }

    /// The handler of this job starts now (its timeout counts from here).
    fn started(&self, key: KeyTuple) {
        self.driver.started(job_key(key));
    }

    /// The handler finished: `ok` with the results as JSON text, or a failure
    /// `{message, kind, retry_after_seconds?, detail?}` as JSON text.
    fn finished(&self, key: KeyTuple, ok: bool, payload: &str) {
        let outcome = Outcome::from_host_json(ok, payload);
        self.driver.finished(job_key(key), outcome);
    }

    /// The handler returned a value that does not convert to JSON (`reason` says why).
    fn finished_not_json(&self, key: KeyTuple, reason: &str) {
        self.driver
            .finished(job_key(key), Outcome::Failed(StepFailure::not_json(reason)));
    }

    /// Stops claiming; running handlers get the grace period, then are reported.
    fn shutdown(&self) {
        self.driver.shutdown();
    }

    /// Waits for the run to end: (completed, failed, stale, cycles).
    fn join(&self, py: Python<'_>) -> PyResult<(u64, u64, u64, u64)> {
        let s = block(py, || self.driver.join())?;
        Ok((s.completed, s.failed, s.stale, s.cycles))
    }
}

/// The engine, opened on a database.
#[pyclass(frozen, module = "tasker._tasker")]
struct Core {
    engine: Engine,
    events: Mutex<Option<broadcast::Receiver<Arc<Event>>>>,
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (url=None, environment=None, schema=None, lease_seconds=30.0, listen=true, strict_templates=false))]
    fn new(
        py: Python<'_>,
        url: Option<String>,
        environment: Option<String>,
        schema: Option<String>,
        lease_seconds: f64,
        listen: bool,
        strict_templates: bool,
    ) -> PyResult<Self> {
        if !(lease_seconds.is_finite() && lease_seconds >= 0.1) {
            return Err(ValidationError::new_err(format!(
                "lease_seconds must be at least 0.1, got {lease_seconds}"
            )));
        }
        let opts = EngineOptions {
            url,
            environment,
            schema,
            listen,
            strict_templates,
            lease: Duration::from_secs_f64(lease_seconds),
            ..Default::default()
        };
        let engine = block(py, move || Engine::open_with(opts))?;
        Ok(Core {
            engine,
            events: Mutex::new(None),
        })
    }

    /// Registers a template (`kind`: `yaml` text, a `file`, a `json` document); returns the
    /// key and what parsing warned about (unknown keys), which the wrapper shows with
    /// `warnings.warn`.
    fn register_template(
        &self,
        py: Python<'_>,
        kind: String,
        text: String,
    ) -> PyResult<(String, Vec<String>)> {
        let e = self.engine.clone();
        block(py, move || async move {
            let r = e.register_template_kind(&kind, &text).await?;
            Ok((r.key, r.warnings))
        })
    }

    /// Creates a task from a JSON task request; returns its id.
    fn create_task(&self, py: Python<'_>, request_json: &str) -> PyResult<i64> {
        let req: TaskRequest = serde_json::from_str(request_json)
            .map_err(|e| ValidationError::new_err(format!("task request: {e}")))?;
        let e = self.engine.clone();
        block(py, move || async move { e.create_task(req).await })
    }

    /// Creates many tasks in one transaction (all or none) from a JSON list of task requests.
    fn create_tasks(&self, py: Python<'_>, requests_json: &str) -> PyResult<Vec<i64>> {
        let reqs: Vec<TaskRequest> = serde_json::from_str(requests_json)
            .map_err(|e| ValidationError::new_err(format!("task requests: {e}")))?;
        let e = self.engine.clone();
        block(py, move || async move { e.create_tasks(reqs).await })
    }

    /// Registers event definitions (`kind`: `yaml` text or a `path`, file or directory);
    /// returns the registered definitions as a JSON array.
    fn register_events(&self, py: Python<'_>, kind: String, text: String) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.register_events_kind(&kind, &text)
                .await
                .map(|d| json_text(&d))
        })
    }

    /// The event catalogue, as a JSON array.
    fn event_catalog(&self, py: Python<'_>) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.event_catalog().await.map(|c| json_text(&c))
        })
    }

    /// Every stored event definition, as a JSON array.
    fn event_definitions(&self, py: Python<'_>) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.event_definitions().await.map(|d| json_text(&d))
        })
    }

    fn get_task(&self, py: Python<'_>, task_id: i64) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.get_task(task_id).await.map(|t| json_text(&t))
        })
    }

    fn task_state(&self, py: Python<'_>, task_id: i64) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.get_task_state(task_id)
                .await
                .map(|s| s.as_str().to_owned())
        })
    }

    #[pyo3(signature = (status=None, name=None, namespace=None, limit=100, offset=0))]
    fn list_tasks(
        &self,
        py: Python<'_>,
        status: Option<String>,
        name: Option<String>,
        namespace: Option<String>,
        limit: i64,
        offset: i64,
    ) -> PyResult<String> {
        let q = TaskListQuery {
            status,
            name,
            namespace,
            limit: Some(limit),
            offset: Some(offset),
        };
        let e = self.engine.clone();
        block(py, move || async move {
            e.list_tasks_query(q).await.map(|l| json_text(&l))
        })
    }

    fn cancel_task(&self, py: Python<'_>, task_id: i64) -> PyResult<()> {
        let e = self.engine.clone();
        block(py, move || async move { e.cancel_task(task_id).await })
    }

    #[pyo3(signature = (task_id, reason=None, tags=None))]
    fn update_task(
        &self,
        py: Python<'_>,
        task_id: i64,
        reason: Option<String>,
        tags: Option<Vec<String>>,
    ) -> PyResult<()> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.update_task(task_id, reason, tags).await
        })
    }

    fn cancel_step(&self, py: Python<'_>, task_id: i64, step: String) -> PyResult<()> {
        let e = self.engine.clone();
        block(
            py,
            move || async move { e.cancel_step(task_id, &step).await },
        )
    }

    fn set_step_retry_limit(
        &self,
        py: Python<'_>,
        task_id: i64,
        step: String,
        retry_limit: i64,
    ) -> PyResult<()> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.set_step_retry_limit(task_id, &step, retry_limit).await
        })
    }

    /// The task's audit history as a JSON array.
    fn transitions(&self, py: Python<'_>, task_id: i64) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.task_transitions(task_id).await.map(|t| json_text(&t))
        })
    }

    /// Figures for the tasks created in the last `window_seconds`, as JSON.
    #[pyo3(signature = (window_seconds, namespace=None, name=None))]
    fn analytics(
        &self,
        py: Python<'_>,
        window_seconds: f64,
        namespace: Option<String>,
        name: Option<String>,
    ) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.analytics_seconds(window_seconds, namespace.as_deref(), name.as_deref())
                .await
                .map(|a| json_text(&a))
        })
    }

    fn retry_step(&self, py: Python<'_>, task_id: i64, step: String) -> PyResult<()> {
        let e = self.engine.clone();
        block(
            py,
            move || async move { e.retry_step(task_id, &step).await },
        )
    }

    fn resolve_step_manually(
        &self,
        py: Python<'_>,
        task_id: i64,
        step: String,
        results_json: &str,
    ) -> PyResult<()> {
        let results = json_arg("results", results_json)?;
        let e = self.engine.clone();
        block(py, move || async move {
            e.resolve_step_manually(task_id, &step, results).await
        })
    }

    fn signal(
        &self,
        py: Python<'_>,
        task_id: i64,
        name: String,
        payload_json: &str,
    ) -> PyResult<usize> {
        let payload = json_arg("payload", payload_json)?;
        let e = self.engine.clone();
        block(py, move || async move {
            e.signal(task_id, &name, payload).await
        })
    }

    fn complete_step(
        &self,
        py: Python<'_>,
        task_id: i64,
        step: String,
        results_json: &str,
    ) -> PyResult<()> {
        let results = json_arg("results", results_json)?;
        let e = self.engine.clone();
        block(py, move || async move {
            e.complete_step(task_id, &step, results).await
        })
    }

    fn fail_step(
        &self,
        py: Python<'_>,
        task_id: i64,
        step: String,
        message: String,
        permanent: bool,
    ) -> PyResult<()> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.fail_step(task_id, &step, &message, permanent).await
        })
    }

    fn complete_correlated(
        &self,
        py: Python<'_>,
        correlation_id: String,
        results_json: &str,
    ) -> PyResult<usize> {
        let results = json_arg("results", results_json)?;
        let e = self.engine.clone();
        block(py, move || async move {
            e.complete_correlated(&correlation_id, results).await
        })
    }

    /// Schedules: `op` create (`arg`: the spec as JSON), list, get, pause, resume, delete
    /// (`arg`: the name); JSON text back.
    fn schedule_op(&self, py: Python<'_>, op: String, arg: String) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move { e.schedule_op(&op, &arg).await })
    }

    /// Steering tasks: `op` pause_task, resume_task, retry_task, rerun_from, pause_template,
    /// resume_template, retry_tasks, cancel_tasks or prune (`arg`: its keys as JSON); JSON
    /// text back.
    fn flow_op(&self, py: Python<'_>, op: String, arg: String) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move { e.flow_op(&op, &arg).await })
    }

    /// Starts the worker loop for `handlers` (run by Python) plus the built-in handlers (run
    /// in Rust). `mode`: "forever", "until_idle" or "until_task" (with `task_id`).
    #[pyo3(signature = (handlers, concurrency, mode, task_id=None, worker_id=None, shutdown_grace=30.0))]
    fn start_driver(
        &self,
        handlers: Vec<String>,
        concurrency: i64,
        mode: String,
        task_id: Option<i64>,
        worker_id: Option<String>,
        shutdown_grace: f64,
    ) -> PyResult<Driver> {
        let spec = DriverSpec {
            handlers,
            concurrency,
            mode,
            task_id,
            worker_id,
            shutdown_grace_seconds: Some(shutdown_grace),
        };
        let _rt = rt().enter();
        let driver = HostDriver::start_spec(self.engine.clone(), spec).map_err(err)?;
        Ok(Driver { driver })
    }

    /// The durability commits get, as the database reports it: (description, durable).
    fn durability(&self, py: Python<'_>) -> PyResult<(String, bool)> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.durability().await.map(|d| (d.description, d.durable))
        })
    }

    /// Waits (without the GIL) up to `seconds` for the task to finish; returns its state.
    fn wait_for_task(&self, py: Python<'_>, task_id: i64, seconds: f64) -> PyResult<String> {
        let e = self.engine.clone();
        block(py, move || async move {
            e.wait_for_task_state(task_id, seconds)
                .await
                .map(|s| s.as_str().to_owned())
        })
    }

    /// Publishes a custom event from a running job (its key, step name and the events its
    /// template declares, as the job tuple gave them).
    fn publish_custom_event(
        &self,
        key: KeyTuple,
        step_name: &str,
        declared: Vec<String>,
        name: &str,
        payload_json: &str,
    ) -> PyResult<()> {
        let payload: Value = serde_json::from_str(payload_json)
            .map_err(|e| ValidationError::new_err(format!("custom event {name}: payload: {e}")))?;
        self.engine
            .publish_custom_event_for(job_key(key), step_name, &declared, name, payload)
            .map_err(err)
    }

    /// Saves a running job's checkpoint (JSON text), durably.
    fn save_checkpoint(&self, py: Python<'_>, key: KeyTuple, value_json: &str) -> PyResult<()> {
        let value = json_arg("checkpoint", value_json)?;
        let e = self.engine.clone();
        block(py, move || async move {
            e.save_checkpoint(&job_key(key), &value).await
        })
    }

    /// Starts collecting lifecycle events for `drain_events`.
    fn subscribe(&self) {
        let mut g = self.events.lock().unwrap();
        if g.is_none() {
            *g = Some(self.engine.subscribe());
        }
    }

    /// Events since the last call, as JSON objects, oldest first.
    fn drain_events(&self) -> Vec<String> {
        let mut g = self.events.lock().unwrap();
        match g.as_mut() {
            Some(rx) => host::drain_events(rx)
                .iter()
                .map(|e| json_text(&**e))
                .collect(),
            None => Vec::new(),
        }
    }

    #[staticmethod]
    fn event_names() -> Vec<&'static str> {
        tasker_core::state::all_event_names()
    }

    /// Checks a subscription: `*`, a lifecycle event or a custom event name.
    #[staticmethod]
    fn check_subscription(name: &str) -> PyResult<()> {
        tasker_core::events::check_subscription(name).map_err(ValidationError::new_err)
    }

    #[staticmethod]
    fn builtin_names() -> Vec<&'static str> {
        tasker_core::builtin::NAMES.to_vec()
    }

    #[staticmethod]
    fn new_worker_id() -> String {
        Engine::new_worker_id()
    }
}

#[pymodule]
fn _tasker(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Core>()?;
    m.add_class::<Driver>()?;
    m.add_class::<PyJob>()?;
    m.add("TaskerError", py.get_type::<TaskerError>())?;
    m.add("TemplateError", py.get_type::<TemplateError>())?;
    m.add("ValidationError", py.get_type::<ValidationError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("DatabaseError", py.get_type::<DatabaseError>())?;
    m.add("TimeoutError", py.get_type::<TimeoutError>())?;
    Ok(())
}

/// A JSON argument's text parsed, or a `ValidationError` naming it.
fn json_arg(what: &str, text: &str) -> PyResult<Value> {
    serde_json::from_str(text).map_err(|e| ValidationError::new_err(format!("{what}: {e}")))
}
