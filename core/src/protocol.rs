//! The wire types of the poll/complete protocol between the engine and its hosts: what a host
//! asks for ([`Claim`]), what it receives ([`Job`]), what it hands back ([`Report`] of an
//! [`Outcome`]). Every binding converts these and nothing else; they serialize with serde so a
//! host may also take them as JSON.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Identifies one claimed attempt of a step: what a host hands back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobKey {
    pub task_id: i64,
    pub step_id: i64,
    pub attempt: u32,
    /// The step's index in its template.
    pub position: u32,
}

/// A claimed step, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: JobKey,
    pub step_name: String,
    pub handler: String,
    pub max_attempts: u32,
    /// The task's context.
    pub context: Arc<Value>,
    /// Parent step name -> its results.
    pub results: Map<String, Value>,
    /// The step's `handler_config`.
    pub config: Arc<Value>,
    /// Per-attempt time limit (`timeout_seconds`).
    pub timeout: Option<Duration>,
    /// The custom events the template declares: what the handler may publish
    /// ([`crate::Engine::publish_custom_event`]).
    pub custom_events: Arc<Vec<String>>,
    pub lease_expires_at_ms: i64,
    /// When the task was created (engine clock, ms): with the task id, names its trace
    /// ([`crate::telemetry::task_trace`]).
    pub task_created_at_ms: i64,
    /// A fan-out instance's item (`step.batch` in the bindings); `None` for other steps.
    pub batch: Option<Value>,
    /// A fan-out instance's 0-based place among its batch (`step.batch_index`).
    pub batch_index: Option<u32>,
    /// What an earlier attempt of this step saved ([`crate::Engine::save_checkpoint`]);
    /// `None` at first.
    pub checkpoint: Option<Value>,
}

impl Job {
    pub fn task_id(&self) -> i64 {
        self.key.task_id
    }
    pub fn attempt(&self) -> u32 {
        self.key.attempt
    }

    /// The job as the bindings hand it to their language ([`HostJob`]).
    pub fn to_host(&self) -> HostJob {
        HostJob::from(self)
    }
}

/// A claimed job as a binding hands it to its language: the [`JobKey`] fields the host hands
/// back with the outcome, what the handler sees, JSON as text (each language parses it with
/// its own JSON library).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostJob {
    pub task_id: i64,
    pub step_id: i64,
    pub attempt: u32,
    pub position: u32,
    pub step_name: String,
    pub handler: String,
    pub max_attempts: u32,
    /// The task's context, JSON.
    pub context: String,
    /// Parent step name -> its results, a JSON object.
    pub results: String,
    /// The step's `handler_config`, JSON.
    pub config: String,
    /// The custom events the template declares (what the handler may publish).
    pub custom_events: Vec<String>,
    /// A fan-out instance's item, JSON (`None`: not an instance).
    pub batch: Option<String>,
    pub batch_index: Option<u32>,
    /// The checkpoint an earlier attempt saved, JSON (`None`: none).
    pub checkpoint: Option<String>,
}

impl HostJob {
    /// The key the host hands back with the outcome.
    pub fn key(&self) -> JobKey {
        JobKey {
            task_id: self.task_id,
            step_id: self.step_id,
            attempt: self.attempt,
            position: self.position,
        }
    }
}

