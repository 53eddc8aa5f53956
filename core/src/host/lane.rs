//! One lane of a worker: a report-and-claim loop holding its share of the slots. Its state is
//! the fields of [`Lane`]; each turn of [`Lane::run`] goes through the phases, one method
//! each:
//!
//! 1. **intake**: outcomes and starts from the host and the driver's own handlers; a shutdown
//!    noticed (jobs not started are handed back at once);
//! 2. **timeouts** of running jobs (counted from their start);
//! 3. **dispatch** of claimed jobs into free slots (the driver's own handlers run here, the
//!    host's are handed over);
//! 4. **gather**: the first outcome waits up to the batch window for the others, and for
//!    another lane's cycle on the same task to land;
//! 5. **cycle**: outcomes recorded and the next jobs claimed, in one transaction; a database
//!    outage waited out with the outcomes kept;
//! 6. **heartbeats** for every job held;
//! 7. **drain** while shutting down: running jobs get the grace period, then are reported;
//! 8. **idle**: nothing to record or claim: offer the slots to creations of this process,
//!    tell whether the run is over, sleep until something happens.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{debug, info_span, warn, Instrument};

use super::lanes::{LaneShare, Owners, HOLD_MAX};
use super::pace::Pace;
use super::{HostOptions, Msg, RunMode, RunStats};
use crate::engine::Engine;
use crate::error::Result;
use crate::handler::{self, Registry};
use crate::protocol::{Claim, Job, JobKey, Outcome, Report, StepFailure};

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

/// What a lane shares with the others of its worker and with its driver.
pub(super) struct LaneSetup {
    pub engine: Engine,
    pub registry: Arc<Registry>,
    pub host_handlers: HashSet<String>,
    /// The claim of every cycle (its `max` set each time).
    pub claim: Claim,
    pub jobs_tx: mpsc::UnboundedSender<Job>,
    pub stop_rx: watch::Receiver<bool>,
    pub owners: Owners,
    pub share: Arc<LaneShare>,
}

/// One lane (see the module docs).
pub(super) struct Lane {
    setup: Arc<LaneSetup>,
    engine: Engine,
    opts: HostOptions,
    lane: usize,
    msgs_tx: mpsc::UnboundedSender<Msg>,
    msgs_rx: mpsc::UnboundedReceiver<Msg>,
    stop_rx: watch::Receiver<bool>,
    pace: Pace,
    running: HashMap<i64, Running>,
    queue: VecDeque<Job>,
    out: Pending,
    stats: RunStats,
    heartbeat_every: Duration,
    last_heartbeat: Instant,
    db_backoff: Duration,
    stopping_since: Option<Instant>,
    /// Whether a claim may find something: false after a claim came back short, true again
    /// when woken (new work announced, a backoff or lease due).
    work_maybe: bool,
    /// Work announced in this process (armed before each claim).
    armed: Pin<Box<OwnedNotified>>,
}

/// What a turn's idle phase decided.
enum Idle {
    /// Go round again.
    Again,
    /// The run is over.
    Done,
}

