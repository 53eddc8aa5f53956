//! The host driver: the one worker loop of Tasker, shared by the Rust [`crate::Worker`] and every
//! language binding.
//!
//! A *host* is whatever runs handlers: Rust futures, Python threads and coroutines, Node
//! promises, Ruby threads. The driver decides everything a worker loop decides, once:
//!
//! * **claiming with prefetch**: up to `concurrency + prefetch` jobs held, so one transaction
//!   records a batch of outcomes and claims the next batch; unless told a number, the prefetch
//!   follows the handlers' pace: what would start within [`PREFETCH_HORIZON`], between two and
//!   ten times `concurrency`;
//! * **lanes**: on PostgreSQL two such loops side by side, each with half the slots, so one's
//!   cycle runs in the database while the other's commits;
//! * **batching**: the first outcome waits up to `batch_window` for the others in flight;
//! * **heartbeats** for every job it holds (running or waiting to start);
//! * **timeouts** counted from the moment the handler *starts* (the host says when), never from
//!   the claim: a job queued behind others does not time out before it runs;
//! * **the database going away**: outcomes are kept and retried with backoff (50 ms doubling
//!   to 5 s) until it answers; nothing is dropped, nothing ends the loop;
//! * **graceful shutdown**: nothing more is claimed; jobs not yet started are handed back at once
//!   (`released`: the attempt is given back); running ones get `shutdown_grace` to finish, then
//!   are reported as `worker_shutdown` failures: never left to lease expiry;
//! * **built-in handlers**: a job whose handler the host does not run but the driver's
//!   [`Registry`] holds (the built-in `command` and `http`, or all Rust handlers of a
//!   [`crate::Worker`]) runs inside the driver through [`crate::handler::execute`];
//! * **events**: lifecycle events are drained for the host with each batch of jobs.
//!
//! A host's loop is only: [`HostDriver::next`] (blocks up to `wait`, off the host's main thread
//! or with its lock released), run each job's handler in the language's idiom, call
//! [`HostDriver::started`] when the handler begins and [`HostDriver::finished`] with its
//! outcome, repeat until [`HostBatch::done`]; then [`HostDriver::join`] for the run's result.
//! ARCHITECTURE.md has the sequence diagram.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{debug, info_span, warn, Instrument};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::handler::{self, Registry};
use crate::protocol::{Claim, Job, JobKey, Outcome, Report, StepFailure};

/// When a run ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RunMode {
    /// Until [`HostDriver::shutdown`] (or a [`ShutdownHandle`]).
    Forever,
    /// Until nothing is claimable now or later for these handlers and nothing runs anywhere.
    UntilIdle,
    /// Until this task is `complete`, `error` or `cancelled`.
    UntilTask(i64),
}

/// How a driver runs.
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub worker_id: String,
    /// Handlers running at once (host and driver together).
    pub concurrency: usize,
    /// Jobs claimed ahead of free slots (None: adaptive, between twice and ten times
    /// `concurrency`, as many as would start within [`PREFETCH_HORIZON`] at the handlers'
    /// recent pace). They hold a lease while they wait, and are handed back at once on
    /// shutdown.
    pub prefetch: Option<usize>,
    /// How long the first outcome may wait for the others in flight, so one transaction records
    /// them together (default 1 ms).
    pub batch_window: Duration,
    /// On shutdown, how long running handlers may still finish before they are reported as
    /// `worker_shutdown` failures.
    pub shutdown_grace: Duration,
    /// Claim only steps whose handler is known here (default). `false` claims every ready step
    /// and fails those without a handler permanently (only for a worker meant to own them all).
    pub only_registered: bool,
    pub mode: RunMode,
    /// Handler names the host runs itself (they win over the driver's registry).
    pub host_handlers: Vec<String>,
    /// Hand lifecycle events to the host with each batch ([`HostBatch::events`]).
    pub events: bool,
    /// Lanes: independent report-and-claim loops the worker runs side by side, each holding
    /// its share of `concurrency` and `prefetch` (None: [`Engine::default_lanes`], 2 on
    /// PostgreSQL and 1 on SQLite). With two, one lane's cycle runs in the database while the
    /// other's waits for its commit, so both of a server's cores work for one worker.
    pub lanes: Option<usize>,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            worker_id: Engine::new_worker_id(),
            concurrency: 8,
            prefetch: None,
            batch_window: Duration::from_millis(1),
            shutdown_grace: Duration::from_secs(30),
            only_registered: true,
            mode: RunMode::Forever,
            host_handlers: Vec::new(),
            events: false,
            lanes: None,
        }
    }
}