impl From<&Job> for HostJob {
    fn from(j: &Job) -> HostJob {
        let text =
            |v: &serde_json::Value| serde_json::to_string(v).expect("a JSON value serializes");
        HostJob {
            task_id: j.key.task_id,
            step_id: j.key.step_id,
            attempt: j.key.attempt,
            position: j.key.position,
            step_name: j.step_name.clone(),
            handler: j.handler.clone(),
            max_attempts: j.max_attempts,
            context: text(&j.context),
            results: serde_json::to_string(&j.results).expect("a JSON object serializes"),
            config: text(&j.config),
            custom_events: j.custom_events.to_vec(),
            batch: j.batch.as_ref().map(text),
            batch_index: j.batch_index,
            checkpoint: j.checkpoint.as_ref().map(text),
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Retried while attempts remain, after backoff.
    Retryable,
    /// Never retried.
    Permanent,
    /// The attempt ran past `timeout_seconds`; retryable.
    Timeout,
    /// The worker's lease ran out (it died or stopped heartbeating); retryable.
    LeaseExpired,
    /// The worker shut down while the handler ran; retryable at once, the attempt counts.
    WorkerShutdown,
    /// The worker shut down before the handler started: the attempt is given back and the
    /// step is claimable at once.
    Released,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailure {
    pub message: String,
    pub kind: FailureKind,
    /// Seconds to wait before the next attempt (wins over backoff; capped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<f64>,
    /// Extra detail stored with the error (exception class, traceback, exit code, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl StepFailure {
    pub fn retryable(message: impl Into<String>) -> Self {
        StepFailure {
            message: message.into(),
            kind: FailureKind::Retryable,
            retry_after_seconds: None,
            detail: None,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        StepFailure {
            kind: FailureKind::Permanent,
            ..StepFailure::retryable(message)
        }
    }
    pub fn retry_after(mut self, seconds: f64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// A handler's result that cannot be stored as JSON (a host language's value that does not
    /// convert); `reason` says why. Permanent: running it again returns the same.
    pub fn not_json(reason: impl std::fmt::Display) -> Self {
        StepFailure::permanent(format!(
            "the handler returned a value that is not JSON: {reason}"
        ))
    }

    /// The attempt ran past its `timeout_seconds` (counted from the handler's start).
    pub fn timeout(limit: Duration) -> Self {
        StepFailure {
            message: format!(
                "timed out after {:.3} s (timeout_seconds)",
                limit.as_secs_f64()
            ),
            kind: FailureKind::Timeout,
            retry_after_seconds: None,
            detail: None,
        }
    }

    /// The worker stopped before the attempt finished (`started`) or before it began.
    pub fn worker_shutdown(started: bool) -> Self {
        if started {
            StepFailure {
                message: "worker_shutdown: the worker stopped before the step finished".into(),
                kind: FailureKind::WorkerShutdown,
                retry_after_seconds: Some(0.0),
                detail: None,
            }
        } else {
            StepFailure {
                message: "worker_shutdown: the worker stopped before the step started".into(),
                kind: FailureKind::Released,
                retry_after_seconds: Some(0.0),
                detail: None,
            }
        }
    }
}

/// What a `type: decision` step decided: the children to create (names among the steps that
/// depend on it directly; none is allowed) and its own results, which its children see.
///
/// A handler in any language returns it as its results in one JSON shape,
/// `{"$decision": ["name", ...], "results": ...}` (`results` optional): what the bindings'
/// `Decision` classes and [`Decision::into_value`] produce, and what the built-in `command`
/// and `http` handlers may print or answer. The engine reads that shape only from a handler's
/// results ([`Shaped::of`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub steps: Vec<String>,
    #[serde(default)]
    pub results: Value,
}

impl Decision {
    pub fn new<S: Into<String>>(steps: impl IntoIterator<Item = S>) -> Decision {
        Decision {
            steps: steps.into_iter().map(Into::into).collect(),
            results: Value::Null,
        }
    }
    pub fn results(mut self, results: Value) -> Decision {
        self.results = results;
        self
    }
    /// The handler result that carries it: `{"$decision": [...], "results": ...}`.
    pub fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert(DECISION_KEY.into(), Value::from(self.steps));
        if !self.results.is_null() {
            m.insert("results".into(), self.results);
        }
        Value::Object(m)
    }
}

impl From<Decision> for Value {
    fn from(d: Decision) -> Value {
        d.into_value()
    }
}

const DECISION_KEY: &str = "$decision";
const BATCHES_KEY: &str = "$batches";
/// A fan-out instance that failed under `continue_on_failure` appears in its convergence's
/// list as `{"$failed": <its stored error: message, kind, attempt, at>}`.
pub const FAILED_KEY: &str = "$failed";

/// What a `type: batchable` step fanned out to: one instance of each of its `batch_worker`
/// children per item (any JSON value, such as a cursor range `{"start": 0, "end": 200}`), and
/// its own results. No items: no instance.
///
/// The JSON shape in every language: `{"$batches": [item, ...], "results": ...}`
/// ([`Batches::into_value`], the bindings' `Batches` classes, `command`/`http` output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batches {
    pub items: Vec<Value>,
    #[serde(default)]
    pub results: Value,
}

impl Batches {
    pub fn new(items: impl IntoIterator<Item = Value>) -> Batches {
        Batches {
            items: items.into_iter().collect(),
            results: Value::Null,
        }
    }
    pub fn results(mut self, results: Value) -> Batches {
        self.results = results;
        self
    }
    /// The handler result that carries it: `{"$batches": [...], "results": ...}`.
    pub fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert(BATCHES_KEY.into(), Value::Array(self.items));
        if !self.results.is_null() {
            m.insert("results".into(), self.results);
        }
        Value::Object(m)
    }
}

impl From<Batches> for Value {
    fn from(b: Batches) -> Value {
        b.into_value()
    }
}

/// Another task to run for this step: the engine creates it (linked: its snapshot has
/// `parent_task_id` and `parent_step`) and the step is `waiting` until it finishes. Complete:
/// the step completes with `{"task_id": ID, "status": "complete", "results": {step: results}}`;
/// in `error` or cancelled: the step fails permanently with the child's error.
///
/// The JSON shape in every language: `{"$child_task": {"name": ..., "namespace": ...,
/// "version": ..., "context": {...}}}` (all but `name` optional; [`ChildTask::into_value`],
/// the bindings' `ChildTask` classes, `command`/`http` output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildTask {
    pub name: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub context: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl ChildTask {
    pub fn new(name: impl Into<String>, context: Value) -> ChildTask {
        ChildTask {
            name: name.into(),
            context,
            namespace: None,
            version: None,
        }
    }
    pub fn namespace(mut self, ns: impl Into<String>) -> ChildTask {
        self.namespace = Some(ns.into());
        self
    }
    pub fn version(mut self, v: impl Into<String>) -> ChildTask {
        self.version = Some(v.into());
        self
    }
    /// The handler result that carries it: `{"$child_task": {...}}`.
    pub fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert(
            CHILD_TASK_KEY.into(),
            serde_json::to_value(self).expect("json"),
        );
        Value::Object(m)
    }
}