impl Lane {
    pub(super) fn new(
        setup: Arc<LaneSetup>,
        lane: usize,
        opts: HostOptions,
        msgs: (mpsc::UnboundedSender<Msg>, mpsc::UnboundedReceiver<Msg>),
    ) -> Lane {
        let engine = setup.engine.clone();
        let heartbeat_every = (engine.options().lease / 3).max(Duration::from_millis(50));
        let armed = arm(&engine);
        Lane {
            engine,
            opts,
            lane,
            msgs_tx: msgs.0,
            msgs_rx: msgs.1,
            stop_rx: setup.stop_rx.clone(),
            pace: Pace::default(),
            running: HashMap::new(),
            queue: VecDeque::new(),
            out: Pending::default(),
            stats: RunStats::default(),
            heartbeat_every,
            last_heartbeat: Instant::now(),
            db_backoff: DB_BACKOFF_MIN,
            stopping_since: None,
            work_maybe: true,
            armed,
            setup,
        }
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(super) fn share(&self) -> Arc<LaneShare> {
        self.setup.share.clone()
    }

    pub(super) async fn run_instrumented(self) -> Result<RunStats> {
        let span =
            info_span!("tasker.worker", worker = %self.opts.worker_id, mode = ?self.opts.mode);
        self.run().instrument(span).await
    }

    async fn run(mut self) -> Result<RunStats> {
        loop {
            self.intake();
            let next_deadline = self.expire_timeouts();
            if self.stopping_since.is_none() {
                self.dispatch_queued();
            }
            let room = self.room();
            if !self.out.reports.is_empty() && self.gather().await {
                continue;
            }
            if !self.out.reports.is_empty() || (room > 0 && self.work_maybe) {
                self.cycle(room).await?;
                continue;
            }
            self.heartbeats().await;
            if self.stopping_since.is_some() {
                if self.drain().await {
                    return Ok(self.stats);
                }
                continue;
            }
            if let Idle::Done = self.idle(room, next_deadline).await? {
                return Ok(self.stats);
            }
        }
    }

    fn concurrency(&self) -> usize {
        self.opts.concurrency.max(1)
    }

    fn outstanding(&self) -> usize {
        self.running.len() + self.queue.len()
    }

    /// Free slots to claim for: `concurrency` running plus the prefetch, less what is held.
    fn room(&self) -> usize {
        if self.stopping_since.is_some() {
            return 0;
        }
        let c = self.concurrency();
        let depth = c + self.opts.prefetch.unwrap_or_else(|| self.pace.prefetch(c));
        depth.saturating_sub(self.outstanding())
    }

    /// Phase 1: what the host and the driver's handlers sent; a shutdown noticed.
    fn intake(&mut self) {
        while let Ok(m) = self.msgs_rx.try_recv() {
            self.on_msg(m);
        }
        if self.stopping_since.is_none() && *self.stop_rx.borrow() {
            self.stop_now();
        }
    }

    /// Stops claiming; jobs not started yet go back at once, their attempt given back.
    fn stop_now(&mut self) {
        self.stopping_since = Some(Instant::now());
        for j in self.queue.drain(..) {
            self.out
                .push(j.key, Outcome::Failed(StepFailure::worker_shutdown(false)));
        }
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Started(key) => {
                if let Some(r) = self.running.get_mut(&key.step_id) {
                    if r.key == key && r.started.is_none() {
                        r.started = Some(Instant::now());
                    }
                }
            }
            Msg::Finished(key, outcome, ran) => {
                if !self.running.get(&key.step_id).is_some_and(|r| r.key == key) {
                    return;
                }
                let r = self.running.remove(&key.step_id).expect("present");
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
                self.out.push(key, outcome);
            }
        }
    }

    /// Waits for the next message, at most `d`.
    async fn wait_msg(&mut self, d: Duration) {
        tokio::select! {
            m = self.msgs_rx.recv() => if let Some(m) = m { self.on_msg(m) },
            _ = tokio::time::sleep(d) => {}
        }
    }

    /// Phase 2: fails host-run jobs past their timeout; returns the next deadline.
    fn expire_timeouts(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for r in self.running.values() {
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
            self.running.remove(&key.step_id);
            self.forget(key);
            self.out.push(key, Outcome::Failed(StepFailure::timeout(t)));
        }
        next
    }

    /// Phase 3: claimed jobs into free slots.
    fn dispatch_queued(&mut self) {
        while self.running.len() < self.concurrency() {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            self.dispatch(job);
        }
    }

    /// Starts a job: in the driver when its registry has the handler (or nobody has it), else
    /// on the host.
    fn dispatch(&mut self, job: Job) {
        self.engine.announce_handle(&job);
        let key = job.key;
        let handler = self.engine.metrics_on().then(|| job.handler.clone());
        let own = self.setup.registry.get(&job.handler);
        if own.is_none() && self.setup.host_handlers.contains(&job.handler) {
            let timeout = job.timeout;
            if let Some(o) = &self.setup.owners {
                o.lock().unwrap().insert(key, self.lane);
            }
            if self.setup.jobs_tx.send(job).is_err() {
                // The host is gone: give the attempt back.
                self.out
                    .push(key, Outcome::Failed(StepFailure::worker_shutdown(false)));
                return;
            }
            let r = Running {
                key,
                started: None,
                timeout,
                abort: None,
                handler,
            };
            self.running.insert(key.step_id, r);
            return;
        }
        let tx = self.msgs_tx.clone();
        let span = tracing::debug_span!("tasker.step", task_id = key.task_id, step = %job.step_name, handler = %job.handler, attempt = key.attempt);
        crate::telemetry::step_of_task(&span, key.task_id, job.task_created_at_ms);
        let handle = tokio::spawn(async move {
            let t0 = Instant::now();
            // The step's span closes (and goes to the exporter) before the outcome is handed
            // over: a run that ends on this outcome and a process that exits right after it
            // then export it too.
            let outcome = handler::execute(own, job).instrument(span).await;
            let _ = tx.send(Msg::Finished(key, outcome, Some(t0.elapsed())));
        });
        let r = Running {
            key,
            started: Some(Instant::now()),
            timeout: None,
            abort: Some(handle.abort_handle()),
            handler,
        };
        self.running.insert(key.step_id, r);
    }

