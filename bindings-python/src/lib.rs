//! `tasker._tasker`: the native half of the Python package. It converts types and nothing
//! else: every decision is tasker-core's. Data crosses as JSON text (decoded by Python's `json`)
//! and tuples; every call that waits on the database releases the GIL.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use serde_json::Value;
use tasker_core::{
    Claim, Engine, EngineOptions, Error, Event, FailureKind, Job, JobKey, Outcome, Registry,
    Report, StepFailure, TaskFilter, TaskRequest, TaskState,
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
        _ => DatabaseError::new_err(m),
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

/// A claimed job as a tuple: (task_id, step_id, attempt, position, step_name, handler,
/// max_attempts, context_json, results_json, config_json, timeout_seconds).
type JobTuple = (
    i64,
    i64,
    u32,
    u32,
    String,
    String,
    u32,
    String,
    String,
    String,
    Option<f64>,
);

fn job_tuple(j: Job) -> JobTuple {
    (
        j.key.task_id,
        j.key.step_id,
        j.key.attempt,
        j.key.position,
        j.step_name,
        j.handler,
        j.max_attempts,
        json_text(&*j.context),
        json_text(&j.results),
        json_text(&*j.config),
        j.timeout.map(|d| d.as_secs_f64()),
    )
}

/// An outcome from Python: (task_id, step_id, attempt, position, ok, payload_json), where the
/// payload is the results (ok) or `{message, kind, retry_after_seconds?, detail?}`.
type ReportTuple = (i64, i64, u32, u32, bool, String);

fn report(r: ReportTuple) -> PyResult<Report> {
    let (task_id, step_id, attempt, position, ok, payload) = r;
    let key = JobKey {
        task_id,
        step_id,
        attempt,
        position,
    };
    let outcome = if ok {
        Outcome::Complete(
            serde_json::from_str(&payload)
                .map_err(|e| ValidationError::new_err(format!("step results are not JSON: {e}")))?,
        )
    } else {
        Outcome::Failed(
            serde_json::from_str::<StepFailure>(&payload)
                .map_err(|e| ValidationError::new_err(format!("bad failure report: {e}")))?,
        )
    };
    Ok(Report { key, outcome })
}

/// The engine, opened on a database.
#[pyclass(frozen, module = "tasker._tasker")]
struct Core {
    engine: Engine,
    builtins: Registry,
    events: Mutex<Option<broadcast::Receiver<Arc<Event>>>>,
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (url=None, environment=None, schema=None, lease_seconds=30.0, listen=true))]
    fn new(
        py: Python<'_>,
        url: Option<String>,
        environment: Option<String>,
        schema: Option<String>,
        lease_seconds: f64,
        listen: bool,
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
            lease: Duration::from_secs_f64(lease_seconds),
            ..Default::default()
        };
        let engine = block(py, move || Engine::open_with(opts))?;
        Ok(Core {
            engine,
            builtins: Registry::with_builtins(),
            events: Mutex::new(None),
        })
    }

    fn register_template_yaml(&self, py: Python<'_>, text: &str) -> PyResult<String> {
        let e = self.engine.clone();
        let text = text.to_owned();
        block(
            py,
            move || async move { e.register_template_yaml(&text).await },
        )
    }

    fn register_template_file(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<String> {
        let e = self.engine.clone();
        block(
            py,
            move || async move { e.register_template_file(&path).await },
        )
    }

    fn register_template_json(&self, py: Python<'_>, text: &str) -> PyResult<String> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| TemplateError::new_err(format!("template is not JSON-able: {e}")))?;
        let e = self.engine.clone();
        block(
            py,
            move || async move { e.register_template_value(doc).await },
        )
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
        status: Option<&str>,
        name: Option<String>,
        namespace: Option<String>,
        limit: i64,
        offset: i64,
    ) -> PyResult<String> {
        let state = status
            .map(|s| {
                s.parse::<TaskState>()
                    .map_err(|m| ValidationError::new_err(format!("status: {m}")))
            })
            .transpose()?;
        let f = TaskFilter {
            state,
            name,
            namespace,
            limit: Some(limit),
            offset: Some(offset),
        };
        let e = self.engine.clone();
        block(py, move || async move {
            e.list_tasks(&f).await.map(|l| json_text(&l))
        })
    }

    fn cancel_task(&self, py: Python<'_>, task_id: i64) -> PyResult<()> {
        let e = self.engine.clone();
        block(py, move || async move { e.cancel_task(task_id).await })
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
        let results: Value = serde_json::from_str(results_json)
            .map_err(|e| ValidationError::new_err(format!("results: {e}")))?;
        let e = self.engine.clone();
        block(py, move || async move {
            e.resolve_step_manually(task_id, &step, results).await
        })
    }

    /// Records outcomes and claims up to `claim` jobs (handlers in `handlers`) in one
    /// transaction. With nothing to report, waits up to `wait_seconds` for work.
    fn cycle(
        &self,
        py: Python<'_>,
        reports: Vec<ReportTuple>,
        claim: usize,
        handlers: Vec<String>,
        worker_id: String,
        wait_seconds: f64,
    ) -> PyResult<Vec<JobTuple>> {
        let reports: Vec<Report> = reports.into_iter().map(report).collect::<PyResult<_>>()?;
        let c = Claim {
            worker_id,
            max: claim,
            handlers: Some(handlers),
        };
        let e = self.engine.clone();
        let jobs = block(py, move || async move {
            if reports.is_empty() && claim > 0 {
                e.poll(&c, Duration::from_secs_f64(wait_seconds.clamp(0.0, 5.0)))
                    .await
            } else {
                let claim = (claim > 0).then_some(&c);
                e.report(&reports, claim).await.map(|cy| cy.jobs)
            }
        })?;
        Ok(jobs.into_iter().map(job_tuple).collect())
    }

    /// Runs a built-in handler (`command`, `http`) for a job; returns (ok, payload_json) as
    /// `cycle` takes it. Blocks without the GIL.
    fn run_builtin(&self, py: Python<'_>, job: JobTuple) -> PyResult<(bool, String)> {
        let (
            task_id,
            step_id,
            attempt,
            position,
            step_name,
            handler,
            max_attempts,
            ctx,
            res,
            cfg,
            timeout,
        ) = job;
        let Some(h) = self.builtins.get(&handler) else {
            return Err(NotFoundError::new_err(format!(
                "{handler:?} is not a built-in handler"
            )));
        };
        let parse = |s: &str| {
            serde_json::from_str::<Value>(s).map_err(|e| ValidationError::new_err(e.to_string()))
        };
        let job = Job {
            key: JobKey {
                task_id,
                step_id,
                attempt,
                position,
            },
            step_name,
            handler,
            max_attempts,
            context: Arc::new(parse(&ctx)?),
            results: match parse(&res)? {
                Value::Object(m) => m,
                _ => Default::default(),
            },
            config: Arc::new(parse(&cfg)?),
            timeout: timeout.map(Duration::from_secs_f64),
            lease_expires_at_ms: 0,
        };
        let out = py.detach(|| {
            rt().block_on(async {
                let run = h.call(&job);
                match job.timeout {
                    Some(t) => tokio::time::timeout(t, run).await.map_err(|_| t),
                    None => Ok(run.await),
                }
            })
        });
        Ok(match out {
            Ok(Ok(v)) => (true, json_text(&v)),
            Ok(Err(e)) => (false, json_text(&e.into_failure())),
            Err(t) => (
                false,
                json_text(&StepFailure {
                    message: format!("timed out after {:.3} s (timeout_seconds)", t.as_secs_f64()),
                    kind: FailureKind::Timeout,
                    retry_after_seconds: None,
                    detail: None,
                }),
            ),
        })
    }

    /// Extends the leases of running jobs: [(task_id, step_id, attempt, position)].
    fn heartbeat(&self, py: Python<'_>, keys: Vec<(i64, i64, u32, u32)>) -> PyResult<u64> {
        let keys: Vec<JobKey> = keys
            .into_iter()
            .map(|(task_id, step_id, attempt, position)| JobKey {
                task_id,
                step_id,
                attempt,
                position,
            })
            .collect();
        let e = self.engine.clone();
        block(py, move || async move { e.heartbeat(&keys).await })
    }

    /// True when nothing is claimable now or later for these handlers and nothing runs anywhere.
    fn is_idle(&self, py: Python<'_>, handlers: Vec<String>) -> PyResult<bool> {
        let e = self.engine.clone();
        block(py, move || async move { e.is_idle(Some(&handlers)).await })
    }

    /// Waits (without the GIL) up to `seconds` for the task to finish; returns its state.
    fn wait_for_task(&self, py: Python<'_>, task_id: i64, seconds: f64) -> PyResult<String> {
        let e = self.engine.clone();
        let t = Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
        py.detach(|| {
            rt().block_on(async move {
                match e.wait_for_task(task_id, Some(t)).await {
                    Ok(s) => Ok(s.status.as_str().to_owned()),
                    Err(Error::Timeout(_)) => e
                        .get_task_state(task_id)
                        .await
                        .map(|s| s.as_str().to_owned()),
                    Err(x) => Err(x),
                }
            })
        })
        .map_err(err)
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
        let mut out = Vec::new();
        let mut g = self.events.lock().unwrap();
        if let Some(rx) = g.as_mut() {
            loop {
                match rx.try_recv() {
                    Ok(e) => out.push(json_text(&*e)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        out.push(format!("{{\"name\":\"events.lagged\",\"missed\":{n}}}"))
                    }
                    Err(_) => break,
                }
            }
        }
        out
    }

    #[staticmethod]
    fn event_names() -> Vec<&'static str> {
        tasker_core::state::all_event_names()
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
    m.add("TaskerError", py.get_type::<TaskerError>())?;
    m.add("TemplateError", py.get_type::<TemplateError>())?;
    m.add("ValidationError", py.get_type::<ValidationError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("DatabaseError", py.get_type::<DatabaseError>())?;
    m.add("TimeoutError", py.get_type::<TimeoutError>())?;
    Ok(())
}
