//! The native half of the `tasker` Ruby gem (magnus). It converts types and nothing else: every
//! decision is tasker-core's, and the worker loop is core's host driver, running on a tokio
//! runtime of its own. Data crosses as JSON text (parsed by the Ruby half).
//!
//! Threads: tokio threads never touch a Ruby object. A Ruby thread that waits for the core
//! (every call that may block: opening, queries, `Driver#next`, `join`) releases the GVL with
//! `rb_thread_call_without_gvl` and wakes up every 50 ms to run Ruby's pending interrupts, so
//! Ctrl-C, `Thread#raise`, `Timeout.timeout` and other Ruby threads keep working.

use std::ffi::c_void;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use magnus::{function, method, prelude::*, Error, ExceptionClass, RArray, RModule, Ruby};
use serde_json::Value;
use tasker_core::host::{self, DriverSpec, HostJob, TaskListQuery};
use tasker_core::{
    builtin, Engine, EngineOptions, Error as CoreError, Event, HostDriver, JobKey, Outcome,
    StepFailure, TaskRequest,
};
use tokio::sync::broadcast;

/// The core's runtime for this process. A forked child (Puma, Unicorn, Spring, Sidekiq's
/// swarm) inherits the parent's memory but not its threads, so a child builds its own runtime.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut g = RT.lock().unwrap_or_else(|p| p.into_inner());
    match *g {
        Some((owner, rt)) if owner == pid => rt,
        _ => {
            let rt: &'static _ = Box::leak(Box::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("tasker-core")
                    .enable_all()
                    .build()
                    .expect("tokio runtime"),
            ));
            *g = Some((pid, rt));
            rt
        }
    }
}

/// Runs `f` with the GVL released. `f` must not touch Ruby; a panic in it aborts (it must not
/// unwind through Ruby's C frames).
fn without_gvl<F: FnOnce() -> R, R>(f: F) -> R {
    struct Data<F, R> {
        f: Option<F>,
        r: Option<R>,
    }
    unsafe extern "C" fn call<F: FnOnce() -> R, R>(d: *mut c_void) -> *mut c_void {
        let d = unsafe { &mut *(d as *mut Data<F, R>) };
        let f = d.f.take().expect("called once");
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => d.r = Some(r),
            Err(_) => std::process::abort(),
        }
        std::ptr::null_mut()
    }
    let mut d = Data {
        f: Some(f),
        r: None,
    };
    unsafe {
        rb_sys::rb_thread_call_without_gvl(
            Some(call::<F, R>),
            &mut d as *mut _ as *mut c_void,
            None,
            std::ptr::null_mut(),
        );
    }
    d.r.expect("ran")
}

/// How often a Ruby thread waiting on the core wakes up to run Ruby's pending interrupts.
const INTERRUPT_CHECK: Duration = Duration::from_millis(50);

/// Runs `fut` on the core's runtime and waits for it without the GVL, checking Ruby's
/// interrupts every 50 ms (an interrupt that raises cancels `fut`).
fn wait<T: Send + 'static>(
    ruby: &Ruby,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, Error> {
    let mut handle = rt().spawn(fut);
    loop {
        let r = without_gvl(|| {
            rt().block_on(async { tokio::time::timeout(INTERRUPT_CHECK, &mut handle).await })
        });
        match r {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => {
                return Err(Error::new(
                    ruby.exception_runtime_error(),
                    format!("tasker: internal error: {e}"),
                ))
            }
            Err(_) => {
                if let Err(e) = ruby.thread_check_ints() {
                    handle.abort();
                    return Err(e);
                }
            }
        }
    }
}

/// The `Tasker::...Error` class for a core error kind (defined by the Ruby half before it
/// loads this library).
fn error_class(ruby: &Ruby, kind: &str) -> ExceptionClass {
    let name = match kind {
        "template" => "TemplateError",
        "validation" => "ValidationError",
        "not_found" => "NotFoundError",
        "conflict" | "illegal_transition" => "ConflictError",
        "database" | "connect" => "DatabaseError",
        "timeout" => "TimeoutError",
        _ => "Error",
    };
    ruby.class_object()
        .const_get::<_, RModule>("Tasker")
        .and_then(|m| m.const_get::<_, ExceptionClass>(name))
        .unwrap_or_else(|_| ruby.exception_runtime_error())
}

fn err(ruby: &Ruby, e: CoreError) -> Error {
    Error::new(error_class(ruby, e.kind()), e.to_string())
}