/// Counts of what a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub completed: u64,
    pub failed: u64,
    /// Outcomes not recorded because the attempt had been taken over (its lease expired).
    pub stale: u64,
    /// Transactions of the poll/complete protocol (report + claim) this run made.
    pub cycles: u64,
}

/// What [`HostDriver::next`] hands the host.
#[derive(Debug, Default)]
pub struct HostBatch {
    /// Jobs to start now: the driver hands out no more than there are free slots.
    pub jobs: Vec<Job>,
    /// Lifecycle events since the last batch (when [`HostOptions::events`]).
    pub events: Vec<Arc<Event>>,
    /// The run is over: call [`HostDriver::join`] for its result.
    pub done: bool,
}

/// Stops a running driver gracefully.
#[derive(Clone)]
pub struct ShutdownHandle(pub(crate) watch::Sender<bool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

enum Msg {
    Started(JobKey),
    /// With how long the handler ran when the driver ran it (else counted from `Started`).
    Finished(JobKey, Outcome, Option<Duration>),
}

/// A running worker loop; see the module documentation.
pub struct HostDriver {
    /// One sender per lane.
    msgs: Vec<mpsc::UnboundedSender<Msg>>,
    /// Which lane holds each host-run job (with more than one lane).
    owners: Owners,
    jobs: tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>,
    events: Mutex<Option<broadcast::Receiver<Arc<Event>>>>,
    stop: ShutdownHandle,
    task: tokio::sync::Mutex<Option<oneshot::Receiver<Result<RunStats>>>>,
}

impl Drop for HostDriver {
    fn drop(&mut self) {
        // A driver nobody holds stops gracefully (its jobs are reported, not abandoned).
        self.stop.shutdown();
    }
}

impl HostDriver {
    /// Starts the loop on the current tokio runtime. `registry` holds the handlers the driver
    /// runs itself; a name in `opts.host_handlers` is the host's even if `registry` has it.
    pub fn start(engine: Engine, registry: Registry, opts: HostOptions) -> HostDriver {
        let (stop_tx, stop_rx) = watch::channel(false);
        Self::start_with_stop(engine, registry, opts, ShutdownHandle(stop_tx), stop_rx)
    }

    fn build(
        engine: Engine,
        mut registry: Registry,
        opts: HostOptions,
        stop: ShutdownHandle,
        stop_rx: watch::Receiver<bool>,
    ) -> (HostDriver, Lanes) {
        for n in &opts.host_handlers {
            registry.remove(n);
        }
        let host_handlers: HashSet<String> = opts.host_handlers.iter().cloned().collect();
        let mut names: Vec<String> = registry.names();
        names.extend(host_handlers.iter().cloned());
        names.sort();
        names.dedup();
        let events = opts.events.then(|| engine.subscribe());
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let registry = Arc::new(registry);
        let claim = Claim {
            worker_id: opts.worker_id.clone(),
            max: 0,
            handlers: opts.only_registered.then_some(names),
        };
        let concurrency = opts.concurrency.max(1);
        let n = opts
            .lanes
            .unwrap_or_else(|| engine.default_lanes())
            .clamp(1, concurrency);
        let owners: Owners = (n > 1).then(Default::default);
        let shared = Arc::new(LaneShare {
            flying: Mutex::new(vec![Vec::new(); n]),
            ..Default::default()
        });
        let mut msgs = Vec::with_capacity(n);
        let mut lanes = Vec::with_capacity(n);
        for lane in 0..n {
            // Lane `lane` holds its share of the slots (the first ones take the remainders).
            let share = |total: usize| total / n + usize::from(lane < total % n);
            let (msgs_tx, msgs_rx) = mpsc::unbounded_channel();
            msgs.push(msgs_tx.clone());
            lanes.push(DriverLoop {
                claim: claim.clone(),
                engine: engine.clone(),
                registry: registry.clone(),
                host_handlers: host_handlers.clone(),
                opts: HostOptions {
                    concurrency: share(concurrency),
                    prefetch: opts.prefetch.map(share),
                    ..opts.clone()
                },
                msgs_tx,
                msgs_rx,
                jobs_tx: jobs_tx.clone(),
                stop_rx: stop_rx.clone(),
                lane,
                owners: owners.clone(),
                pace: Pace::default(),
                share: shared.clone(),
            });
        }
        let driver = HostDriver {
            msgs,
            owners,
            jobs: tokio::sync::Mutex::new(jobs_rx),
            events: Mutex::new(events),
            stop,
            task: tokio::sync::Mutex::new(None),
        };
        (driver, Lanes(lanes))
    }

    pub(crate) fn start_with_stop(
        engine: Engine,
        registry: Registry,
        opts: HostOptions,
        stop: ShutdownHandle,
        stop_rx: watch::Receiver<bool>,
    ) -> HostDriver {
        let (mut driver, lanes) = Self::build(engine, registry, opts, stop, stop_rx);
        let (tx, rx) = oneshot::channel();
        let fut = async move {
            let _ = tx.send(lanes.run().await);
        };
        let rt = tokio::runtime::Handle::current();
        match rt.runtime_flavor() {
            // The loop runs on a thread of its own: on SQLite its statements (and fsyncs) run
            // on the calling thread, and must not hold up the runtime's workers, which run the
            // driver's own handlers and the PostgreSQL listener.
            tokio::runtime::RuntimeFlavor::MultiThread => {
                std::thread::Builder::new()
                    .name("tasker-driver".into())
                    .spawn(move || rt.block_on(fut))
                    .expect("spawn the driver thread");
            }
            _ => {
                tokio::spawn(fut);
            }
        }
        driver.task = tokio::sync::Mutex::new(Some(rx));
        driver
    }

    /// Runs the loop in the caller's task to the end (a host with no handlers of its own: the
    /// Rust [`crate::Worker`]).
    pub(crate) async fn run_inline(
        engine: Engine,
        registry: Registry,
        opts: HostOptions,
        stop: ShutdownHandle,
        stop_rx: watch::Receiver<bool>,
    ) -> Result<RunStats> {
        let (_driver, lanes) = Self::build(engine, registry, opts, stop, stop_rx);
        lanes.run().await
    }

    /// Waits up to `wait` for jobs to start (all that are ready, at least one) or for the run to
    /// end; also returns the events since the last call.
    pub async fn next(&self, wait: Duration) -> HostBatch {
        let mut batch = HostBatch::default();
        {
            let mut rx = self.jobs.lock().await;
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(j)) => {
                    batch.jobs.push(j);
                    while let Ok(j) = rx.try_recv() {
                        batch.jobs.push(j);
                    }
                }
                Ok(None) => batch.done = true,
                Err(_) => {}
            }
        }
        batch.events = self.drain_events();
        batch
    }

    /// Events since the last call (when [`HostOptions::events`]).
    pub fn drain_events(&self) -> Vec<Arc<Event>> {
        match self.events.lock().unwrap().as_mut() {
            Some(rx) => drain_events(rx),
            None => Vec::new(),
        }
    }

    /// The handler of this job has started: its timeout counts from now.
    pub fn started(&self, key: JobKey) {
        if let Some(lane) = self.lane_of(key, false) {
            let _ = self.msgs[lane].send(Msg::Started(key));
        }
    }

    /// The handler of this job has finished. An outcome for a job the driver no longer holds
    /// (it timed out, or was reported at shutdown) is ignored.
    pub fn finished(&self, key: JobKey, outcome: Outcome) {
        if let Some(lane) = self.lane_of(key, true) {
            let _ = self.msgs[lane].send(Msg::Finished(key, outcome, None));
        }
    }

    /// The lane holding this job (None: no lane holds it any more).
    fn lane_of(&self, key: JobKey, last: bool) -> Option<usize> {
        match &self.owners {
            None => Some(0),
            Some(o) => {
                let mut o = o.lock().unwrap();
                if last {
                    o.remove(&key)
                } else {
                    o.get(&key).copied()
                }
            }
        }
    }

    /// Stops claiming; the run ends once the jobs held are reported (see the module docs).
    pub fn shutdown(&self) {
        self.stop.shutdown();
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Waits for the run to end and returns what it did. Cancel-safe: dropping the future
    /// leaves the run going and a later call waits again. After it has answered once, a
    /// further call answers [`Error::Shutdown`].
    pub async fn join(&self) -> Result<RunStats> {
        let mut g = self.task.lock().await;
        let Some(rx) = g.as_mut() else {
            return Err(Error::Shutdown);
        };
        let r = rx.await.unwrap_or_else(|_| {
            Err(Error::Internal(
                "the worker loop stopped without an answer (it panicked)".into(),
            ))
        });
        *g = None;
        r
    }
}