impl From<ChildTask> for Value {
    fn from(c: ChildTask) -> Value {
        c.into_value()
    }
}

const CHILD_TASK_KEY: &str = "$child_task";

/// The step waits for something outside it: a signal of its task (`signal`), a completion by
/// an id handed to another system (`correlation_id`), or an operator's or a program's
/// `complete_step` / `fail_step`; `timeout` seconds passing fail it as retryable (its handler
/// runs again). `results` are shown while it waits and are its results if it is completed
/// without any.
///
/// The JSON shape in every language: `{"$wait": {"signal": ..., "correlation_id": ...,
/// "timeout": seconds, "results": ...}}` (all optional; [`Wait::into_value`], the bindings'
/// `Wait` classes, the built-in `wait` handler, `command`/`http` output).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub results: Value,
}

impl Wait {
    /// Waits for signal `name` of the step's task.
    pub fn signal(name: impl Into<String>) -> Wait {
        Wait {
            signal: Some(name.into()),
            ..Wait::default()
        }
    }
    /// Waits for `complete_correlated(id)`.
    pub fn correlated(id: impl Into<String>) -> Wait {
        Wait {
            correlation_id: Some(id.into()),
            ..Wait::default()
        }
    }
    pub fn timeout(mut self, seconds: f64) -> Wait {
        self.timeout = Some(seconds);
        self
    }
    pub fn results(mut self, results: Value) -> Wait {
        self.results = results;
        self
    }
    /// The handler result that carries it: `{"$wait": {...}}`.
    pub fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert(WAIT_KEY.into(), serde_json::to_value(self).expect("json"));
        Value::Object(m)
    }
    /// What is wrong with it, if anything: a timeout that is not a positive number of seconds,
    /// an empty signal name or correlation id.
    pub fn problem(&self) -> Option<String> {
        if let Some(t) = self.timeout {
            if !(t.is_finite() && t > 0.0) {
                return Some(format!(
                    "a wait's timeout must be a positive number of seconds, got {t}"
                ));
            }
        }
        if self.signal.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Some("a wait's signal name must not be empty".into());
        }
        if self.correlation_id.as_deref().is_some_and(|s| s.is_empty()) {
            return Some("a wait's correlation_id must not be empty".into());
        }
        None
    }
}

impl From<Wait> for Value {
    fn from(w: Wait) -> Value {
        w.into_value()
    }
}

const WAIT_KEY: &str = "$wait";

/// Run the step again after `after` seconds without counting an attempt (polling an outside
/// job: "not ready yet, look again in 30 s"). The step's `max_reschedules`, when set, bounds
/// how often.
///
/// The JSON shape in every language: `{"$reschedule": {"after": seconds}}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reschedule {
    /// Seconds, from 0 to a year.
    pub after: f64,
}

impl Reschedule {
    pub fn after(seconds: f64) -> Reschedule {
        Reschedule { after: seconds }
    }
    /// The handler result that carries it: `{"$reschedule": {"after": ...}}`.
    pub fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert(
            RESCHEDULE_KEY.into(),
            serde_json::to_value(self).expect("json"),
        );
        Value::Object(m)
    }
}

impl From<Reschedule> for Value {
    fn from(r: Reschedule) -> Value {
        r.into_value()
    }
}

const RESCHEDULE_KEY: &str = "$reschedule";
/// The longest a reschedule may wait: a year.
const MAX_RESCHEDULE_SECONDS: f64 = 31_536_000.0;

/// A handler's results that say more than results: the shapes decided at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum Shaped {
    Decision(Decision),
    Batches(Batches),
    ChildTask(ChildTask),
    Wait(Wait),
    Reschedule(Reschedule),
}

