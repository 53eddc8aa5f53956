//! The engine: every orchestration decision lives here, one module per kind of decision.
//!
//! Hosts (the Rust [`crate::worker`], the language bindings through [`crate::host`]) speak the
//! poll/complete protocol through plain data ([`crate::protocol`]):
//!
//! 1. [`Engine::poll`] (or [`Engine::report`] with a [`Claim`]) claims ready steps as [`Job`]s,
//!    each with a lease ([`claim`]);
//! 2. the host runs the handler;
//! 3. [`Engine::report`] records [`Report`]s (results or failures) and, **in the same
//!    transaction**, marks children ready, settles the task, writes the transition rows, and
//!    claims the next jobs ([`report`], [`settle`]).
//!
//! Modules: [`options`] (how an engine is opened), [`registration`] (registering and finding
//! templates), [`create`] (task creation and the hand-off of its first steps), [`query`]
//! (snapshots, listings, waiting), [`report`] (the worker cycle, leases), [`outcome`] (what a
//! reported outcome does), [`claim`] (a claim's jobs), [`operator`] (cancel, retry, resolve),
//! [`settle`] (what a task becomes), [`decide`] (the decisions that need no database, as pure
//! functions), [`plan`] (the known rows a cycle is planned from), `tx` (the bookkeeping of
//! one write transaction: reads, the recorded plan, announcements), [`handoff`], [`watch`],
//! [`publish`] (custom events).
//!
//! Nothing here calls back into a host: events are pulled from [`Engine::subscribe`].

pub mod analytics;
mod checkpoint;
pub mod child;
mod claim;
mod create;
mod deadline;
pub mod decide;
mod event_definitions;
mod flow;
mod grow;
mod handoff;
mod operator;
mod options;
mod outcome;
mod plan;
mod publish;
mod query;
mod registration;
mod report;
pub mod retention;
mod schedule;
mod settle;
pub mod shape;
mod tx;
mod wait;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio::sync::{broadcast, Notify};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::store::{Store, StoreOptions, Wakeups};
use crate::template::TaskTemplate;

pub use crate::protocol::{Claim, Cycle, FailureKind, Job, JobKey, Outcome, Report, StepFailure};
pub use crate::store::{StateCounts, TaskFilter};
pub use analytics::Analytics;
pub use create::TaskRequest;
pub use event_definitions::EventSource;
pub use flow::TaskSelection;
pub use options::{EngineOptions, DEFAULT_URL};
pub use query::{count_by_state, StepSnapshot, TaskSnapshot, TaskSummary, TransitionEntry};
pub use registration::{Registration, TemplateSource};
pub use retention::Retention;
pub use schedule::ScheduleInfo;

#[derive(Default)]
struct Templates {
    by_id: HashMap<i64, Arc<TaskTemplate>>,
    /// (namespace, name, version) -> (revision, id) of the latest revision known here.
    ids: HashMap<(String, String, String), (i64, i64)>,
    /// id -> (revision, created_at).
    revisions: HashMap<i64, (i64, i64)>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    opts: EngineOptions,
    templates: RwLock<Templates>,
    /// Custom events defined by event definition files, by name ([`event_definitions`]).
    event_definitions: RwLock<HashMap<String, Arc<crate::events::EventDefinition>>>,
    contexts: Mutex<HashMap<i64, Arc<Value>>>,
    events: broadcast::Sender<Arc<Event>>,
    /// Woken when steps may have become claimable (new tasks, completions, retries; on
    /// PostgreSQL also NOTIFY from other processes).
    work: Arc<Notify>,
    /// Woken when a task reached a terminal state, what `wait_for_task` waits for (on
    /// PostgreSQL also in other processes). Not for other task changes: a waiter woken by a task
    /// merely starting would only read its state again (W3 did ~3.7 such reads per task).
    tasks_changed: Arc<Notify>,
    last_reap_ms: AtomicI64,
    /// When this engine last swept for finished child tasks whose parent was not told.
    last_child_sweep_ms: AtomicI64,
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Rows this engine saw at its last claims and commits, to plan cycles from.
    known: Arc<Mutex<plan::Known>>,
    /// Cycles executed as one planned statement, and plans the store refused.
    planned: [AtomicU64; 2],
    /// Idle workers' claims, for creations to claim for ([`handoff`]).
    offers: Arc<Mutex<Vec<handoff::Offer>>>,
    offer_ids: AtomicU64,
    /// Creations that claimed for an idle worker ([`Engine::handoffs`]).
    handoffs: AtomicU64,
    /// Tasks waiters of this process wait for, and how cycles finished them ([`watch`]).
    watches: watch::Watches,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.abort();
        }
    }
}

