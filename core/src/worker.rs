//! A worker for Rust handlers: the poll/complete protocol in a loop, with a concurrency limit,
//! lease heartbeats, per-step timeouts and graceful shutdown.
//!
//! The worker uses exactly the API the language bindings use ([`Engine::report`] with a
//! [`Claim`]): each turn of the loop records every outcome that has arrived and claims as many
//! steps as there are free slots, in one transaction.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info_span, warn, Instrument};

use crate::engine::{
    Claim, Engine, FailureKind, Job, JobKey, Outcome, Report, StepFailure, TaskSnapshot,
};
use crate::error::{Error, Result};

/// What a handler receives: the claimed job (task id, step name, attempt, context, config,
/// parent results).
pub type StepContext = Job;

/// A handler's failure.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum HandlerError {
    /// Retried while attempts remain; `retry_after` overrides the backoff.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Never retried.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after: Some(after),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent(message.into())
    }

    /// The engine-side failure for this error.
    pub fn into_failure(self) -> StepFailure {
        match self {
            HandlerError::Retryable {
                message,
                retry_after,
            } => StepFailure {
                message,
                kind: FailureKind::Retryable,
                retry_after_seconds: retry_after.map(|d| d.as_secs_f64()),
                detail: None,
            },
            HandlerError::Permanent(message) => StepFailure::permanent(message),
        }
    }
}

impl From<String> for HandlerError {
    fn from(s: String) -> Self {
        HandlerError::retryable(s)
    }
}

impl From<&str> for HandlerError {
    fn from(s: &str) -> Self {
        HandlerError::retryable(s)
    }
}

/// A step handler. The returned JSON value is the step's results.
#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    async fn call(&self, step: &StepContext) -> Result<Value, HandlerError>;
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Value, HandlerError>> + Send>>;

struct FnHandler<F>(F);

#[async_trait]
impl<F> StepHandler for FnHandler<F>
where
    F: Fn(StepContext) -> BoxFut + Send + Sync + 'static,
{
    async fn call(&self, step: &StepContext) -> Result<Value, HandlerError> {
        (self.0)(step.clone()).await
    }
}

/// Handlers by name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn StepHandler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the built-in `command` and `http` handlers; handlers registered
    /// afterwards under those names replace them.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        crate::builtin::register(&mut r);
        r
    }

    /// Registers a handler under `name` (the step's `handler_class`, default its step name).
    pub fn register(&mut self, name: impl Into<String>, handler: impl StepHandler) -> &mut Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// Registers an async closure: `registry.register_fn("a", |step| async move { Ok(json!(1)) })`.
    pub fn register_fn<F, Fut>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        let boxed = move |s: StepContext| -> BoxFut { Box::pin(f(s)) };
        self.handlers
            .insert(name.into(), Arc::new(FnHandler(boxed)));
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn StepHandler>> {
        self.handlers.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.handlers.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Steps run at once.
    pub concurrency: usize,
    pub worker_id: String,
    /// On shutdown, how long in-flight steps may still run before they are released.
    pub shutdown_grace: Duration,
    /// Steps claimed ahead of free slots, so one transaction records a batch of outcomes and
    /// claims the next batch (None: twice `concurrency`). Prefetched steps hold a lease
    /// while they wait.
    pub prefetch: Option<usize>,
    /// How long the first finished step may wait for the others still running before their
    /// outcomes are recorded together (default 1 ms).
    pub batch_window: Duration,
    /// Claim only steps whose handler is registered (default). `false` claims every ready step
    /// and fails those without a handler permanently (only for a worker meant to own them all).
    pub only_registered: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 8,
            prefetch: None,
            batch_window: Duration::from_millis(1),
            worker_id: Engine::new_worker_id(),
            shutdown_grace: Duration::from_secs(30),
            only_registered: true,
        }
    }
}

/// Counts of what a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub completed: u64,
    pub failed: u64,
    pub stale: u64,
    /// Transactions of the poll/complete protocol (report + claim) this run made.
    pub cycles: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Forever,
    UntilIdle,
    UntilTask(i64),
}

/// Runs Rust handlers against an engine.
pub struct Worker {
    engine: Engine,
    registry: Arc<Registry>,
    opts: WorkerOptions,
    stop_tx: watch::Sender<bool>,
}

/// Stops a running [`Worker`] gracefully (in-flight steps finish or are released).
#[derive(Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

struct Running {
    key: JobKey,
    abort: tokio::task::AbortHandle,
}

impl Worker {
    pub fn new(engine: Engine, registry: Registry, opts: WorkerOptions) -> Worker {
        let (stop_tx, _) = watch::channel(false);
        Worker {
            engine,
            registry: Arc::new(registry),
            opts,
            stop_tx,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop_tx.clone())
    }

    /// Runs until [`ShutdownHandle::shutdown`].
    pub async fn run(&self) -> Result<RunStats> {
        self.run_mode(Mode::Forever).await
    }