fn invalid(ruby: &Ruby, message: impl std::fmt::Display) -> Error {
    Error::new(error_class(ruby, "validation"), message.to_string())
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("json")
}

fn parse<T: serde::de::DeserializeOwned>(ruby: &Ruby, what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| invalid(ruby, format!("{what}: {e}")))
}

/// A claimed job (core's [`HostJob`]) as `Tasker::Native::Job`: what the Ruby half's
/// `Tasker::Step` is built from. JSON as text.
#[magnus::wrap(class = "Tasker::Native::Job", free_immediately, size)]
struct NativeJob(HostJob);

impl NativeJob {
    fn task_id(&self) -> i64 {
        self.0.task_id
    }
    fn step_id(&self) -> i64 {
        self.0.step_id
    }
    fn attempt(&self) -> u32 {
        self.0.attempt
    }
    fn position(&self) -> u32 {
        self.0.position
    }
    fn step_name(&self) -> String {
        self.0.step_name.clone()
    }
    fn handler(&self) -> String {
        self.0.handler.clone()
    }
    fn max_attempts(&self) -> u32 {
        self.0.max_attempts
    }
    fn context(&self) -> String {
        self.0.context.clone()
    }
    fn results(&self) -> String {
        self.0.results.clone()
    }
    fn config(&self) -> String {
        self.0.config.clone()
    }
    fn custom_events(&self) -> Vec<String> {
        self.0.custom_events.clone()
    }
    /// A fan-out instance's item (JSON text), else nil.
    fn batch(&self) -> Option<String> {
        self.0.batch.clone()
    }
    fn batch_index(&self) -> Option<u32> {
        self.0.batch_index
    }
    /// What an earlier attempt saved (JSON text), else nil.
    fn checkpoint(&self) -> Option<String> {
        self.0.checkpoint.clone()
    }
    /// `[task_id, step_id, attempt, position]`: handed back with the outcome.
    fn key(&self) -> (i64, i64, u32, u32) {
        (
            self.0.task_id,
            self.0.step_id,
            self.0.attempt,
            self.0.position,
        )
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

/// The engine on a database (`Tasker::Native::Core`).
#[magnus::wrap(class = "Tasker::Native::Core", free_immediately, size)]
struct Core {
    engine: Engine,
    /// The process that opened it: its connections and tasks live on that process's runtime.
    pid: u32,
    events: Mutex<Option<broadcast::Receiver<Arc<Event>>>>,
}

impl Core {
    /// Opens (and migrates) the database. `options_json`: `{url, environment, schema,
    /// lease_seconds, listen, strict_templates}`.
    fn open(ruby: &Ruby, options_json: String) -> Result<Core, Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct O {
            url: Option<String>,
            environment: Option<String>,
            schema: Option<String>,
            lease_seconds: Option<f64>,
            listen: Option<bool>,
            strict_templates: Option<bool>,
        }
        let o: O = parse(ruby, "Tasker::Engine options", &options_json)?;
        let lease = o.lease_seconds.unwrap_or(30.0);
        if !(lease.is_finite() && lease >= 0.1) {
            return Err(invalid(
                ruby,
                format!("lease_seconds must be at least 0.1, got {lease}"),
            ));
        }
        let opts = EngineOptions {
            url: o.url,
            environment: o.environment,
            schema: o.schema,
            listen: o.listen.unwrap_or(true),
            strict_templates: o.strict_templates.unwrap_or(false),
            lease: Duration::from_secs_f64(lease),
            ..Default::default()
        };
        let engine = wait(ruby, Engine::open_with(opts))?.map_err(|e| err(ruby, e))?;
        Ok(Core {
            engine,
            pid: std::process::id(),
            events: Mutex::new(None),
        })
    }

    /// Refuses an engine inherited through `fork`: its connections belong to the parent.
    fn check_pid(&self, ruby: &Ruby) -> Result<(), Error> {
        if self.pid == std::process::id() {
            return Ok(());
        }
        Err(Error::new(
            error_class(ruby, "error"),
            format!(
                "this Tasker::Engine was opened in process {} before a fork; open a new one in this process (Tasker.engine does so by itself)",
                self.pid
            ),
        ))
    }

    fn call<T: Send + 'static, F>(
        &self,
        ruby: &Ruby,
        f: impl FnOnce(Engine) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = tasker_core::Result<T>> + Send + 'static,
    {
        self.check_pid(ruby)?;
        wait(ruby, f(self.engine.clone()))?.map_err(|e| err(ruby, e))
    }

    /// Every registered template (each revision) as a JSON array.
    fn templates(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move {
            e.templates().await.map(|t| json_text(&t))
        })
    }