/// Every event waiting in `rx`, oldest first; a subscriber too slow for the channel gets an
/// `events.lagged` marker in place of what it missed.
pub fn drain_events(rx: &mut broadcast::Receiver<Arc<Event>>) -> Vec<Arc<Event>> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push(e),
            Err(broadcast::error::TryRecvError::Lagged(n)) => out.push(Arc::new(Event::lagged(n))),
            Err(_) => return out,
        }
    }
}

/// A job the driver holds while its handler runs (or waits to start on the host).
struct Running {
    key: JobKey,
    /// When the handler started (None: handed to the host, not started yet).
    started: Option<Instant>,
    /// Enforced here for host-run jobs; [`handler::execute`] enforces it for the driver's own.
    timeout: Option<Duration>,
    /// The driver's own task running the handler.
    abort: Option<AbortHandle>,
    /// The handler's name, kept when the engine records metrics (step durations).
    handler: Option<String>,
}

/// How far ahead an adaptive prefetch claims: the jobs that would start within this time at
/// the handlers' recent pace (see [`Pace::prefetch`]).
pub const PREFETCH_HORIZON: Duration = Duration::from_millis(50);

/// The recent run time of a lane's handlers (a moving average, in nanoseconds; 0 before the
/// first one finished).
#[derive(Default)]
struct Pace(std::sync::atomic::AtomicU64);