    /// Runs until there is nothing left to do: nothing claimable now or later for these
    /// handlers, nothing running anywhere.
    pub async fn run_until_idle(&self) -> Result<RunStats> {
        self.run_mode(Mode::UntilIdle).await
    }

    /// Runs until the task is finished (`complete`, `error`, `cancelled`) and returns it.
    pub async fn run_until_complete(
        &self,
        task_id: i64,
        timeout: Option<Duration>,
    ) -> Result<TaskSnapshot> {
        let run = self.run_mode(Mode::UntilTask(task_id));
        match timeout {
            None => run.await?,
            Some(t) => match tokio::time::timeout(t, run).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "task {task_id} did not finish within {t:?}"
                    )))
                }
            },
        };
        self.engine.get_task(task_id).await
    }

    async fn run_mode(&self, mode: Mode) -> Result<RunStats> {
        let span = info_span!("tasker.worker", worker = %self.opts.worker_id, ?mode);
        self.run_inner(mode).instrument(span).await
    }

    async fn run_inner(&self, mode: Mode) -> Result<RunStats> {
        let engine = &self.engine;
        let concurrency = self.opts.concurrency.max(1);
        let depth = concurrency + self.opts.prefetch.unwrap_or(2 * concurrency);
        let names = self.registry.names();
        let claim_base = Claim {
            worker_id: self.opts.worker_id.clone(),
            max: 0,
            handlers: self.opts.only_registered.then(|| names.clone()),
        };
        let handlers = claim_base.handlers.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
        let mut stop_rx = self.stop_tx.subscribe();
        let mut running: HashMap<i64, Running> = HashMap::new();
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut reports: Vec<Report> = Vec::new();
        let mut first_report: Option<Instant> = None;
        let mut stats = RunStats::default();
        let lease = engine.options().lease;
        let heartbeat_every = (lease / 3).max(Duration::from_millis(50));
        let mut last_heartbeat = Instant::now();
        let mut db_backoff = Duration::from_millis(50);
        let mut stopping_since: Option<Instant> = None;
        // Whether a claim may find something: false after a claim came back short, true again
        // when woken (new work announced, a backoff or lease due).
        let mut work_maybe = true;
        let mut armed = Box::pin(engine.work_notified());
        armed.as_mut().enable();

        loop {
            while let Ok(r) = rx.try_recv() {
                running.remove(&r.key.step_id);
                first_report.get_or_insert_with(Instant::now);
                reports.push(r);
            }
            if stopping_since.is_none() && *stop_rx.borrow() {
                stopping_since = Some(Instant::now());
            }
            // Jobs already claimed run even while stopping: they hold leases and attempts.
            while running.len() < concurrency {
                let Some(job) = queue.pop_front() else { break };
                let key = job.key;
                let abort = self.spawn(job, tx.clone());
                running.insert(key.step_id, Running { key, abort });
            }
            let outstanding = running.len() + queue.len();
            let room = if stopping_since.is_some() {
                0
            } else {
                depth.saturating_sub(outstanding)
            };

            if !reports.is_empty() {
                // Gather: let the other claimed steps finish so one transaction records them
                // all, for at most `batch_window` after the first outcome arrived.
                let waited = first_report.map(|t| t.elapsed()).unwrap_or_default();
                if outstanding > 0 && waited < self.opts.batch_window {
                    tokio::select! {
                        r = rx.recv() => if let Some(r) = r { running.remove(&r.key.step_id); reports.push(r); },
                        _ = tokio::time::sleep(self.opts.batch_window - waited) => {}
                    }
                    continue;
                }
            }
            if !reports.is_empty() || (room > 0 && work_maybe) {
                let claim = (room > 0).then(|| Claim {
                    max: room,
                    ..claim_base.clone()
                });
                if claim.is_some() {
                    // Arm before claiming: work announced after this claim's snapshot wakes us.
                    armed = Box::pin(engine.work_notified());
                    armed.as_mut().enable();
                }
                match engine.report(&reports, claim.as_ref()).await {
                    Ok(cycle) => {
                        stats.cycles += 1;
                        db_backoff = Duration::from_millis(50);
                        for r in &reports {
                            match r.outcome {
                                Outcome::Complete(_) => stats.completed += 1,
                                Outcome::Failed(_) => stats.failed += 1,
                            }
                        }
                        stats.stale += cycle.stale.len() as u64;
                        reports.clear();
                        first_report = None;
                        work_maybe = room > 0 && cycle.jobs.len() >= room;
                        queue.extend(cycle.jobs);
                    }
                    Err(e) => {
                        // Keep the reports: they are retried until the database answers (or the
                        // leases expire and the steps run again). Nothing is dropped.
                        warn!(error = %e, pending = reports.len(), "report failed; retrying");
                        tokio::time::sleep(db_backoff).await;
                        db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    }
                }
                continue;
            }
            if last_heartbeat.elapsed() >= heartbeat_every && outstanding > 0 {
                let keys: Vec<JobKey> = running
                    .values()
                    .map(|r| r.key)
                    .chain(queue.iter().map(|j| j.key))
                    .collect();
                if let Err(e) = engine.heartbeat(&keys).await {
                    warn!(error = %e, "heartbeat failed");
                }
                last_heartbeat = Instant::now();
            }
            if let Some(since) = stopping_since {
                if outstanding == 0 {
                    return Ok(stats);
                }
                if since.elapsed() >= self.opts.shutdown_grace {
                    for (_, r) in running.drain() {
                        r.abort.abort();
                        reports.push(Report {
                            key: r.key,
                            outcome: Outcome::Failed(
                                StepFailure::retryable("worker shut down before the step finished")
                                    .retry_after(0.0),
                            ),
                        });
                    }
                    for j in queue.drain(..) {
                        reports.push(Report {
                            key: j.key,
                            outcome: Outcome::Failed(
                                StepFailure::retryable("worker shut down before the step started")
                                    .retry_after(0.0),
                            ),
                        });
                    }
                    continue;
                }
                tokio::select! {
                    r = rx.recv() => if let Some(r) = r { running.remove(&r.key.step_id); reports.push(r); },
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
            let finished = match mode {
                Mode::UntilTask(id) => engine.get_task_state(id).await.map(|s| s.is_terminal()),
                Mode::UntilIdle if outstanding == 0 => engine.is_idle(handlers.as_deref()).await,
                _ => Ok(false),
            };
            match finished {
                Ok(true) if mode == Mode::UntilIdle => return Ok(stats),
                Ok(true) => {
                    stopping_since = Some(Instant::now());
                    continue;
                }
                Ok(false) => {}
                Err(e @ (Error::Database(_) | Error::Sqlite(_))) => {
                    // The database is away: keep what we hold, look again after a pause.
                    warn!(error = %e, "database unavailable; retrying");
                    tokio::time::sleep(db_backoff).await;
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Nothing to record and nothing to claim: sleep until a handler finishes, new work
            // is announced, a backoff elapses or a lease may have expired, or we are told to stop.
            let nap = if room == 0 || outstanding > 0 {
                // Steps are running: their outcomes wake us; new work is claimed with them.
                heartbeat_every
            } else {
                engine
                    .time_to_next_work(handlers.as_deref())
                    .await
                    .unwrap_or(Duration::from_millis(100))
                    .min(heartbeat_every)
            };
            tokio::select! {
                r = rx.recv() => if let Some(r) = r {
                    running.remove(&r.key.step_id);
                    first_report.get_or_insert_with(Instant::now);
                    reports.push(r);
                },
                _ = &mut armed => {
                    work_maybe = true;
                    armed = Box::pin(engine.work_notified());
                    armed.as_mut().enable();
                }
                _ = tokio::time::sleep(nap) => work_maybe = true,
                _ = stop_rx.changed() => {}
            }
        }
    }

    fn spawn(&self, job: Job, tx: mpsc::UnboundedSender<Report>) -> tokio::task::AbortHandle {
        let handler = self.registry.get(&job.handler);
        let key = job.key;
        let timeout = job.timeout;
        let span = tracing::debug_span!("tasker.step", task_id = key.task_id, step = %job.step_name, attempt = key.attempt);
        let outer = tokio::spawn(
            async move {
                let outcome = match handler {
                    None => Outcome::Failed(StepFailure::permanent(format!(
                        "no handler named {:?} is registered in this worker",
                        job.handler
                    ))),
                    Some(h) => {
                        // One task per step: the handler runs inside it, panics caught at poll.
                        let fut = CatchUnwind(Box::pin(async move { h.call(&job).await }));
                        let joined = match timeout {
                            None => Some(fut.await),
                            Some(t) => tokio::time::timeout(t, fut).await.ok(),
                        };
                        match joined {
                            None => Outcome::Failed(StepFailure {
                                message: format!(
                                    "timed out after {:.3} s (timeout_seconds)",
                                    timeout.unwrap().as_secs_f64()
                                ),
                                kind: FailureKind::Timeout,
                                retry_after_seconds: None,
                                detail: None,
                            }),
                            Some(Ok(Ok(v))) => Outcome::Complete(v),
                            Some(Ok(Err(e))) => Outcome::Failed(e.into_failure()),
                            Some(Err(panic)) => Outcome::Failed(
                                StepFailure::retryable(format!(
                                    "handler panicked: {}",
                                    panic_message(panic)
                                ))
                                .detail(json!({"panic": true})),
                            ),
                        }
                    }
                };
                debug!(
                    ok = matches!(outcome, Outcome::Complete(_)),
                    "step finished"
                );
                let _ = tx.send(Report { key, outcome });
            }
            .instrument(span),
        );
        outer.abort_handle()
    }
}

type Panic = Box<dyn std::any::Any + Send>;

/// Polls a boxed future, turning a panic inside it into an error.
struct CatchUnwind<F: ?Sized>(Pin<Box<F>>);

impl<F: Future + ?Sized> Future for CatchUnwind<F> {
    type Output = std::result::Result<F::Output, Panic>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(p) => std::task::Poll::Ready(Err(p)),
        }
    }
}

fn panic_message(p: Panic) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