    /// Registers YAML text, a file or a JSON document (`kind`: "yaml", "file", "json");
    /// returns `[key, warnings]` (unknown keys, kept), which `Tasker::Engine` passes to `warn`.
    fn register_template(
        ruby: &Ruby,
        rb_self: &Self,
        kind: String,
        text: String,
    ) -> Result<(String, Vec<String>), Error> {
        rb_self.call(ruby, |e| async move {
            let r = e.register_template_kind(&kind, &text).await?;
            Ok((r.key, r.warnings))
        })
    }

    fn handler_names(ruby: &Ruby, rb_self: &Self) -> Result<Vec<String>, Error> {
        rb_self.call(ruby, |e| async move { e.handler_names().await })
    }

    fn create_task(ruby: &Ruby, rb_self: &Self, request_json: String) -> Result<i64, Error> {
        let req: TaskRequest = parse(ruby, "task request", &request_json)?;
        rb_self.call(ruby, |e| async move { e.create_task(req).await })
    }

    fn create_tasks(ruby: &Ruby, rb_self: &Self, requests_json: String) -> Result<Vec<i64>, Error> {
        let reqs: Vec<TaskRequest> = parse(ruby, "task requests", &requests_json)?;
        rb_self.call(ruby, |e| async move { e.create_tasks(reqs).await })
    }