/// A handle on the engine; cheap to clone and share across tasks and threads.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.inner.store)
            .finish()
    }
}

/// Cap on contexts kept parsed in memory (contexts never change after creation).
const CONTEXT_CACHE: usize = 20_000;
/// How often (engine clock) a poll also looks for expired leases and waits.
const REAP_EVERY_MS: i64 = 500;
/// How often a poll also sweeps for finished child tasks whose parent was not told (what a
/// crash between the two commits leaves; rare, and the sweep reads the waiting steps).
const CHILD_SWEEP_EVERY_MS: i64 = 5_000;

impl Engine {
    /// Opens the database at `url` (see [`EngineOptions::url`]) with default options.
    pub async fn open(url: &str) -> Result<Engine> {
        Self::open_with(EngineOptions::default().url(url)).await
    }

    /// Opens and migrates the database.
    pub async fn open_with(opts: EngineOptions) -> Result<Engine> {
        let url = opts
            .url
            .clone()
            .or_else(|| {
                std::env::var("TASKER_DATABASE_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let work = Arc::new(Notify::new());
        let tasks_changed = Arc::new(Notify::new());
        let store = crate::store::open(
            &url,
            &StoreOptions {
                durability: opts.durability,
                schema: opts.schema.clone(),
                max_connections: opts.max_connections,
            },
        )
        .await?;
        let listener = if opts.listen {
            store.listen(Wakeups {
                work: work.clone(),
                tasks: tasks_changed.clone(),
            })
        } else {
            None
        };
        let (events, _) = broadcast::channel(opts.event_capacity.max(16));
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                clock: opts.clock.clone(),
                opts,
                templates: RwLock::default(),
                event_definitions: RwLock::default(),
                contexts: Mutex::default(),
                events,
                work,
                tasks_changed,
                last_reap_ms: AtomicI64::new(i64::MIN),
                last_child_sweep_ms: AtomicI64::new(i64::MIN),
                listener,
                known: Arc::default(),
                planned: Default::default(),
                offers: Arc::default(),
                offer_ids: AtomicU64::new(0),
                handoffs: AtomicU64::new(0),
                watches: Default::default(),
            }),
        };
        engine.refresh_templates().await?;
        engine.event_definitions().await?;
        Ok(engine)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
    }

    /// True when this engine records metrics ([`EngineOptions::metrics`]).
    pub fn metrics_on(&self) -> bool {
        self.inner.opts.metrics
    }

    /// Worker cycles this engine sent as one planned statement, and plans the database
    /// refused because a task or step had changed meanwhile (each then ran the general way):
    /// for benchmarks and tests.
    pub fn planned_cycles(&self) -> (u64, u64) {
        (
            self.inner.planned[0].load(Ordering::Relaxed),
            self.inner.planned[1].load(Ordering::Relaxed),
        )
    }

    /// How many lanes a worker runs when not told ([`crate::HostOptions::lanes`]): 2 where
    /// transactions run side by side (PostgreSQL), 1 where one writer would only queue them
    /// (SQLite).
    pub fn default_lanes(&self) -> usize {
        if self.inner.store.parallel_writers() {
            2
        } else {
            1
        }
    }

    /// Subscribes to lifecycle events (exactly one per transition, after commit).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.events.subscribe()
    }

    /// A fresh worker identity: `pid:random`.
    pub fn new_worker_id() -> String {
        format!("{}:{:08x}", std::process::id(), rand::random::<u32>())
    }

    /// The engine's clock, epoch ms (what `since` and ages are measured from).
    pub fn now_ms(&self) -> i64 {
        self.now()
    }

    pub(crate) fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_json(s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("stored JSON is invalid: {e}")))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The engine's futures are `Send`, so any async host (napi, a tokio task) can run them.
#[allow(dead_code)]
fn assert_engine_futures_are_send() {
    fn is_send<T: Send>(_: T) {}
    is_send(Engine::open_with(EngineOptions::default()));
}