impl Shaped {
    /// The shape a handler's results carry: `None` for plain results (anything but an object
    /// whose keys are one of the shape keys, such as `$decision`, and optionally `results`);
    /// an error naming what is wrong for such an object that is malformed.
    pub fn of(results: &Value) -> Option<std::result::Result<Shaped, String>> {
        let Value::Object(m) = results else {
            return None;
        };
        let shape_key = |key: &str| m.keys().all(|k| k == key || k == "results");
        let own_results = || m.get("results").cloned().unwrap_or(Value::Null);
        if let Some(spec) = m.get(WAIT_KEY).filter(|_| m.len() == 1) {
            return Some(
                serde_json::from_value::<Wait>(spec.clone())
                    .map_err(|e| {
                        format!(
                            "a wait's {WAIT_KEY:?} must be {{\"signal\"?: ..., \"correlation_id\"?: ..., \"timeout\"?: seconds, \"results\"?: ...}}: {e}"
                        )
                    })
                    .and_then(|w| match w.problem() {
                        Some(p) => Err(p),
                        None => Ok(Shaped::Wait(w)),
                    }),
            );
        }
        if let Some(spec) = m.get(RESCHEDULE_KEY).filter(|_| m.len() == 1) {
            return Some(
                serde_json::from_value::<Reschedule>(spec.clone())
                    .map_err(|e| {
                        format!("a reschedule's {RESCHEDULE_KEY:?} must be {{\"after\": seconds}}: {e}")
                    })
                    .and_then(|r| {
                        if r.after.is_finite() && (0.0..=MAX_RESCHEDULE_SECONDS).contains(&r.after) {
                            Ok(Shaped::Reschedule(r))
                        } else {
                            Err(format!(
                                "a reschedule's after must be from 0 to {MAX_RESCHEDULE_SECONDS} seconds (a year), got {}",
                                r.after
                            ))
                        }
                    }),
            );
        }
        if let Some(spec) = m.get(CHILD_TASK_KEY).filter(|_| m.len() == 1) {
            return Some(
                serde_json::from_value::<ChildTask>(spec.clone())
                    .map_err(|e| {
                        format!(
                            "a child task's {CHILD_TASK_KEY:?} must be {{\"name\": ..., \"context\"?: {{...}}, \"namespace\"?: ..., \"version\"?: ...}}: {e}"
                        )
                    })
                    .map(Shaped::ChildTask),
            );
        }
        if let Some(items) = m.get(BATCHES_KEY).filter(|_| shape_key(BATCHES_KEY)) {
            return Some(match items {
                Value::Array(items) => Ok(Shaped::Batches(Batches {
                    items: items.clone(),
                    results: own_results(),
                })),
                other => Err(format!(
                    "a fan-out's {BATCHES_KEY:?} must be a list of items, got {other}"
                )),
            });
        }
        let steps = m.get(DECISION_KEY)?;
        if !shape_key(DECISION_KEY) {
            return None;
        }
        let names = match steps {
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>(),
            _ => None,
        };
        Some(match names {
            Some(steps) => Ok(Shaped::Decision(Decision {
                steps,
                results: own_results(),
            })),
            None => Err(format!(
                "a decision's {DECISION_KEY:?} must be a list of step names, got {steps}"
            )),
        })
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Complete(Value),
    Failed(StepFailure),
}

impl Outcome {
    /// The outcome a binding's host reports as JSON text: `ok` with the results, or a
    /// [`StepFailure`] (`{message, kind, retry_after_seconds?, detail?}`). Text that does not
    /// parse is itself the failure (the results: permanent, not JSON; the failure: retryable).
    pub fn from_host_json(ok: bool, payload: &str) -> Outcome {
        if ok {
            match serde_json::from_str(payload) {
                Ok(v) => Outcome::Complete(v),
                Err(e) => Outcome::Failed(StepFailure::not_json(e)),
            }
        } else {
            match serde_json::from_str::<StepFailure>(payload) {
                Ok(f) => Outcome::Failed(f),
                Err(e) => Outcome::Failed(StepFailure::retryable(format!(
                    "the handler's failure could not be read: {e}"
                ))),
            }
        }
    }
}

/// An outcome for a claimed attempt.
#[derive(Debug, Clone)]
pub struct Report {
    pub key: JobKey,
    pub outcome: Outcome,
}

/// What to claim in a [`Engine::report`] or [`Engine::poll`].
#[derive(Debug, Clone)]
pub struct Claim {
    pub worker_id: String,
    pub max: usize,
    /// Only steps whose handler is one of these (None: any).
    pub handlers: Option<Vec<String>>,
}

/// The answer of [`Engine::report`].
#[derive(Debug, Default)]
pub struct Cycle {
    /// Newly claimed jobs.
    pub jobs: Vec<Job>,
    /// Reports that no longer applied (the lease had expired and the step was taken over, or
    /// it was already settled); their outcome was not recorded.
    pub stale: Vec<JobKey>,
}
