//! The engine: every orchestration decision lives here.
//!
//! Hosts (the Rust [`crate::worker`], and later the Python, Node and Ruby bindings) speak the
//! poll/complete protocol through plain data:
//!
//! 1. [`Engine::poll`] (or [`Engine::report`] with a [`Claim`]) claims ready steps as [`Job`]s,
//!    each with a lease;
//! 2. the host runs the handler;
//! 3. [`Engine::report`] records [`Report`]s (results or failures) and, **in the same
//!    transaction**, marks children ready, settles the task, writes the transition rows, and
//!    claims the next jobs.
//!
//! Nothing here calls back into a host: events are pulled from [`Engine::subscribe`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, Notify};
use tracing::{debug, debug_span, Instrument};

use crate::backoff::{retry_delay_ms, DEFAULT_MAX_SERVER_BACKOFF_SECONDS};
use crate::clock::{format_ms, Clock, SystemClock};
use crate::error::{Error, Result, TemplateError};
use crate::events::Event;
use crate::state::{StepState, TaskState};
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::{Durability, SqliteStore};
use crate::store::*;
use crate::template::{latest_version, TaskTemplate, TemplateSummary, DEFAULT_NAMESPACE};

/// The default database when none is configured: `./tasker.db`.
pub const DEFAULT_URL: &str = "sqlite://tasker.db";

/// How an engine is opened.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// `sqlite://PATH` or `sqlite::memory:`. `None`: `$TASKER_DATABASE_URL`, else [`DEFAULT_URL`].
    pub url: Option<String>,
    /// SQLite commit durability (default: fsync at every commit).
    pub durability: Durability,
    /// Selects `environments.<env>` overrides when templates are registered.
    pub environment: Option<String>,
    /// How long a claim holds a step before another worker may take it over.
    pub lease: Duration,
    /// Cap on a handler's `retry_after`.
    pub max_server_backoff_seconds: f64,
    /// Capacity of the event channel per subscriber.
    pub event_capacity: usize,
    pub clock: Arc<dyn Clock>,
    /// PostgreSQL: use (and create) this schema.
    pub schema: Option<String>,
    /// PostgreSQL: wake up on `NOTIFY` from other processes (default). Turn off behind a
    /// connection pooler that cannot LISTEN; workers then poll (at least once a second).
    pub listen: bool,
    /// PostgreSQL: connections in the pool (default 8).
    pub max_connections: Option<u32>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            url: None,
            durability: Durability::Full,
            environment: None,
            lease: Duration::from_secs(30),
            max_server_backoff_seconds: DEFAULT_MAX_SERVER_BACKOFF_SECONDS,
            event_capacity: 4096,
            clock: Arc::new(SystemClock),
            schema: None,
            listen: true,
            max_connections: None,
        }
    }
}

impl EngineOptions {
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }
}

/// A request to create a task. Everything but `name` is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskRequest {
    pub name: String,
    /// Default `default`.
    pub namespace: Option<String>,
    /// Default: the highest registered version.
    pub version: Option<String>,
    /// A JSON object (null means `{}`), validated against the template's schema.
    pub context: Value,
    pub initiator: Option<String>,
    pub source_system: Option<String>,
    pub reason: Option<String>,
    pub tags: Vec<String>,
    /// Skippable steps to resolve at creation (`resolved_manually`, results null).
    pub bypass_steps: Vec<String>,
    /// A second request with the same key returns the first task instead of creating one.
    pub idempotency_key: Option<String>,
    /// Steps of higher-priority tasks are claimed first (default 0); equal priorities go
    /// oldest first.
    pub priority: i32,
}

impl TaskRequest {
    pub fn new(name: impl Into<String>, context: Value) -> Self {
        TaskRequest {
            name: name.into(),
            context,
            ..Default::default()
        }
    }
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }
    pub fn idempotency_key(mut self, k: impl Into<String>) -> Self {
        self.idempotency_key = Some(k.into());
        self
    }
    pub fn bypass(mut self, steps: &[&str]) -> Self {
        self.bypass_steps = steps.iter().map(|s| s.to_string()).collect();
        self
    }
}

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
    pub lease_expires_at_ms: i64,
}

impl Job {
    pub fn task_id(&self) -> i64 {
        self.key.task_id
    }
    pub fn attempt(&self) -> u32 {
        self.key.attempt
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
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Complete(Value),
    Failed(StepFailure),
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

/// A task as `get_task` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSnapshot {
    pub id: i64,
    pub name: String,
    pub namespace: String,
    pub version: String,
    pub status: TaskState,
    pub context: Value,
    pub initiator: String,
    pub source_system: String,
    pub reason: String,
    pub tags: Value,
    pub bypass_steps: Value,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub steps: Vec<StepSnapshot>,
}

impl TaskSnapshot {
    pub fn step(&self, name: &str) -> Option<&StepSnapshot> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// A step inside a [`TaskSnapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct StepSnapshot {
    pub id: i64,
    pub name: String,
    pub handler: String,
    pub status: StepState,
    pub attempts: i64,
    pub max_attempts: i64,
    pub results: Value,
    /// The last failure: `{message, kind, attempt, retry_after_seconds?, detail?}`.
    pub error: Option<Value>,
    pub depends_on: Vec<String>,
    /// When a step waiting for a retry becomes claimable.
    pub next_attempt_at: Option<String>,
    pub last_attempted_at: Option<String>,
    pub completed_at: Option<String>,
    /// How long the last attempt ran, for a step that finished by running.
    pub duration_ms: Option<i64>,
}

/// One line of a task listing.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    pub id: i64,
    pub name: String,
    pub namespace: String,
    pub version: String,
    pub status: TaskState,
    pub steps_total: i64,
    pub steps_done: i64,
    pub created_at: String,
    pub completed_at: Option<String>,
}

pub use crate::store::TaskFilter;