impl Pace {
    fn observe(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let ns = (took.as_nanos() as u64).max(1);
        let old = self.0.load(Relaxed);
        // One writer (the lane's own loop): a plain load and store.
        self.0
            .store(if old == 0 { ns } else { old - old / 8 + ns / 8 }, Relaxed);
    }

    /// Jobs to claim ahead of `concurrency` free slots: as many as would start within
    /// [`PREFETCH_HORIZON`], at least twice and at most ten times `concurrency`. Fast handlers
    /// get large batches (fewer transactions per step); slow ones claim no more than before.
    fn prefetch(&self, concurrency: usize) -> usize {
        let ns = self.0.load(std::sync::atomic::Ordering::Relaxed);
        if ns == 0 {
            return 2 * concurrency;
        }
        let ahead = (concurrency as u128 * PREFETCH_HORIZON.as_nanos() / ns as u128) as usize;
        ahead.clamp(2 * concurrency, 10 * concurrency)
    }
}

/// What a worker's lanes share.
#[derive(Default)]
struct LaneShare {
    /// Rung when a lane ends.
    ended: tokio::sync::Notify,
    /// Rung when a lane's cycle lands.
    landed: tokio::sync::Notify,
    /// The tasks of each lane's cycle in flight.
    flying: Mutex<Vec<Vec<i64>>>,
}

/// How long outcomes wait for another lane's cycle on their tasks to land (then they go
/// anyway, and a plan made stale is run the general way).
const HOLD_MAX: Duration = Duration::from_millis(50);

impl LaneShare {
    /// Whether another lane's cycle in flight changes one of these outcomes' tasks.
    fn collides(&self, lane: usize, reports: &[Report]) -> bool {
        let flying = self.flying.lock().unwrap();
        flying.iter().enumerate().any(|(i, tasks)| {
            i != lane && !tasks.is_empty() && reports.iter().any(|r| tasks.contains(&r.key.task_id))
        })
    }