    /// The host's outcome for this job will be ignored: no lane holds it any more.
    fn forget(&self, key: JobKey) {
        if let Some(o) = &self.setup.owners {
            o.lock().unwrap().remove(&key);
        }
    }

    /// Phase 4: holds the outcomes back a little; true if it waited (go round again).
    async fn gather(&mut self) -> bool {
        // Let the other claimed steps finish so one transaction records them all, for at most
        // `batch_window` after the first outcome arrived.
        let waited = self.out.first.map(|t| t.elapsed()).unwrap_or_default();
        if !self.running.is_empty() && waited < self.opts.batch_window {
            self.wait_msg(self.opts.batch_window - waited).await;
            return true;
        }
        // Another lane's cycle in flight changes a task of these outcomes: wait for it to
        // land, so this cycle is planned from the rows it leaves (else the plan is refused and
        // the cycle runs the general way, several round trips).
        if self.setup.owners.is_none() || waited >= HOLD_MAX {
            return false;
        }
        let share = self.share();
        let landed = share.landed.notified();
        tokio::pin!(landed);
        landed.as_mut().enable();
        if !share.collides(self.lane, &self.out.reports) {
            return false;
        }
        tokio::select! {
            m = self.msgs_rx.recv() => if let Some(m) = m { self.on_msg(m) },
            _ = &mut landed => {}
            _ = tokio::time::sleep(HOLD_MAX - waited) => {}
        }
        true
    }