#[derive(Default)]
struct Templates {
    by_id: HashMap<i64, Arc<TaskTemplate>>,
    ids: HashMap<(String, String, String), i64>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    opts: EngineOptions,
    templates: RwLock<Templates>,
    contexts: Mutex<HashMap<i64, Arc<Value>>>,
    events: broadcast::Sender<Arc<Event>>,
    /// Woken when steps may have become claimable (new tasks, completions, retries; on
    /// PostgreSQL also NOTIFY from other processes).
    work: Arc<Notify>,
    /// Woken when a task changed state (on PostgreSQL also in other processes).
    tasks_changed: Arc<Notify>,
    last_reap_ms: AtomicI64,
    listener: Option<tokio::task::JoinHandle<()>>,
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
/// How often (engine clock) a poll also looks for expired leases.
const REAP_EVERY_MS: i64 = 500;

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
        let mut listener = None;
        let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
            Arc::new(SqliteStore::open(&url, opts.durability).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pg = PgStore::open(
                &url,
                &PgOptions {
                    schema: opts.schema.clone(),
                    max_connections: opts.max_connections,
                },
            )
            .await?;
            if opts.listen {
                listener = Some(pg.listen(work.clone(), tasks_changed.clone()));
            }
            Arc::new(pg)
        } else {
            return Err(Error::UnsupportedUrl(url));
        };
        let (events, _) = broadcast::channel(opts.event_capacity.max(16));
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                clock: opts.clock.clone(),
                opts,
                templates: RwLock::default(),
                contexts: Mutex::default(),
                events,
                work,
                tasks_changed,
                last_reap_ms: AtomicI64::new(i64::MIN),
                listener,
            }),
        };
        engine.refresh_templates().await?;
        Ok(engine)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
    }

    /// Subscribes to lifecycle events (exactly one per transition, after commit).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.events.subscribe()
    }

    /// A fresh worker identity: `pid:random`.
    pub fn new_worker_id() -> String {
        format!("{}:{:08x}", std::process::id(), rand::random::<u32>())
    }

    // ---- templates ---------------------------------------------------------------------------

    /// Parses YAML text with the engine's environment and registers it.
    pub async fn register_template_yaml(&self, src: &str) -> Result<String> {
        let t = TaskTemplate::from_yaml(src, self.inner.opts.environment.as_deref())?;
        self.register_template(t).await
    }

    /// Reads a YAML file and registers it.
    pub async fn register_template_file(&self, path: &std::path::Path) -> Result<String> {
        let t = TaskTemplate::from_path(path, self.inner.opts.environment.as_deref())?;
        self.register_template(t).await
    }

    /// Registers a parsed document (a dict from a host language).
    pub async fn register_template_value(&self, doc: Value) -> Result<String> {
        let t = TaskTemplate::from_value(doc, self.inner.opts.environment.as_deref())?;
        self.register_template(t).await
    }

    /// Registers a template; returns its key `namespace.name@version`. Registering the same key
    /// again with an identical definition is a no-op; with a different one, an error.
    pub async fn register_template(&self, t: TaskTemplate) -> Result<String> {
        let key = t.key();
        let body = t.canonical_json();
        let hash = hex(&Sha256::digest(body.as_bytes()));
        let version = t.version.to_string();
        let mut tx = self.inner.store.begin(true).await?;
        let id = match tx.find_template(&t.namespace, &t.name, &version).await? {
            Some(row) if row.definition_hash == hash => row.named_task_id,
            Some(_) => return Err(TemplateError::Conflict { key }.into()),
            None => {
                let now = self.now();
                let id = tx
                    .insert_template(
                        &t.namespace,
                        &t.name,
                        &version,
                        t.description.as_deref(),
                        &body,
                        &hash,
                        now,
                    )
                    .await?;
                tx.commit(false, false).await?;
                id
            }
        };
        let mut reg = self.inner.templates.write().unwrap();
        reg.ids
            .insert((t.namespace.clone(), t.name.clone(), version), id);
        reg.by_id.insert(id, Arc::new(t));
        Ok(key)
    }

    /// Every registered template.
    pub async fn templates(&self) -> Result<Vec<TemplateSummary>> {
        self.refresh_templates().await?;
        let reg = self.inner.templates.read().unwrap();
        let mut out: Vec<TemplateSummary> = reg
            .by_id
            .values()
            .map(|t| TemplateSummary {
                namespace: t.namespace.clone(),
                name: t.name.clone(),
                version: t.version.to_string(),
                description: t.description.clone(),
                steps: t.steps.len(),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.namespace, &a.name)
                .cmp(&(&b.namespace, &b.name))
                .then_with(|| {
                    semver::Version::parse(&a.version)
                        .ok()
                        .cmp(&semver::Version::parse(&b.version).ok())
                })
        });
        Ok(out)
    }

    /// The template `namespace.name@version` (latest version when `version` is None).
    pub async fn template(
        &self,
        namespace: Option<&str>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<TaskTemplate>> {
        Ok(self.resolve_template(namespace, name, version).await?.1)
    }

    async fn refresh_templates(&self) -> Result<()> {
        let rows = self.inner.store.templates().await?;
        let missing: Vec<TemplateRow> = {
            let reg = self.inner.templates.read().unwrap();
            rows.into_iter()
                .filter(|r| !reg.by_id.contains_key(&r.named_task_id))
                .collect()
        };
        for row in missing {
            self.cache_template_row(row)?;
        }
        Ok(())
    }

    fn cache_template_row(&self, row: TemplateRow) -> Result<Arc<TaskTemplate>> {
        let def = serde_json::from_str(&row.definition)
            .map_err(|e| Error::Corrupt(format!("template {}: {e}", row.named_task_id)))?;
        let t = Arc::new(TaskTemplate::from_definition(def)?);
        let mut reg = self.inner.templates.write().unwrap();
        reg.ids
            .insert((row.namespace, row.name, row.version), row.named_task_id);
        reg.by_id.insert(row.named_task_id, t.clone());
        Ok(t)
    }

    fn cached_template(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Option<(i64, Arc<TaskTemplate>)> {
        let reg = self.inner.templates.read().unwrap();
        let version = match version {
            Some(v) => v.to_owned(),
            None => latest_version(
                reg.ids
                    .keys()
                    .filter(|(ns, n, _)| ns == namespace && n == name)
                    .map(|(_, _, v)| v.as_str()),
            )?
            .to_owned(),
        };
        let id = *reg
            .ids
            .get(&(namespace.to_owned(), name.to_owned(), version))?;
        Some((id, reg.by_id.get(&id)?.clone()))
    }

    async fn resolve_template(
        &self,
        namespace: Option<&str>,
        name: &str,
        version: Option<&str>,
    ) -> Result<(i64, Arc<TaskTemplate>)> {
        let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
        if let Some(found) = self.cached_template(ns, name, version) {
            return Ok(found);
        }
        self.refresh_templates().await?;
        if let Some(found) = self.cached_template(ns, name, version) {
            return Ok(found);
        }
        let reg = self.inner.templates.read().unwrap();
        let mut versions: Vec<&str> = reg
            .ids
            .keys()
            .filter(|(n2, n, _)| n2 == ns && n == name)
            .map(|(_, _, v)| v.as_str())
            .collect();
        versions.sort();
        Err(Error::NotFound(match (version, versions.is_empty()) {
            (_, true) => format!("no template named {name:?} in namespace {ns:?} is registered"),
            (Some(v), false) => format!(
                "template {ns}.{name} has no version {v:?} (registered: {})",
                versions.join(", ")
            ),
            (None, false) => unreachable!("latest exists when versions do"),
        }))
    }

    async fn template_in_tx(&self, tx: &mut dyn StoreTx, id: i64) -> Result<Arc<TaskTemplate>> {
        if let Some(t) = self.inner.templates.read().unwrap().by_id.get(&id) {
            return Ok(t.clone());
        }
        let row = tx
            .template_by_id(id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("task refers to missing template {id}")))?;
        self.cache_template_row(row)
    }

    // ---- tasks -------------------------------------------------------------------------------

    fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Creates a task; returns its id (the existing task's id for a repeated idempotency key).
    pub async fn create_task(&self, req: TaskRequest) -> Result<i64> {
        Ok(self.create_tasks(vec![req]).await?[0])
    }

    /// Creates many tasks in one transaction (all or none); ids in request order.
    pub async fn create_tasks(&self, reqs: Vec<TaskRequest>) -> Result<Vec<i64>> {
        let mut prepared = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            let where_ = if i == 0 {
                String::new()
            } else {
                format!(" (request {i})")
            };
            prepared.push(self.prepare(req).await.map_err(|e| match e {
                Error::Validation(m) if !where_.is_empty() => {
                    Error::Validation(format!("{m}{where_}"))
                }
                other => other,
            })?);
        }
        let now = self.now();
        let mut cx = TxCx::begin(self, now).await?;
        let mut ids = Vec::with_capacity(prepared.len());
        for p in &prepared {
            ids.push(cx.insert_task(p).await?);
        }
        cx.finish().await?;
        Ok(ids)
    }

    async fn prepare(&self, req: TaskRequest) -> Result<Prepared> {
        if req.name.trim().is_empty() {
            return Err(Error::Validation(
                "task request: name must not be empty".into(),
            ));
        }
        let (template_id, template) = self
            .resolve_template(req.namespace.as_deref(), &req.name, req.version.as_deref())
            .await?;
        let context = match req.context {
            Value::Null => Value::Object(Map::new()),
            Value::Object(m) => Value::Object(m),
            other => {
                return Err(Error::Validation(format!(
                    "task {}: context must be a JSON object, got {}",
                    template.key(),
                    json_kind(&other)
                )))
            }
        };
        if let Err(errs) = template.validate_context(&context) {
            return Err(Error::Validation(format!(
                "task {}: context does not match the template's schema:\n  {}",
                template.key(),
                errs.join("\n  ")
            )));
        }
        let mut bypass = vec![false; template.steps.len()];
        for name in &req.bypass_steps {
            let Some(i) = template.step_index(name) else {
                return Err(Error::Validation(format!(
                    "task {}: bypass_steps names unknown step {name:?}",
                    template.key()
                )));
            };
            if !template.steps[i].skippable {
                return Err(Error::Validation(format!(
                    "task {}: step {name:?} cannot be bypassed: it is not skippable",
                    template.key()
                )));
            }
            bypass[i] = true;
        }
        Ok(Prepared {
            template_id,
            template,
            context: serde_json::to_string(&context).expect("json"),
            initiator: req.initiator.unwrap_or_else(|| "unknown".into()),
            source_system: req.source_system.unwrap_or_else(|| "unknown".into()),
            reason: req.reason.unwrap_or_else(|| "unknown".into()),
            tags: serde_json::to_string(&req.tags).expect("json"),
            bypass_names: serde_json::to_string(&req.bypass_steps).expect("json"),
            bypass,
            idempotency_key: req.idempotency_key,
            priority: req.priority,
        })
    }

    /// The task's snapshot.
    pub async fn get_task(&self, task_id: i64) -> Result<TaskSnapshot> {
        let (d, ns, name, version) = self
            .inner
            .store
            .task(task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))?;
        let template = self.template_by_id(d.row.named_task_id).await?;
        let steps = self.inner.store.steps(task_id).await?;
        Ok(TaskSnapshot {
            id: d.row.task_id,
            name,
            namespace: ns,
            version,
            status: d.row.state,
            context: parse_json(&d.context)?,
            initiator: d.initiator,
            source_system: d.source_system,
            reason: d.reason,
            tags: parse_json(&d.tags)?,
            bypass_steps: parse_json(&d.bypass_steps)?,
            idempotency_key: d.idempotency_key,
            created_at: format_ms(d.created_at),
            updated_at: format_ms(d.updated_at),
            completed_at: d.completed_at.map(format_ms),
            steps: steps
                .into_iter()
                .map(|s| {
                    let st = template.steps.get(s.position as usize);
                    Ok(StepSnapshot {
                        id: s.step_id,
                        name: s.name,
                        handler: s.handler,
                        status: s.state,
                        attempts: s.attempts,
                        max_attempts: s.retry_limit,
                        results: s
                            .results
                            .as_deref()
                            .map(parse_json)
                            .transpose()?
                            .unwrap_or(Value::Null),
                        error: s.error.as_deref().map(parse_json).transpose()?,
                        depends_on: st.map(|t| t.depends_on.clone()).unwrap_or_default(),
                        next_attempt_at: match s.state {
                            StepState::Error => s.ready_at.map(format_ms),
                            _ => None,
                        },
                        last_attempted_at: s.last_attempted_at.map(format_ms),
                        completed_at: s.processed_at.map(format_ms),
                        duration_ms: match (s.state, s.last_attempted_at, s.processed_at) {
                            (StepState::Complete, Some(a), Some(b)) => Some((b - a).max(0)),
                            _ => None,
                        },
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    async fn template_by_id(&self, id: i64) -> Result<Arc<TaskTemplate>> {
        if let Some(t) = self.inner.templates.read().unwrap().by_id.get(&id) {
            return Ok(t.clone());
        }
        let row = self
            .inner
            .store
            .template_by_id(id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("missing template {id}")))?;
        self.cache_template_row(row)
    }

    /// Tasks matching `filter`, newest first (default limit 100).
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>> {
        if let Some(l) = filter.limit {
            if l < 0 {
                return Err(Error::Validation(format!(
                    "list tasks: limit must be >= 0, got {l}"
                )));
            }
        }
        Ok(self
            .inner
            .store
            .list_tasks(filter)
            .await?
            .into_iter()
            .map(|(d, namespace, name, version)| TaskSummary {
                id: d.row.task_id,
                name,
                namespace,
                version,
                status: d.row.state,
                steps_total: d.row.steps_total,
                steps_done: d.row.steps_done,
                created_at: format_ms(d.created_at),
                completed_at: d.completed_at.map(format_ms),
            })
            .collect())
    }

    /// Statements sent to the database by this engine so far (PostgreSQL: one round trip
    /// each); 0 on SQLite, where statements are function calls.
    pub fn database_statements(&self) -> u64 {
        self.inner.store.statements()
    }

    /// The task's state.
    pub async fn get_task_state(&self, task_id: i64) -> Result<TaskState> {
        self.inner
            .store
            .task_state(task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))
    }

    /// True when nothing is claimable now or later for these handlers and no step is running
    /// anywhere.
    pub async fn is_idle(&self, handlers: Option<&[String]>) -> Result<bool> {
        Ok(self.inner.store.next_ready_at(handlers).await?.is_none()
            && self.inner.store.next_lease_expiry().await?.is_none())
    }

    /// Transition rows of a task and its steps, oldest first.
    pub async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>> {
        self.inner.store.transitions(task_id).await
    }

    /// Waits until the task is `complete`, `error`, `cancelled` or `resolved_manually` and
    /// returns its snapshot. `timeout` is real time.
    pub async fn wait_for_task(
        &self,
        task_id: i64,
        timeout: Option<Duration>,
    ) -> Result<TaskSnapshot> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let notified = self.inner.tasks_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.inner.store.task_state(task_id).await? {
                None => return Err(Error::NotFound(format!("task {task_id} does not exist"))),
                Some(s) if s.is_terminal() => return self.get_task(task_id).await,
                Some(_) => {}
            }
            // A missed notification (or a backend without them) costs at most 250 ms.
            let mut nap = Duration::from_millis(250);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(format!(
                        "task {task_id} did not finish within {:?}",
                        timeout.unwrap()
                    )));
                }
                nap = nap.min(left);
            }
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    // ---- the poll/complete protocol ------------------------------------------------------------

    /// Records outcomes and claims the next jobs in one transaction. Also returns expired leases
    /// to the claimable pool (at most every 500 ms of engine time).
    pub async fn report(&self, reports: &[Report], claim: Option<&Claim>) -> Result<Cycle> {
        let span = debug_span!(
            "tasker.report",
            reports = reports.len(),
            claim = claim.map(|c| c.max)
        );
        async move {
            let now = self.now();
            // A claim alone need not reach the disk before the handler runs: lost in a crash,
            // the step is simply claimable again. Outcomes always are durable.
            let mut cx = TxCx::begin_with(self, now, !reports.is_empty()).await?;
            let mut stale = cx.apply_reports(reports).await?;
            let last = self.inner.last_reap_ms.load(Ordering::Relaxed);
            if last == i64::MIN || now - last >= REAP_EVERY_MS || now < last {
                self.inner.last_reap_ms.store(now, Ordering::Relaxed);
                stale.extend(cx.reap_expired().await?);
            }
            let jobs = match claim {
                Some(c) if c.max > 0 => cx.claim(c).await?,
                _ => Vec::new(),
            };
            cx.finish().await?;
            if !stale.is_empty() {
                debug!(
                    count = stale.len(),
                    "reports for attempts that were taken over were ignored"
                );
            }
            Ok(Cycle { jobs, stale })
        }
        .instrument(span)
        .await
    }

    /// Claims up to `claim.max` jobs, waiting up to `wait` (real time) for work to appear.
    pub async fn poll(&self, claim: &Claim, wait: Duration) -> Result<Vec<Job>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.inner.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cycle = self.report(&[], Some(claim)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !cycle.jobs.is_empty() || left.is_zero() {
                return Ok(cycle.jobs);
            }
            let nap = self
                .time_to_next_work(claim.handlers.as_deref())
                .await?
                .min(left);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// How long until a step becomes claimable or a lease expires (engine clock), at most 1 s.
    pub async fn time_to_next_work(&self, handlers: Option<&[String]>) -> Result<Duration> {
        let now = self.now();
        let mut next = now + 1000;
        if let Some(t) = self.inner.store.next_ready_at(handlers).await? {
            next = next.min(t);
        }
        if let Some(t) = self.inner.store.next_lease_expiry().await? {
            next = next.min(t + 1);
        }
        Ok(Duration::from_millis((next - now).clamp(1, 1000) as u64))
    }

    /// A future that resolves when new work may have appeared in this process.
    pub fn work_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.work.notified()
    }

    /// Records one successful attempt.
    pub async fn complete(&self, key: JobKey, results: Value) -> Result<bool> {
        let c = self
            .report(
                &[Report {
                    key,
                    outcome: Outcome::Complete(results),
                }],
                None,
            )
            .await?;
        Ok(c.stale.is_empty())
    }

    /// Records one failed attempt.
    pub async fn fail(&self, key: JobKey, failure: StepFailure) -> Result<bool> {
        let c = self
            .report(
                &[Report {
                    key,
                    outcome: Outcome::Failed(failure),
                }],
                None,
            )
            .await?;
        Ok(c.stale.is_empty())
    }

    /// Extends the leases of running attempts by the engine's lease duration; returns how many
    /// are still held (an attempt that was taken over is not extended).
    pub async fn heartbeat(&self, keys: &[JobKey]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let until = now + self.inner.opts.lease.as_millis() as i64;
        let pairs: Vec<(i64, i64)> = keys.iter().map(|k| (k.step_id, k.attempt as i64)).collect();
        let mut tx = self.inner.store.begin(false).await?;
        let n = tx.extend_leases(&pairs, until, now).await?;
        tx.commit(false, false).await?;
        Ok(n)
    }

    // ---- operator actions ----------------------------------------------------------------------

    /// Cancels the task: steps not yet started are cancelled; steps in flight finish and their
    /// results are saved.
    pub async fn cancel_task(&self, task_id: i64) -> Result<()> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        if task.state.is_finished() {
            return Err(Error::Conflict(format!(
                "cannot cancel task {task_id}: it is already {}",
                task.state
            )));
        }
        if TaskState::event(Some(task.state), TaskState::Cancelled).is_none() {
            return Err(Error::IllegalTaskTransition {
                task_id,
                from: task.state,
                to: TaskState::Cancelled,
            });
        }
        let template = cx.template(task.named_task_id).await?;
        let steps = cx.tx.task_steps(task_id).await?;
        let mut updates = Vec::new();
        for s in &steps {
            if matches!(s.state, StepState::Pending | StepState::Error) {
                if s.state == StepState::Error && s.ready_at.is_none() {
                    cx.adjust(task_id, 0, -1);
                }
                updates.push((
                    StepUpdate {
                        step_id: s.step_id,
                        expect_state: s.state,
                        expect_attempts: None,
                        state: StepState::Cancelled,
                        attempts: None,
                        results: None,
                        error: None,
                        ready_at: None,
                        processed_at: None,
                        transitions: 1,
                    },
                    template.steps[s.position as usize].name.clone(),
                    s.attempts,
                    json!({"reason": "task_cancelled"}),
                ));
            }
        }
        cx.apply_step_updates(task_id, updates).await?;
        cx.set_task_states(
            task_id,
            &[TaskState::Cancelled],
            json!({"reason": "cancelled_by_operator"}),
        )?;
        cx.finish().await
    }

    /// Gives a failed step a fresh set of attempts and puts the task back to work.
    pub async fn retry_step(&self, task_id: i64, step_name: &str) -> Result<()> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        cx.require_active(&task, "retry a step of")?;
        let s = cx.step_named(task_id, step_name).await?;
        if s.state != StepState::Error {
            return Err(Error::Conflict(format!(
                "step {step_name:?} of task {task_id} is {}; only a step in error can be retried",
                s.state
            )));
        }
        if s.ready_at.is_none() {
            cx.adjust(task_id, 0, -1);
        }
        let now = cx.now;
        let update = StepUpdate {
            step_id: s.step_id,
            expect_state: StepState::Error,
            expect_attempts: Some(s.attempts),
            state: StepState::Pending,
            attempts: Some(0),
            results: None,
            error: Some(None),
            ready_at: (s.remaining_parents <= 0).then_some(now),
            processed_at: None,
            transitions: 1,
        };
        cx.apply_step_updates(
            task_id,
            vec![(
                update,
                s.name.clone(),
                0,
                json!({"reason": "retried_by_operator", "previous_attempts": s.attempts}),
            )],
        )
        .await?;
        cx.work = true;
        cx.settle(task_id).await?;
        cx.finish().await
    }

    /// Marks a pending or failed step `resolved_manually` with `results`; its children may run.
    pub async fn resolve_step_manually(
        &self,
        task_id: i64,
        step_name: &str,
        results: Value,
    ) -> Result<()> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        cx.require_active(&task, "resolve a step of")?;
        let s = cx.step_named(task_id, step_name).await?;
        if !matches!(s.state, StepState::Pending | StepState::Error) {
            return Err(Error::Conflict(format!(
                "step {step_name:?} of task {task_id} is {}; only a pending or failed step can be resolved manually",
                s.state
            )));
        }
        if s.state == StepState::Error && s.ready_at.is_none() {
            cx.adjust(task_id, 0, -1);
        }
        cx.adjust(task_id, 1, 0);
        let update = StepUpdate {
            step_id: s.step_id,
            expect_state: s.state,
            expect_attempts: Some(s.attempts),
            state: StepState::ResolvedManually,
            attempts: None,
            results: Some(Some(serde_json::to_string(&results).expect("json"))),
            error: None,
            ready_at: None,
            processed_at: Some(cx.now),
            transitions: 1,
        };
        cx.apply_step_updates(
            task_id,
            vec![(
                update,
                s.name.clone(),
                s.attempts,
                json!({"reason": "resolved_by_operator"}),
            )],
        )
        .await?;
        let template = cx.template(task.named_task_id).await?;
        let decs: Vec<(i64, i32, i64)> = template.steps[s.position as usize]
            .children
            .iter()
            .map(|&c| (task_id, c as i32, 1))
            .collect();
        if !decs.is_empty() && cx.tx.decrement_parents(&decs, cx.now).await? > 0 {
            cx.work = true;
        }
        cx.settle(task_id).await?;
        cx.finish().await
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