    fn set_flying(&self, lane: usize, tasks: Vec<i64>) {
        self.flying.lock().unwrap()[lane] = tasks;
    }
}

/// Which lane holds each job handed to the host (None with one lane).
type Owners = Option<Arc<Mutex<HashMap<JobKey, usize>>>>;

/// A worker's lanes, run side by side on one task.
struct Lanes(Vec<DriverLoop>);

impl Lanes {
    /// Runs every lane to its end and adds up what they did. The first lane to fail ends the
    /// run (the others are dropped: like a failed single loop, the jobs they held return at
    /// lease expiry).
    async fn run(self) -> Result<RunStats> {
        let mut lanes = self.0;
        if lanes.len() == 1 {
            return lanes.pop().expect("one lane").run_instrumented().await;
        }
        let all = futures_util::future::try_join_all(lanes.into_iter().map(|l| {
            let share = l.share.clone();
            async move {
                let r = l.run_instrumented().await;
                // A lane that found the run over wakes the others, which may be asleep
                // waiting for work it was finishing.
                share.ended.notify_waiters();
                r
            }
        }))
        .await?;
        Ok(all.into_iter().fold(RunStats::default(), |a, b| RunStats {
            completed: a.completed + b.completed,
            failed: a.failed + b.failed,
            stale: a.stale + b.stale,
            cycles: a.cycles + b.cycles,
        }))
    }
}

struct DriverLoop {
    engine: Engine,
    registry: Arc<Registry>,
    host_handlers: HashSet<String>,
    opts: HostOptions,
    claim: Claim,
    msgs_tx: mpsc::UnboundedSender<Msg>,
    msgs_rx: mpsc::UnboundedReceiver<Msg>,
    jobs_tx: mpsc::UnboundedSender<Job>,
    stop_rx: watch::Receiver<bool>,
    lane: usize,
    owners: Owners,
    pace: Pace,
    share: Arc<LaneShare>,
}

/// The outcomes gathered for the next transaction.
#[derive(Default)]
struct Pending {
    reports: Vec<Report>,
    first: Option<Instant>,
}

impl Pending {
    fn push(&mut self, key: JobKey, outcome: Outcome) {
        self.first.get_or_insert_with(Instant::now);
        self.reports.push(Report { key, outcome });
    }
}