    /// Registers event definitions (`kind`: "yaml" text or a "path", file or directory);
    /// returns the registered definitions as JSON.
    fn register_events(
        ruby: &Ruby,
        rb_self: &Self,
        kind: String,
        text: String,
    ) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move {
            e.register_events_kind(&kind, &text)
                .await
                .map(|d| json_text(&d))
        })
    }

    fn event_catalog(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move {
            e.event_catalog().await.map(|c| json_text(&c))
        })
    }

    fn event_definitions(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move {
            e.event_definitions().await.map(|d| json_text(&d))
        })
    }

    fn get_task(ruby: &Ruby, rb_self: &Self, task_id: i64) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move {
            e.get_task(task_id).await.map(|t| json_text(&t))
        })
    }

    /// `filter_json`: `{status, name, namespace, limit, offset}`.
    fn list_tasks(ruby: &Ruby, rb_self: &Self, filter_json: String) -> Result<String, Error> {
        let q = TaskListQuery::from_json("list_tasks options", &filter_json)
            .map_err(|e| err(ruby, e))?;
        rb_self.call(ruby, |e| async move {
            e.list_tasks_query(q).await.map(|l| json_text(&l))
        })
    }

    fn cancel_task(ruby: &Ruby, rb_self: &Self, task_id: i64) -> Result<(), Error> {
        rb_self.call(ruby, |e| async move { e.cancel_task(task_id).await })
    }

    fn retry_step(ruby: &Ruby, rb_self: &Self, task_id: i64, step: String) -> Result<(), Error> {
        rb_self.call(ruby, |e| async move { e.retry_step(task_id, &step).await })
    }

    fn update_task(
        ruby: &Ruby,
        rb_self: &Self,
        task_id: i64,
        reason: Option<String>,
        tags: Option<Vec<String>>,
    ) -> Result<(), Error> {
        rb_self.call(ruby, |e| async move {
            e.update_task(task_id, reason, tags).await
        })
    }

    fn cancel_step(ruby: &Ruby, rb_self: &Self, task_id: i64, step: String) -> Result<(), Error> {
        rb_self.call(ruby, |e| async move { e.cancel_step(task_id, &step).await })
    }

    fn set_step_retry_limit(
        ruby: &Ruby,
        rb_self: &Self,
        task_id: i64,
        step: String,
        retry_limit: i64,
    ) -> Result<(), Error> {
        rb_self.call(ruby, |e| async move {
            e.set_step_retry_limit(task_id, &step, retry_limit).await
        })
    }

    fn transitions(ruby: &Ruby, rb_self: &Self, task_id: i64) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move {
            e.task_transitions(task_id).await.map(|t| json_text(&t))
        })
    }

    fn analytics(
        ruby: &Ruby,
        rb_self: &Self,
        window_seconds: f64,
        namespace: Option<String>,
        name: Option<String>,
    ) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move {
            e.analytics_seconds(window_seconds, namespace.as_deref(), name.as_deref())
                .await
                .map(|a| json_text(&a))
        })
    }

    fn resolve_step_manually(
        ruby: &Ruby,
        rb_self: &Self,
        task_id: i64,
        step: String,
        results_json: String,
    ) -> Result<(), Error> {
        let results: Value = parse(ruby, "results", &results_json)?;
        rb_self.call(ruby, |e| async move {
            e.resolve_step_manually(task_id, &step, results).await
        })
    }

    fn signal(
        ruby: &Ruby,
        rb_self: &Self,
        task_id: i64,
        name: String,
        payload_json: String,
    ) -> Result<usize, Error> {
        let payload: Value = parse(ruby, "payload", &payload_json)?;
        rb_self.call(
            ruby,
            |e| async move { e.signal(task_id, &name, payload).await },
        )
    }

    fn complete_step(
        ruby: &Ruby,
        rb_self: &Self,
        task_id: i64,
        step: String,
        results_json: String,
    ) -> Result<(), Error> {
        let results: Value = parse(ruby, "results", &results_json)?;
        rb_self.call(ruby, |e| async move {
            e.complete_step(task_id, &step, results).await
        })
    }

    fn fail_step(
        ruby: &Ruby,
        rb_self: &Self,
        task_id: i64,
        step: String,
        message: String,
        permanent: bool,
    ) -> Result<(), Error> {
        rb_self.call(ruby, |e| async move {
            e.fail_step(task_id, &step, &message, permanent).await
        })
    }

    fn complete_correlated(
        ruby: &Ruby,
        rb_self: &Self,
        correlation_id: String,
        results_json: String,
    ) -> Result<usize, Error> {
        let results: Value = parse(ruby, "results", &results_json)?;
        rb_self.call(ruby, |e| async move {
            e.complete_correlated(&correlation_id, results).await
        })
    }

    /// Steering tasks: `op` pause_task, resume_task, retry_task, rerun_from, pause_template,
    /// resume_template, retry_tasks, cancel_tasks or prune (`arg`: its keys as JSON).
    fn flow_op(ruby: &Ruby, rb_self: &Self, op: String, arg: String) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move { e.flow_op(&op, &arg).await })
    }

    /// Schedules: `op` create (`arg`: the spec as JSON), list, get, pause, resume, delete.
    fn schedule_op(ruby: &Ruby, rb_self: &Self, op: String, arg: String) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move { e.schedule_op(&op, &arg).await })
    }

    /// `[description, durable]`: the durability commits get, as the database reports it.
    fn durability(ruby: &Ruby, rb_self: &Self) -> Result<(String, bool), Error> {
        rb_self.call(ruby, |e| async move {
            e.durability().await.map(|d| (d.description, d.durable))
        })
    }

    /// Waits up to `seconds` for the task to finish; its state then.
    fn wait_for_task(
        ruby: &Ruby,
        rb_self: &Self,
        task_id: i64,
        seconds: f64,
    ) -> Result<String, Error> {
        rb_self.call(ruby, |e| async move {
            e.wait_for_task_state(task_id, seconds)
                .await
                .map(|s| s.as_str().to_owned())
        })
    }

    /// Publishes a custom event from a running job (`job`: as `Driver#next` gave it).
    fn publish_custom_event(
        ruby: &Ruby,
        rb_self: &Self,
        job: &NativeJob,
        name: String,
        payload_json: String,
    ) -> Result<(), Error> {
        let payload: Value = parse(
            ruby,
            &format!("custom event {name}: payload"),
            &payload_json,
        )?;
        rb_self
            .engine
            .publish_custom_event_for(
                job.0.key(),
                &job.0.step_name,
                &job.0.custom_events,
                &name,
                payload,
            )
            .map_err(|e| err(ruby, e))
    }

    /// Saves a running job's checkpoint (JSON text), durably.
    fn save_checkpoint(
        ruby: &Ruby,
        rb_self: &Self,
        job: &NativeJob,
        value_json: String,
    ) -> Result<(), Error> {
        let value: Value = parse(ruby, "checkpoint", &value_json)?;
        let key = job.0.key();
        rb_self.call(ruby, move |e| async move {
            e.save_checkpoint(&key, &value).await
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
        match self.events.lock().unwrap().as_mut() {
            Some(rx) => host::drain_events(rx)
                .iter()
                .map(|e| json_text(&**e))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Starts core's host driver for `handlers` (run in Ruby) plus the built-in handlers (run in
    /// Rust). `mode`: "forever", "until_idle" or "until_task".
    fn start_driver(
        ruby: &Ruby,
        rb_self: &Self,
        handlers: Vec<String>,
        concurrency: i64,
        mode: String,
        task_id: Option<i64>,
        shutdown_grace_seconds: f64,
    ) -> Result<Driver, Error> {
        rb_self.check_pid(ruby)?;
        let spec = DriverSpec {
            handlers,
            concurrency,
            mode,
            task_id,
            worker_id: None,
            shutdown_grace_seconds: Some(shutdown_grace_seconds),
        };
        let _guard = rt().enter();
        let driver =
            HostDriver::start_spec(rb_self.engine.clone(), spec).map_err(|e| err(ruby, e))?;
        Ok(Driver {
            driver: Arc::new(driver),
        })
    }
}

/// A running worker loop for this process's Ruby handlers (`Tasker::Native::Driver`).
#[magnus::wrap(class = "Tasker::Native::Driver", free_immediately, size)]
struct Driver {
    driver: Arc<HostDriver>,
}

impl Driver {
    /// `[jobs, done]`: the jobs to start, once some are ready or after `wait_ms`.
    ///
    /// The hot path: `next` is cancel-safe and short (at most 50 ms per wait, then Ruby's
    /// interrupts are checked), so it runs right on this thread's `block_on` instead of being
    /// spawned, saving a cross-thread wake-up per batch.
    fn next(ruby: &Ruby, rb_self: &Self, wait_ms: u64) -> Result<(RArray, bool), Error> {
        let d = &rb_self.driver;
        let mut left = Duration::from_millis(wait_ms);
        loop {
            let slice = left.min(INTERRUPT_CHECK);
            let b = without_gvl(|| rt().block_on(d.next(slice)));
            left = left.saturating_sub(slice);
            if !b.jobs.is_empty() || b.done || left.is_zero() {
                // Each job a `Tasker::Native::Job` (a wrapped object: built one by one).
                let jobs = ruby.ary_new_capa(b.jobs.len());
                for j in &b.jobs {
                    jobs.push(NativeJob(j.to_host()))?;
                }
                return Ok((jobs, b.done));
            }
            ruby.thread_check_ints()?;
        }
    }

    /// The handler of this job starts now (its timeout counts from here).
    fn started(&self, task_id: i64, step_id: i64, attempt: u32, position: u32) {
        self.driver
            .started(key(task_id, step_id, attempt, position));
    }

    /// The handler finished: `ok` with the results as JSON text, or a failure
    /// `{message, kind, retry_after_seconds?, detail?}` as JSON text.
    fn finished(
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
    fn finished_not_json(
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
    fn shutdown(&self) {
        self.driver.shutdown();
    }

    /// `[completed, failed, stale, cycles]` once the run is over.
    fn join(ruby: &Ruby, rb_self: &Self) -> Result<(u64, u64, u64, u64), Error> {
        let d = rb_self.driver.clone();
        let s = wait(ruby, async move { d.join().await })?.map_err(|e| err(ruby, e))?;
        Ok((s.completed, s.failed, s.stale, s.cycles))
    }
}

/// Every lifecycle event name.
fn event_names() -> Vec<&'static str> {
    tasker_core::state::all_event_names()
}

/// Checks a subscription: `*`, a lifecycle event or a custom event name.
fn check_subscription(ruby: &Ruby, name: String) -> Result<(), Error> {
    tasker_core::events::check_subscription(&name).map_err(|m| invalid(ruby, m))
}

/// Core's rule for an HTTP response (the built-in `http` handler's): `[true, results_json]` or
/// `[false, failure_json]`.
fn classify_http(
    what: String,
    status: u16,
    retry_after: Option<String>,
    body: String,
) -> (bool, String) {
    match builtin::classify_http_response(&what, status, retry_after.as_deref(), body.as_bytes()) {
        Ok(v) => (true, json_text(&v)),
        Err(e) => (false, json_text(&e.into_failure())),
    }
}

#[magnus::init(name = "tasker")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let tasker = ruby.define_module("Tasker")?;
    let native = tasker.define_module("Native")?;
    native.define_singleton_method("event_names", function!(event_names, 0))?;
    native.define_singleton_method("check_subscription", function!(check_subscription, 1))?;
    native.define_singleton_method("classify_http", function!(classify_http, 4))?;

    let core = native.define_class("Core", ruby.class_object())?;
    core.define_singleton_method("open", function!(Core::open, 1))?;
    core.define_method("register_template", method!(Core::register_template, 2))?;
    core.define_method("handler_names", method!(Core::handler_names, 0))?;
    core.define_method("templates", method!(Core::templates, 0))?;
    core.define_method("create_task", method!(Core::create_task, 1))?;
    core.define_method("create_tasks", method!(Core::create_tasks, 1))?;
    core.define_method("get_task", method!(Core::get_task, 1))?;
    core.define_method("register_events", method!(Core::register_events, 2))?;
    core.define_method("event_definitions", method!(Core::event_definitions, 0))?;
    core.define_method("event_catalog", method!(Core::event_catalog, 0))?;
    core.define_method("list_tasks", method!(Core::list_tasks, 1))?;
    core.define_method("cancel_task", method!(Core::cancel_task, 1))?;
    core.define_method("retry_step", method!(Core::retry_step, 2))?;
    core.define_method("update_task", method!(Core::update_task, 3))?;
    core.define_method("cancel_step", method!(Core::cancel_step, 2))?;
    core.define_method(
        "set_step_retry_limit",
        method!(Core::set_step_retry_limit, 3),
    )?;
    core.define_method("transitions", method!(Core::transitions, 1))?;
    core.define_method("analytics", method!(Core::analytics, 3))?;
    core.define_method(
        "resolve_step_manually",
        method!(Core::resolve_step_manually, 3),
    )?;
    core.define_method("signal", method!(Core::signal, 3))?;
    core.define_method("complete_step", method!(Core::complete_step, 3))?;
    core.define_method("fail_step", method!(Core::fail_step, 4))?;
    core.define_method("complete_correlated", method!(Core::complete_correlated, 2))?;
    core.define_method("durability", method!(Core::durability, 0))?;
    core.define_method("schedule_op", method!(Core::schedule_op, 2))?;
    core.define_method("flow_op", method!(Core::flow_op, 2))?;
    core.define_method("wait_for_task", method!(Core::wait_for_task, 2))?;
    core.define_method(
        "publish_custom_event",
        method!(Core::publish_custom_event, 3),
    )?;
    core.define_method("save_checkpoint", method!(Core::save_checkpoint, 2))?;
    core.define_method("subscribe", method!(Core::subscribe, 0))?;
    core.define_method("drain_events", method!(Core::drain_events, 0))?;
    core.define_method("start_driver", method!(Core::start_driver, 5))?;

    let job = native.define_class("Job", ruby.class_object())?;
    job.define_method("task_id", method!(NativeJob::task_id, 0))?;
    job.define_method("step_id", method!(NativeJob::step_id, 0))?;
    job.define_method("attempt", method!(NativeJob::attempt, 0))?;
    job.define_method("position", method!(NativeJob::position, 0))?;
    job.define_method("step_name", method!(NativeJob::step_name, 0))?;
    job.define_method("handler", method!(NativeJob::handler, 0))?;
    job.define_method("max_attempts", method!(NativeJob::max_attempts, 0))?;
    job.define_method("context", method!(NativeJob::context, 0))?;
    job.define_method("results", method!(NativeJob::results, 0))?;
    job.define_method("config", method!(NativeJob::config, 0))?;
    job.define_method("custom_events", method!(NativeJob::custom_events, 0))?;
    job.define_method("batch", method!(NativeJob::batch, 0))?;
    job.define_method("batch_index", method!(NativeJob::batch_index, 0))?;
    job.define_method("checkpoint", method!(NativeJob::checkpoint, 0))?;
    job.define_method("key", method!(NativeJob::key, 0))?;

    let driver = native.define_class("Driver", ruby.class_object())?;
    driver.define_method("next", method!(Driver::next, 1))?;
    driver.define_method("started", method!(Driver::started, 4))?;
    driver.define_method("finished", method!(Driver::finished, 6))?;
    driver.define_method("finished_not_json", method!(Driver::finished_not_json, 5))?;
    driver.define_method("shutdown", method!(Driver::shutdown, 0))?;
    driver.define_method("join", method!(Driver::join, 0))?;
    Ok(())
}