struct Prepared {
    template_id: i64,
    template: Arc<TaskTemplate>,
    context: String,
    initiator: String,
    source_system: String,
    reason: String,
    tags: String,
    bypass_names: String,
    bypass: Vec<bool>,
    idempotency_key: Option<String>,
    priority: i32,
}

/// A transition to record and announce.
struct Change {
    row: TransitionRow,
    event: &'static str,
    step_name: Option<String>,
    attempt: Option<u32>,
    metadata: Value,
}

/// The work of one write transaction: in-memory copies of the task rows it touched, the
/// transitions to insert, and what to announce after commit.
struct TxCx<'e> {
    engine: &'e Engine,
    tx: Box<dyn StoreTx>,
    now: i64,
    tasks: HashMap<i64, TaskRow>,
    /// `steps_blocked` of each task when this transaction first saw it.
    blocked_before: HashMap<i64, i64>,
    pending: HashMap<i64, TaskUpdate>,
    changes: Vec<Change>,
    work: bool,
    tasks_changed: bool,
}

impl<'e> TxCx<'e> {
    async fn begin(engine: &'e Engine, now: i64) -> Result<TxCx<'e>> {
        Self::begin_with(engine, now, true).await
    }

    async fn begin_with(engine: &'e Engine, now: i64, durable: bool) -> Result<TxCx<'e>> {
        Ok(TxCx {
            engine,
            tx: engine.inner.store.begin(durable).await?,
            now,
            tasks: HashMap::new(),
            blocked_before: HashMap::new(),
            pending: HashMap::new(),
            changes: Vec::new(),
            work: false,
            tasks_changed: false,
        })
    }

    async fn template(&mut self, id: i64) -> Result<Arc<TaskTemplate>> {
        self.engine.template_in_tx(&mut *self.tx, id).await
    }

    async fn task(&mut self, task_id: i64) -> Result<TaskRow> {
        self.load_tasks(&[task_id]).await?;
        self.tasks
            .get(&task_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))
    }

    async fn load_tasks(&mut self, ids: &[i64]) -> Result<()> {
        let missing: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !self.tasks.contains_key(id))
            .collect();
        if !missing.is_empty() {
            for row in self.tx.lock_tasks(&missing).await? {
                self.blocked_before.insert(row.task_id, row.steps_blocked);
                self.tasks.insert(row.task_id, row);
            }
        }
        Ok(())
    }