    /// Phase 5: records the outcomes and claims up to `room`, in one transaction.
    async fn cycle(&mut self, room: usize) -> Result<()> {
        // New work announced since the last claim came back short?
        if !self.work_maybe && self.armed.as_mut().now_or_never().is_some() {
            self.work_maybe = true;
            self.armed = arm(&self.engine);
        }
        let claim = (room > 0).then(|| Claim {
            max: room,
            ..self.setup.claim.clone()
        });
        if claim.is_some() {
            // Arm before claiming: work announced after this claim's snapshot wakes us.
            self.armed = arm(&self.engine);
        }
        let lanes = self.setup.owners.is_some();
        if lanes {
            let mut tasks: Vec<i64> = self.out.reports.iter().map(|r| r.key.task_id).collect();
            tasks.sort_unstable();
            tasks.dedup();
            self.setup.share.set_flying(self.lane, tasks);
        }
        // Nothing was claimable at the last claim and no work was announced since: the claim
        // runs only if these outcomes make a step claimable.
        let result = self
            .engine
            .report_with(&self.out.reports, claim.as_ref(), !self.work_maybe)
            .await;
        if lanes {
            self.setup.share.set_flying(self.lane, Vec::new());
            self.setup.share.landed.notify_waiters();
        }
        match result {
            Ok(cycle) => {
                self.stats.cycles += 1;
                self.db_backoff = DB_BACKOFF_MIN;
                for r in &self.out.reports {
                    match r.outcome {
                        Outcome::Complete(_) => self.stats.completed += 1,
                        Outcome::Failed(_) => self.stats.failed += 1,
                    }
                }
                self.stats.stale += cycle.stale.len() as u64;
                self.out = Pending::default();
                self.work_maybe = room > 0 && cycle.jobs.len() >= room;
                self.queue.extend(cycle.jobs);
                Ok(())
            }
            Err(e) if e.is_transient() => {
                // Keep the outcomes: they are retried until the database answers (a report
                // applies only to the attempt it names, so a retry of one that did commit is
                // ignored). Nothing is dropped.
                warn!(error = %e, pending = self.out.reports.len(), "database unavailable; retrying");
                self.pause().await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Phase 6: extends the leases of every job held, every `lease / 3`.
    async fn heartbeats(&mut self) {
        if self.last_heartbeat.elapsed() < self.heartbeat_every || self.outstanding() == 0 {
            return;
        }
        let keys: Vec<JobKey> = self
            .running
            .values()
            .map(|r| r.key)
            .chain(self.queue.iter().map(|j| j.key))
            .collect();
        if let Err(e) = self.engine.heartbeat(&keys).await {
            warn!(error = %e, "heartbeat failed");
        }
        self.last_heartbeat = Instant::now();
    }

    /// Phase 7, shutting down: true once nothing is held. Past the grace period the running
    /// jobs are reported as `worker_shutdown`.
    async fn drain(&mut self) -> bool {
        let since = self.stopping_since.expect("stopping");
        if self.outstanding() == 0 {
            return true;
        }
        if since.elapsed() >= self.opts.shutdown_grace {
            for (_, r) in std::mem::take(&mut self.running) {
                if let Some(a) = &r.abort {
                    a.abort();
                }
                self.forget(r.key);
                let failure = StepFailure::worker_shutdown(r.started.is_some());
                self.out.push(r.key, Outcome::Failed(failure));
            }
            return false;
        }
        let left = self.opts.shutdown_grace - since.elapsed();
        self.wait_msg(left.min(Duration::from_millis(50))).await;
        false
    }

    /// Phase 8: nothing to record and nothing to claim. A task created in this process from
    /// now on is claimed for us in its creating transaction (the engine's hand-off), sparing a
    /// wake-up and a claim; a worker still running jobs claims at its next cycle anyway.
    async fn idle(&mut self, room: usize, next_deadline: Option<Instant>) -> Result<Idle> {
        // Armed before looking whether the run is over: another lane that ends meanwhile
        // wakes us.
        let share = self.share();
        let woken = share.ended.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let idle = self.outstanding() == 0;
        let mut offer = (idle && room > 0 && !self.work_maybe).then(|| {
            self.engine.offer(Claim {
                max: room,
                ..self.setup.claim.clone()
            })
        });
        let finished = match self.opts.mode {
            RunMode::UntilTask(id) => self
                .engine
                .get_task_state(id)
                .await
                .map(|s| s.is_terminal()),
            RunMode::UntilIdle if idle => {
                let handlers = self.setup.claim.handlers.clone();
                self.engine.is_idle(handlers.as_deref()).await
            }
            _ => Ok(false),
        };
        if !matches!(finished, Ok(false)) {
            // Not going to sleep: take the offer back; jobs a creation claimed with it
            // meanwhile are this run's (released below if the run is ending).
            if let Some(t) = offer.take() {
                self.queue.extend(t.withdraw().await);
            }
        }
        match finished {
            Ok(true) if self.opts.mode == RunMode::UntilIdle => {
                return Ok(if self.queue.is_empty() {
                    Idle::Done
                } else {
                    Idle::Again
                });
            }
            Ok(true) => {
                self.stop_now();
                return Ok(Idle::Again);
            }
            Ok(false) => {}
            Err(e) if e.is_transient() => {
                warn!(error = %e, "database unavailable; retrying");
                self.pause().await;
                return Ok(Idle::Again);
            }
            Err(e) => return Err(e),
        }
        let nap = self.nap(room, next_deadline).await;
        let handed = tokio::select! {
            m = self.msgs_rx.recv() => { if let Some(m) = m { self.on_msg(m) } None }
            _ = &mut self.armed => {
                self.work_maybe = true;
                self.armed = arm(&self.engine);
                None
            }
            jobs = async { offer.as_mut().expect("offered").delivered().await }, if offer.is_some() => {
                offer = None;
                Some(jobs)
            }
            _ = tokio::time::sleep(nap) => { self.work_maybe = true; None }
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
                self.work_maybe = true;
            }
            self.queue.extend(jobs);
        }
        Ok(Idle::Again)
    }

    /// How long an idle lane sleeps: until a handler finishes or starts, new work is
    /// announced, a backoff elapses, a lease may have expired, a timeout is due, or a stop.
    async fn nap(&self, room: usize, next_deadline: Option<Instant>) -> Duration {
        let mut nap = if room == 0 || self.outstanding() > 0 {
            self.heartbeat_every
        } else {
            self.engine
                .time_to_next_work(self.setup.claim.handlers.as_deref())
                .await
                .unwrap_or(Duration::from_millis(100))
                .min(self.heartbeat_every)
        };
        if let Some(d) = next_deadline {
            nap = nap.min(d.saturating_duration_since(Instant::now()));
        }
        nap
    }

    /// Waits out a database outage step (doubling up to 5 s) while still taking outcomes in.
    async fn pause(&mut self) {
        let until = tokio::time::Instant::now() + self.db_backoff;
        self.db_backoff = (self.db_backoff * 2).min(DB_BACKOFF_MAX);
        loop {
            tokio::select! {
                m = self.msgs_rx.recv() => match m {
                    Some(m) => self.on_msg(m),
                    None => { tokio::time::sleep_until(until).await; return; }
                },
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }
}

/// A wake-up for work announced in this process from now on.
fn arm(engine: &Engine) -> Pin<Box<OwnedNotified>> {
    let mut n = Box::pin(engine.work_notify().notified_owned());
    n.as_mut().enable();
    n
}