const DB_BACKOFF_MIN: Duration = Duration::from_millis(50);
const DB_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl DriverLoop {
    fn on_msg(&self, m: Msg, running: &mut HashMap<i64, Running>, out: &mut Pending) {
        match m {
            Msg::Started(key) => {
                if let Some(r) = running.get_mut(&key.step_id) {
                    if r.key == key && r.started.is_none() {
                        r.started = Some(Instant::now());
                    }
                }
            }
            Msg::Finished(key, outcome, ran) => {
                if running.get(&key.step_id).is_some_and(|r| r.key == key) {
                    let r = running.remove(&key.step_id).expect("present");
                    if let Some(took) = ran.or_else(|| r.started.map(|s| s.elapsed())) {
                        self.pace.observe(took);
                    }
                    if let (Some(handler), Some(started)) = (r.handler, r.started) {
                        let outcome = match &outcome {
                            Outcome::Complete(_) => "complete",
                            Outcome::Failed(_) => "failed",
                        };
                        metrics::histogram!(
                            "tasker_step_duration_seconds",
                            "handler" => handler,
                            "outcome" => outcome
                        )
                        .record(started.elapsed().as_secs_f64());
                    }
                    debug!(
                        task_id = key.task_id,
                        step_id = key.step_id,
                        ok = matches!(outcome, Outcome::Complete(_)),
                        "step finished"
                    );
                    out.push(key, outcome);
                }
            }
        }
    }

    /// Starts a job: in the driver when its registry has the handler (or nobody has it), else
    /// on the host.
    fn dispatch(&self, job: Job, running: &mut HashMap<i64, Running>, out: &mut Pending) {
        let key = job.key;
        let handler = self.engine.metrics_on().then(|| job.handler.clone());
        let own = self.registry.get(&job.handler);
        if own.is_none() && self.host_handlers.contains(&job.handler) {
            let timeout = job.timeout;
            if let Some(o) = &self.owners {
                o.lock().unwrap().insert(key, self.lane);
            }
            if self.jobs_tx.send(job).is_err() {
                // The host is gone: give the attempt back.
                out.push(key, Outcome::Failed(StepFailure::worker_shutdown(false)));
                return;
            }
            running.insert(
                key.step_id,
                Running {
                    key,
                    started: None,
                    timeout,
                    abort: None,
                    handler,
                },
            );
            return;
        }
        let tx = self.msgs_tx.clone();
        let span = tracing::debug_span!("tasker.step", task_id = key.task_id, step = %job.step_name, handler = %job.handler, attempt = key.attempt);
        crate::telemetry::step_of_task(&span, key.task_id, job.task_created_at_ms);
        let handle = tokio::spawn(
            async move {
                let t0 = Instant::now();
                let outcome = handler::execute(own, job).await;
                let _ = tx.send(Msg::Finished(key, outcome, Some(t0.elapsed())));
            }
            .instrument(span),
        );
        running.insert(
            key.step_id,
            Running {
                key,
                started: Some(Instant::now()),
                timeout: None,
                abort: Some(handle.abort_handle()),
                handler,
            },
        );
    }

    /// The host's outcome for this job will be ignored: no lane holds it any more.
    fn forget(&self, key: JobKey) {
        if let Some(o) = &self.owners {
            o.lock().unwrap().remove(&key);
        }
    }

    /// Fails host-run jobs past their timeout; returns the next deadline.
    fn expire_timeouts(
        &self,
        running: &mut HashMap<i64, Running>,
        out: &mut Pending,
    ) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for r in running.values() {
            if let (Some(s), Some(t)) = (r.started, r.timeout) {
                let due = s + t;
                if due <= now {
                    expired.push((r.key, t));
                } else {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
        }
        for (key, t) in expired {
            running.remove(&key.step_id);
            self.forget(key);
            out.push(key, Outcome::Failed(StepFailure::timeout(t)));
        }
        next
    }

    async fn run_instrumented(self) -> Result<RunStats> {
        let span =
            info_span!("tasker.worker", worker = %self.opts.worker_id, mode = ?self.opts.mode);
        self.run().instrument(span).await
    }

    async fn run(mut self) -> Result<RunStats> {
        let engine = self.engine.clone();
        let opts = self.opts.clone();
        let concurrency = opts.concurrency.max(1);
        let handlers = self.claim.handlers.clone();
        let mut running: HashMap<i64, Running> = HashMap::new();
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut out = Pending::default();
        let mut stats = RunStats::default();
        let heartbeat_every = (engine.options().lease / 3).max(Duration::from_millis(50));
        let mut last_heartbeat = Instant::now();
        let mut db_backoff = DB_BACKOFF_MIN;
        let mut stopping_since: Option<Instant> = None;
        // Whether a claim may find something: false after a claim came back short, true again
        // when woken (new work announced, a backoff or lease due).
        let mut work_maybe = true;
        let mut armed = Box::pin(engine.work_notified());
        armed.as_mut().enable();

        loop {
            while let Ok(m) = self.msgs_rx.try_recv() {
                self.on_msg(m, &mut running, &mut out);
            }
            if stopping_since.is_none() && *self.stop_rx.borrow() {
                stopping_since = Some(Instant::now());
                // Jobs not started yet go back at once, their attempt given back.
                for j in queue.drain(..) {
                    out.push(j.key, Outcome::Failed(StepFailure::worker_shutdown(false)));
                }
            }
            let next_deadline = self.expire_timeouts(&mut running, &mut out);
            if stopping_since.is_none() {
                while running.len() < concurrency {
                    let Some(job) = queue.pop_front() else { break };
                    self.dispatch(job, &mut running, &mut out);
                }
            }
            let outstanding = running.len() + queue.len();
            let depth = concurrency
                + opts
                    .prefetch
                    .unwrap_or_else(|| self.pace.prefetch(concurrency));
            let room = if stopping_since.is_some() {
                0
            } else {
                depth.saturating_sub(outstanding)
            };

            if !out.reports.is_empty() {
                // Gather: let the other claimed steps finish so one transaction records them
                // all, for at most `batch_window` after the first outcome arrived.
                let waited = out.first.map(|t| t.elapsed()).unwrap_or_default();
                if !running.is_empty() && waited < opts.batch_window {
                    tokio::select! {
                        m = self.msgs_rx.recv() => if let Some(m) = m { self.on_msg(m, &mut running, &mut out) },
                        _ = tokio::time::sleep(opts.batch_window - waited) => {}
                    }
                    continue;
                }
                // Another lane's cycle in flight changes a task of these outcomes: wait for it
                // to land, so this cycle is planned from the rows it leaves (else the plan is
                // refused and the cycle runs the general way, several round trips).
                if self.owners.is_some() && waited < HOLD_MAX {
                    let share = self.share.clone();
                    let landed = share.landed.notified();
                    tokio::pin!(landed);
                    landed.as_mut().enable();
                    if share.collides(self.lane, &out.reports) {
                        tokio::select! {
                            m = self.msgs_rx.recv() => if let Some(m) = m { self.on_msg(m, &mut running, &mut out) },
                            _ = &mut landed => {}
                            _ = tokio::time::sleep(HOLD_MAX - waited) => {}
                        }
                        continue;
                    }
                }
            }
            if !out.reports.is_empty() || (room > 0 && work_maybe) {
                // New work announced since the last claim came back short?
                if !work_maybe && armed.as_mut().now_or_never().is_some() {
                    work_maybe = true;
                    armed = Box::pin(engine.work_notified());
                    armed.as_mut().enable();
                }
                let claim = (room > 0).then(|| Claim {
                    max: room,
                    ..self.claim.clone()
                });
                if claim.is_some() {
                    // Arm before claiming: work announced after this claim's snapshot wakes us.
                    armed = Box::pin(engine.work_notified());
                    armed.as_mut().enable();
                }
                let lanes = self.owners.is_some();
                if lanes {
                    let mut tasks: Vec<i64> = out.reports.iter().map(|r| r.key.task_id).collect();
                    tasks.sort_unstable();
                    tasks.dedup();
                    self.share.set_flying(self.lane, tasks);
                }
                // Nothing was claimable at the last claim and no work was announced since: the
                // claim runs only if these outcomes make a step claimable.
                let result = engine
                    .report_with(&out.reports, claim.as_ref(), !work_maybe)
                    .await;
                if lanes {
                    self.share.set_flying(self.lane, Vec::new());
                    self.share.landed.notify_waiters();
                }
                match result {
                    Ok(cycle) => {
                        stats.cycles += 1;
                        db_backoff = DB_BACKOFF_MIN;
                        for r in &out.reports {
                            match r.outcome {
                                Outcome::Complete(_) => stats.completed += 1,
                                Outcome::Failed(_) => stats.failed += 1,
                            }
                        }
                        stats.stale += cycle.stale.len() as u64;
                        out = Pending::default();
                        work_maybe = room > 0 && cycle.jobs.len() >= room;
                        queue.extend(cycle.jobs);
                    }
                    Err(e) if e.is_transient() => {
                        // Keep the outcomes: they are retried until the database answers (a
                        // report applies only to the attempt it names, so a retry of one that
                        // did commit is ignored). Nothing is dropped.
                        warn!(error = %e, pending = out.reports.len(), "database unavailable; retrying");
                        self.pause(&mut db_backoff, &mut running, &mut out).await;
                    }
                    Err(e) => return Err(e),
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
                if since.elapsed() >= opts.shutdown_grace {
                    for (_, r) in running.drain() {
                        if let Some(a) = &r.abort {
                            a.abort();
                        }
                        self.forget(r.key);
                        out.push(
                            r.key,
                            Outcome::Failed(StepFailure::worker_shutdown(r.started.is_some())),
                        );
                    }
                    continue;
                }
                let left = opts.shutdown_grace - since.elapsed();
                tokio::select! {
                    m = self.msgs_rx.recv() => if let Some(m) = m { self.on_msg(m, &mut running, &mut out) },
                    _ = tokio::time::sleep(left.min(Duration::from_millis(50))) => {}
                }
                continue;
            }
            // Idle (nothing held, nothing to claim): a task created in this process from now
            // on is claimed for us in its creating transaction (the engine's hand-off),
            // sparing a wake-up and a claim. A worker still running jobs claims at its next
            // cycle anyway.
            // Armed before looking whether the run is over: another lane that ends meanwhile
            // wakes us.
            let share = self.share.clone();
            let woken = share.ended.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut offer = (outstanding == 0 && room > 0 && !work_maybe).then(|| {
                engine.offer(Claim {
                    max: room,
                    ..self.claim.clone()
                })
            });
            let finished = match opts.mode {
                RunMode::UntilTask(id) => engine.get_task_state(id).await.map(|s| s.is_terminal()),
                RunMode::UntilIdle if outstanding == 0 => engine.is_idle(handlers.as_deref()).await,
                _ => Ok(false),
            };
            if !matches!(finished, Ok(false)) {
                // Not going to sleep: take the offer back; jobs a creation claimed with it
                // meanwhile are this run's (released below if the run is ending).
                if let Some(t) = offer.take() {
                    queue.extend(t.withdraw().await);
                }
            }
            match finished {
                Ok(true) if opts.mode == RunMode::UntilIdle => {
                    if queue.is_empty() {
                        return Ok(stats);
                    }
                    continue;
                }
                Ok(true) => {
                    stopping_since = Some(Instant::now());
                    for j in queue.drain(..) {
                        out.push(j.key, Outcome::Failed(StepFailure::worker_shutdown(false)));
                    }
                    continue;
                }
                Ok(false) => {}
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "database unavailable; retrying");
                    self.pause(&mut db_backoff, &mut running, &mut out).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Nothing to record and nothing to claim: sleep until a handler finishes or starts,
            // new work is announced, a backoff elapses, a lease may have expired, a timeout is
            // due, or we are told to stop.
            let mut nap = if room == 0 || outstanding > 0 {
                heartbeat_every
            } else {
                engine
                    .time_to_next_work(handlers.as_deref())
                    .await
                    .unwrap_or(Duration::from_millis(100))
                    .min(heartbeat_every)
            };
            if let Some(d) = next_deadline {
                nap = nap.min(d.saturating_duration_since(Instant::now()));
            }
            let handed = tokio::select! {
                m = self.msgs_rx.recv() => { if let Some(m) = m { self.on_msg(m, &mut running, &mut out) } None },
                _ = &mut armed => {
                    work_maybe = true;
                    armed = Box::pin(engine.work_notified());
                    armed.as_mut().enable();
                    None
                }
                jobs = async { offer.as_mut().expect("offered").delivered().await }, if offer.is_some() => {
                    offer = None;
                    Some(jobs)
                }
                _ = tokio::time::sleep(nap) => { work_maybe = true; None }
                _ = self.stop_rx.changed() => None,
                _ = &mut woken => None,
            };
            // Woken otherwise: take the offer back, or what a creation claimed with it.
            let handed = match offer.take() {
                Some(ticket) => Some(ticket.withdraw().await),
                None => handed,
            };
            if let Some(jobs) = handed {
                if jobs.len() >= room {
                    work_maybe = true;
                }
                queue.extend(jobs);
            }
        }
    }

    /// Waits out a database outage step (doubling up to 5 s) while still taking outcomes in.
    async fn pause(
        &mut self,
        backoff: &mut Duration,
        running: &mut HashMap<i64, Running>,
        out: &mut Pending,
    ) {
        let until = tokio::time::Instant::now() + *backoff;
        *backoff = (*backoff * 2).min(DB_BACKOFF_MAX);
        loop {
            tokio::select! {
                m = self.msgs_rx.recv() => match m {
                    Some(m) => self.on_msg(m, running, out),
                    None => { tokio::time::sleep_until(until).await; return; }
                },
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }
}