    fn require_active(&self, task: &TaskRow, what: &str) -> Result<()> {
        if matches!(
            task.state,
            TaskState::Pending | TaskState::InProgress | TaskState::Error
        ) {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "cannot {what} task {}: it is {}",
                task.task_id, task.state
            )))
        }
    }

    async fn step_named(&mut self, task_id: i64, name: &str) -> Result<StepRow> {
        let steps = self.tx.task_steps(task_id).await?;
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        steps.into_iter().find(|s| s.name == name).ok_or_else(|| {
            Error::NotFound(format!(
                "task {task_id} has no step named {name:?} (steps: {})",
                names.join(", ")
            ))
        })
    }

    /// Changes a task's counters, in memory now and in the database at the next flush.
    fn adjust(&mut self, task_id: i64, d_done: i64, d_blocked: i64) {
        let row = self.tasks.get_mut(&task_id).expect("task loaded");
        row.steps_done += d_done;
        row.steps_blocked += d_blocked;
        let u = self.pending.entry(task_id).or_insert_with(|| TaskUpdate {
            task_id,
            ..Default::default()
        });
        u.d_done += d_done;
        u.d_blocked += d_blocked;
    }

    fn push_change(
        &mut self,
        task_id: i64,
        step: Option<(i64, &str, u32)>,
        from: Option<&'static str>,
        to: &'static str,
        event: &'static str,
        sort_key: i64,
        metadata: Value,
    ) {
        self.changes.push(Change {
            row: TransitionRow {
                task_id,
                step_id: step.map(|s| s.0),
                from_state: from,
                to_state: to,
                metadata: serde_json::to_string(&metadata).expect("json"),
                sort_key,
                created_at: self.now,
            },
            event,
            step_name: step.map(|s| s.1.to_owned()),
            attempt: step.map(|s| s.2),
            metadata,
        });
    }

    /// Applies conditional step updates of one task and records their transitions
    /// (`expect_state -> state`). Returns the ids applied.
    async fn apply_step_updates(
        &mut self,
        task_id: i64,
        updates: Vec<(StepUpdate, String, i64, Value)>,
    ) -> Result<HashSet<i64>> {
        let rows: Vec<StepUpdate> = updates.iter().map(|u| u.0.clone()).collect();
        let applied: HashMap<i64, i64> = self
            .tx
            .update_steps(&rows, self.now)
            .await?
            .into_iter()
            .collect();
        for (u, name, attempt, meta) in updates {
            let Some(&version) = applied.get(&u.step_id) else {
                return Err(Error::Conflict(format!(
                    "step {name:?} of task {task_id} changed while the operation ran; try again"
                )));
            };
            let event = StepState::event(Some(u.expect_state), u.state).ok_or(
                Error::IllegalStepTransition {
                    task_id,
                    step: name.clone(),
                    from: u.expect_state,
                    to: u.state,
                },
            )?;
            self.push_change(
                task_id,
                Some((u.step_id, &name, attempt as u32)),
                Some(u.expect_state.as_str()),
                u.state.as_str(),
                event,
                version,
                meta,
            );
        }
        Ok(applied.into_keys().collect())
    }

    /// Queues task state changes along `path` (each checked against the table).
    fn set_task_states(&mut self, task_id: i64, path: &[TaskState], metadata: Value) -> Result<()> {
        let row = self.tasks.get_mut(&task_id).expect("task loaded");
        let mut from = row.state;
        let u = self.pending.entry(task_id).or_insert_with(|| TaskUpdate {
            task_id,
            ..Default::default()
        });
        let mut changes = Vec::new();
        for &to in path {
            let event = TaskState::event(Some(from), to).ok_or(Error::IllegalTaskTransition {
                task_id,
                from,
                to,
            })?;
            row.version += 1;
            u.transitions += 1;
            u.state = Some(to);
            if to.is_terminal() {
                u.completed_at = Some(self.now);
            }
            changes.push((from, to, event, row.version));
            from = to;
        }
        row.state = from;
        for (f, t, e, v) in changes {
            self.push_change(
                task_id,
                None,
                Some(f.as_str()),
                t.as_str(),
                e,
                v,
                metadata.clone(),
            );
        }
        self.tasks_changed = true;
        Ok(())
    }

    /// Moves the task on if its counters say so: complete when every step is done; error when
    /// a step is out of attempts and nothing is in flight; back to pending when an operator
    /// unblocked it.
    async fn settle(&mut self, task_id: i64) -> Result<()> {
        use TaskState::*;
        let row = self.tasks[&task_id].clone();
        let all_done = row.steps_done >= row.steps_total;
        let blocked_and_idle = matches!(row.state, Pending | InProgress)
            && !all_done
            && row.steps_blocked > 0
            && self.tx.count_running(task_id).await? == 0;
        let (path, meta): (&[TaskState], Value) = match row.state {
            Pending | InProgress if all_done => (
                if row.state == Pending {
                    &[InProgress, Complete]
                } else {
                    &[Complete]
                },
                json!({"steps_total": row.steps_total}),
            ),
            Pending | InProgress if blocked_and_idle => (
                &[Error],
                json!({"error_message": "steps_in_error_state", "failed_steps_count": row.steps_blocked}),
            ),
            Error if all_done => (
                &[Pending, InProgress, Complete],
                json!({"steps_total": row.steps_total}),
            ),
            Error if row.steps_blocked <= 0 => {
                (&[Pending], json!({"reason": "unblocked_by_operator"}))
            }
            _ => return Ok(()),
        };
        if path.contains(&Pending) {
            self.work = true;
        }
        self.set_task_states(task_id, path, meta)
    }

    /// Parks the claimable steps of blocked tasks, so no claim starts them, and makes them
    /// claimable again once a task is unblocked.
    async fn repark(&mut self) -> Result<()> {
        let mut park = Vec::new();
        let mut unpark = Vec::new();
        for (id, row) in &self.tasks {
            let before = self.blocked_before.get(id).copied().unwrap_or(0);
            if row.steps_blocked > 0 {
                park.push(*id);
            } else if before > 0 && matches!(row.state, TaskState::Pending | TaskState::InProgress)
            {
                unpark.push(*id);
            }
        }
        if !park.is_empty() {
            park.sort_unstable();
            self.tx.park(&park, self.now).await?;
        }
        if !unpark.is_empty() {
            unpark.sort_unstable();
            self.tx.unpark(&unpark, self.now).await?;
            self.work = true;
        }
        Ok(())
    }

    /// Flushes, writes the transition rows, commits, then announces.
    async fn finish(mut self) -> Result<()> {
        self.repark().await?;
        let ups: Vec<TaskUpdate> = self.pending.drain().map(|(_, u)| u).collect();
        let rows: Vec<TransitionRow> = self.changes.iter().map(|c| c.row.clone()).collect();
        self.tx.write_final(&ups, &rows, self.now).await?;
        let TxCx {
            engine,
            tx,
            changes,
            work,
            tasks_changed,
            ..
        } = self;
        tx.commit(work, tasks_changed).await?;
        let inner = &engine.inner;
        if inner.events.receiver_count() > 0 {
            for c in changes {
                let _ = inner.events.send(Arc::new(Event {
                    name: c.event,
                    task_id: c.row.task_id,
                    step_id: c.row.step_id,
                    step_name: c.step_name,
                    from_state: c.row.from_state,
                    to_state: c.row.to_state,
                    attempt: c.attempt,
                    metadata: c.metadata,
                    at_ms: c.row.created_at,
                }));
            }
        }
        if work {
            inner.work.notify_waiters();
        }
        if tasks_changed {
            inner.tasks_changed.notify_waiters();
        }
        Ok(())
    }

    async fn insert_task(&mut self, p: &Prepared) -> Result<i64> {
        if let Some(k) = &p.idempotency_key {
            if let Some(id) = self.tx.task_by_idempotency_key(k).await? {
                return Ok(id);
            }
        }
        let t = &p.template;
        let done = p.bypass.iter().filter(|b| **b).count() as i64;
        let new_task = NewTask {
            named_task_id: p.template_id,
            state: TaskState::Pending,
            context: &p.context,
            initiator: &p.initiator,
            source_system: &p.source_system,
            reason: &p.reason,
            tags: &p.tags,
            bypass_steps: &p.bypass_names,
            idempotency_key: p.idempotency_key.as_deref(),
            steps_total: t.steps.len() as i64,
            steps_done: done,
            version: 1,
            now: self.now,
        };
        let now = self.now;
        let steps: Vec<NewStep> = t
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let remaining = s.parents.iter().filter(|&&q| !p.bypass[q]).count() as i64;
                NewStep {
                    position: i as i32,
                    name: &s.name,
                    handler: &s.handler,
                    state: if p.bypass[i] {
                        StepState::ResolvedManually
                    } else {
                        StepState::Pending
                    },
                    retry_limit: s.max_attempts as i64,
                    remaining_parents: remaining,
                    ready_at: (!p.bypass[i] && remaining == 0).then_some(now),
                    priority: p.priority,
                    version: if p.bypass[i] { 2 } else { 1 },
                }
            })
            .collect();
        let (task_id, mut ids) = self.tx.insert_task_with_steps(&new_task, &steps).await?;
        ids.sort_unstable();
        self.push_change(
            task_id,
            None,
            None,
            "pending",
            "task.initialize_requested",
            1,
            json!({}),
        );
        for (pos, step_id) in ids {
            let s = &t.steps[pos as usize];
            self.push_change(
                task_id,
                Some((step_id, &s.name, 0)),
                None,
                "pending",
                "step.initialize_requested",
                1,
                json!({}),
            );
            if p.bypass[pos as usize] {
                self.push_change(
                    task_id,
                    Some((step_id, &s.name, 0)),
                    Some("pending"),
                    "resolved_manually",
                    "step.resolved_manually",
                    2,
                    json!({"reason": "bypassed"}),
                );
            }
        }
        self.tasks.insert(
            task_id,
            TaskRow {
                task_id,
                named_task_id: p.template_id,
                state: TaskState::Pending,
                steps_total: t.steps.len() as i64,
                steps_done: done,
                steps_blocked: 0,
                version: 1,
            },
        );
        self.settle(task_id).await?;
        self.work = true;
        self.tasks_changed = true;
        Ok(task_id)
    }

    /// Records outcomes; returns the keys of reports that no longer applied.
    async fn apply_reports(&mut self, reports: &[Report]) -> Result<Vec<JobKey>> {
        let mut stale = Vec::new();
        if reports.is_empty() {
            return Ok(stale);
        }
        let mut ids: Vec<i64> = reports.iter().map(|r| r.key.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        self.load_tasks(&ids).await?;
        let max_server = self.engine.inner.opts.max_server_backoff_seconds;
        struct Plan {
            key: JobKey,
            template: Arc<TaskTemplate>,
            update: StepUpdate,
            meta: Value,
            blocked: bool,
        }
        let mut plans = Vec::with_capacity(reports.len());
        for r in reports {
            let Some(task) = self.tasks.get(&r.key.task_id).cloned() else {
                stale.push(r.key);
                continue;
            };
            let template = self.template(task.named_task_id).await?;
            let Some(st) = template.steps.get(r.key.position as usize) else {
                stale.push(r.key);
                continue;
            };
            let attempt = r.key.attempt;
            let mut update = StepUpdate {
                step_id: r.key.step_id,
                expect_state: StepState::InProgress,
                expect_attempts: Some(attempt as i64),
                state: StepState::Complete,
                attempts: None,
                results: None,
                error: None,
                ready_at: None,
                processed_at: None,
                transitions: 1,
            };
            let mut blocked = false;
            let meta = match &r.outcome {
                Outcome::Complete(v) => {
                    update.results = Some(Some(serde_json::to_string(v).expect("json")));
                    update.error = Some(None);
                    update.processed_at = Some(self.now);
                    json!({"attempt": attempt})
                }
                Outcome::Failed(f) => {
                    let cancelled = task.state == TaskState::Cancelled;
                    let exhausted = f.kind == FailureKind::Permanent || attempt >= st.max_attempts;
                    if cancelled {
                        update.state = StepState::Cancelled;
                    } else {
                        update.state = StepState::Error;
                        if exhausted {
                            blocked = true;
                        } else {
                            let delay = retry_delay_ms(
                                &st.backoff,
                                attempt,
                                f.retry_after_seconds,
                                max_server,
                                rand::random::<f64>(),
                            );
                            update.ready_at = Some(self.now + delay);
                        }
                    }
                    let mut err = json!({
                        "message": f.message,
                        "kind": f.kind,
                        "attempt": attempt,
                        "at": format_ms(self.now),
                    });
                    if let Some(ra) = f.retry_after_seconds {
                        err["retry_after_seconds"] = json!(ra);
                    }
                    if let Some(d) = &f.detail {
                        err["detail"] = d.clone();
                    }
                    update.error = Some(Some(err.to_string()));
                    let mut meta = json!({
                        "attempt": attempt,
                        "error": f.message,
                        "kind": f.kind,
                        "attempts_exhausted": exhausted && !cancelled,
                    });
                    if let Some(at) = update.ready_at {
                        meta["next_attempt_at"] = json!(format_ms(at));
                    }
                    meta
                }
            };
            plans.push(Plan {
                key: r.key,
                template,
                update,
                meta,
                blocked,
            });
        }
        let updates: Vec<StepUpdate> = plans.iter().map(|p| p.update.clone()).collect();
        let applied: HashMap<i64, i64> = self
            .tx
            .update_steps(&updates, self.now)
            .await?
            .into_iter()
            .collect();
        let mut decs: HashMap<(i64, i32), i64> = HashMap::new();
        let mut touched = Vec::new();
        for p in plans {
            let Some(&version) = applied.get(&p.key.step_id) else {
                stale.push(p.key);
                continue;
            };
            let task_id = p.key.task_id;
            let st = &p.template.steps[p.key.position as usize];
            let to = p.update.state;
            let event = StepState::event(Some(StepState::InProgress), to)
                .expect("in_progress -> outcome is legal");
            self.push_change(
                task_id,
                Some((p.key.step_id, &st.name, p.key.attempt)),
                Some("in_progress"),
                to.as_str(),
                event,
                version,
                p.meta,
            );
            let done = (to == StepState::Complete) as i64;
            self.adjust(task_id, done, p.blocked as i64);
            if p.update.ready_at.is_some() {
                self.work = true;
            }
            let task_state = self.tasks[&task_id].state;
            if to == StepState::Complete && task_state != TaskState::Cancelled {
                for &c in &st.children {
                    *decs.entry((task_id, c as i32)).or_default() += 1;
                }
            }
            touched.push(task_id);
        }
        if !decs.is_empty() {
            let decs: Vec<(i64, i32, i64)> =
                decs.into_iter().map(|((t, p), c)| (t, p, c)).collect();
            if self.tx.decrement_parents(&decs, self.now).await? > 0 {
                self.work = true;
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for t in touched {
            self.settle(t).await?;
        }
        Ok(stale)
    }

    /// Fails attempts whose lease expired; they become claimable again at once if attempts
    /// remain.
    async fn reap_expired(&mut self) -> Result<Vec<JobKey>> {
        let expired = self.tx.expired_leases(self.now, 1000).await?;
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        tracing::info!(
            count = expired.len(),
            "re-queueing steps whose lease expired"
        );
        let reports: Vec<Report> = expired
            .into_iter()
            .map(|(step_id, task_id, position, attempts)| Report {
                key: JobKey { task_id, step_id, attempt: attempts as u32, position: position as u32 },
                outcome: Outcome::Failed(StepFailure {
                    message: "lease_expired: the worker running this attempt stopped heartbeating (it died or stalled)".into(),
                    kind: FailureKind::LeaseExpired,
                    retry_after_seconds: Some(0.0),
                    detail: None,
                }),
            })
            .collect();
        self.apply_reports(&reports).await
    }

    /// Claims ready steps and builds their jobs.
    async fn claim(&mut self, c: &Claim) -> Result<Vec<Job>> {
        // Park first: a task blocked by this transaction's outcomes must not have its steps
        // claimed. The claim reads only the steps table, so counter updates can wait for the
        // transaction's final write.
        self.repark().await?;
        let lease_until = self.now + self.engine.inner.opts.lease.as_millis() as i64;
        let claimed = self
            .tx
            .claim(&ClaimSpec {
                now: self.now,
                max: c.max as i64,
                handlers: c.handlers.as_deref(),
                worker_id: &c.worker_id,
                lease_until,
            })
            .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // Contexts never change after creation: keep them parsed.
        let mut contexts: HashMap<i64, Arc<Value>> = HashMap::new();
        {
            let mut cache = self.engine.inner.contexts.lock().unwrap();
            for s in &claimed {
                if contexts.contains_key(&s.task_id) {
                    continue;
                }
                let v = match cache.get(&s.task_id) {
                    Some(v) => v.clone(),
                    None => {
                        if cache.len() >= CONTEXT_CACHE {
                            cache.clear();
                        }
                        let v = Arc::new(parse_json(&s.context)?);
                        cache.insert(s.task_id, v.clone());
                        v
                    }
                };
                contexts.insert(s.task_id, v);
            }
        }
        let mut templates = Vec::with_capacity(claimed.len());
        let mut keys = Vec::new();
        for s in &claimed {
            let t = self.template(s.named_task_id).await?;
            for &p in &t.steps[s.position as usize].parents {
                keys.push((s.task_id, p as i32));
            }
            templates.push(t);
        }
        let mut parent_results: HashMap<(i64, i32), (String, Value)> = HashMap::new();
        if !keys.is_empty() {
            for (t, p, name, res) in self.tx.results(&keys).await? {
                let v = res
                    .as_deref()
                    .map(parse_json)
                    .transpose()?
                    .unwrap_or(Value::Null);
                parent_results.insert((t, p), (name, v));
            }
        }
        let mut jobs = Vec::with_capacity(claimed.len());
        let mut starting = Vec::new();
        for (s, t) in claimed.iter().zip(templates) {
            let st = &t.steps[s.position as usize];
            let attempt = s.attempts as u32;
            let step = Some((s.step_id, st.name.as_str(), attempt));
            if attempt > 1 {
                self.push_change(
                    s.task_id,
                    step,
                    Some("error"),
                    "pending",
                    "step.retry_requested",
                    s.version - 1,
                    json!({"attempt": attempt}),
                );
            }
            self.push_change(
                s.task_id,
                step,
                Some("pending"),
                "in_progress",
                "step.execution_requested",
                s.version,
                json!({"attempt": attempt, "worker": c.worker_id}),
            );
            // A task this transaction holds is known exactly; any other is as the claim read it.
            let state = self
                .tasks
                .get(&s.task_id)
                .map(|t| t.state)
                .unwrap_or(s.task_state);
            if state == TaskState::Pending {
                starting.push(s.task_id);
            }
            let mut results = Map::new();
            for &p in &st.parents {
                if let Some((name, v)) = parent_results.get(&(s.task_id, p as i32)) {
                    results.insert(name.clone(), v.clone());
                }
            }
            jobs.push(Job {
                key: JobKey {
                    task_id: s.task_id,
                    step_id: s.step_id,
                    attempt,
                    position: s.position as u32,
                },
                step_name: st.name.clone(),
                handler: st.handler.clone(),
                max_attempts: st.max_attempts,
                context: contexts.get(&s.task_id).cloned().unwrap_or_default(),
                results,
                config: st.handler_config.clone(),
                timeout: st.timeout_seconds.map(Duration::from_secs_f64),
                lease_expires_at_ms: s.lease_expires_at,
            });
        }
        starting.sort_unstable();
        starting.dedup();
        let (held, other): (Vec<i64>, Vec<i64>) = starting
            .into_iter()
            .partition(|t| self.tasks.contains_key(t));
        for t in held {
            self.set_task_states(
                t,
                &[TaskState::InProgress],
                json!({"reason": "step_claimed"}),
            )?;
        }
        if !other.is_empty() {
            for (task_id, version) in self.tx.start_tasks(&other, self.now).await? {
                let meta = json!({"reason": "step_claimed"});
                self.push_change(
                    task_id,
                    None,
                    Some("pending"),
                    "in_progress",
                    "task.start_requested",
                    version,
                    meta,
                );
                self.tasks_changed = true;
            }
        }
        Ok(jobs)
    }
}
