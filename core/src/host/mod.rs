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
//!
//! Files: this one is the driver's API; `lane.rs` the loop of one lane (its state and phases),
//! `lanes.rs` what a worker's lanes share, `pace.rs` the adaptive prefetch, `surface.rs` the
//! engine calls every binding makes in the same shape (written once), `worker.rs` the Rust
//! host ([`crate::Worker`]).

mod lane;
mod lanes;
mod pace;
pub mod surface;
pub mod worker;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::handler::Registry;
use crate::protocol::{Claim, Job, JobKey, Outcome};
use lane::{Lane, LaneSetup};
use lanes::{LaneShare, Owners};
pub use pace::PREFETCH_HORIZON;
pub use surface::{DriverSpec, HostJob, TaskListQuery};

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
        let setup = Arc::new(LaneSetup {
            engine,
            registry: Arc::new(registry),
            host_handlers,
            claim,
            jobs_tx,
            stop_rx,
            owners: owners.clone(),
            share: Arc::new(LaneShare {
                flying: Mutex::new(vec![Vec::new(); n]),
                ..Default::default()
            }),
        });
        let mut msgs = Vec::with_capacity(n);
        let mut lanes = Vec::with_capacity(n);
        for lane in 0..n {
            // Lane `lane` holds its share of the slots (the first ones take the remainders).
            let share = |total: usize| total / n + usize::from(lane < total % n);
            let (msgs_tx, msgs_rx) = mpsc::unbounded_channel();
            msgs.push(msgs_tx.clone());
            let opts = HostOptions {
                concurrency: share(concurrency),
                prefetch: opts.prefetch.map(share),
                ..opts.clone()
            };
            lanes.push(Lane::new(setup.clone(), lane, opts, (msgs_tx, msgs_rx)));
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

/// A worker's lanes, run side by side on one task.
struct Lanes(Vec<Lane>);

impl Lanes {
    /// Runs every lane to its end and adds up what they did. The first lane to fail ends the
    /// run (the others are dropped: like a failed single loop, the jobs they held return at
    /// lease expiry).
    async fn run(self) -> Result<RunStats> {
        let Some(engine) = self.0.first().map(|l| l.engine().clone()) else {
            return Ok(RunStats::default());
        };
        // Every worker fires schedules while it runs ([`Engine::run_schedules`]; no leader: a
        // tick makes one task however many processes fire it).
        // And prunes old tasks when the engine has a retention setting.
        let ticker = engine.run_schedules();
        let pruner = engine.run_retention();
        tokio::pin!(ticker, pruner);
        tokio::select! {
            r = self.run_lanes() => r,
            _ = &mut ticker => unreachable!("the schedule loop never ends"),
            _ = &mut pruner => unreachable!("the retention loop never ends"),
        }
    }

    async fn run_lanes(self) -> Result<RunStats> {
        let mut lanes = self.0;
        if lanes.len() == 1 {
            return lanes.pop().expect("one lane").run_instrumented().await;
        }
        // The lanes start together: on connections ready for their first cycles (a lane
        // that starts late finds the work taken, and what a lane holds stays with it). A
        // database not answering yet is the lanes' to wait out.
        if let Err(e) = lanes[0].engine().warm_store(lanes.len()).await {
            tracing::debug!(error = %e, "could not warm the store's connections");
        }
        let all = futures_util::future::try_join_all(lanes.into_iter().map(|l| {
            let share = l.share();
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
