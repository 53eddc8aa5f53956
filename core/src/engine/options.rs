//! How an engine is opened.

use std::sync::Arc;
use std::time::Duration;

use crate::backoff::DEFAULT_MAX_SERVER_BACKOFF_SECONDS;
use crate::clock::{Clock, SystemClock};
use crate::store::sqlite::Durability;

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
    /// Refuse a changed template body under an already registered version (default: it
    /// becomes a new revision that new tasks use), and a template with keys its format does
    /// not know (default: kept, shown, and warned about; see [`crate::template`]).
    pub strict_templates: bool,
    /// Record metrics through the `metrics` facade (worker cycle latency, steps claimed, step
    /// outcomes and durations, tasks created and finished, lease expiries), for a process
    /// that installs a recorder (`tasker serve`, `tasker worker --metrics-bind`). Off by
    /// default: then nothing is recorded, not even labels built.
    pub metrics: bool,
    /// PostgreSQL: send a worker cycle as one planned statement when the engine already knows
    /// the rows it decides from (default), falling back to a reading transaction when not
    /// (`engine/plan.rs`). Off: every cycle reads first (for comparison and tests).
    pub planned_cycles: bool,
    /// Hand a finished child task's outcome to its parent's step right after the commit that
    /// finished it (default). Off, only the sweep at lease reaping does: what a process that
    /// crashed between the two commits leaves (for tests of that recovery).
    #[doc(hidden)]
    pub settle_children_at_commit: bool,
    /// Remove old finished tasks in every worker of this engine, every minute
    /// ([`crate::engine::Engine::prune`]); none by default.
    pub retention: Option<super::retention::Retention>,
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
            strict_templates: false,
            metrics: false,
            planned_cycles: true,
            settle_children_at_commit: true,
            retention: None,
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
    pub fn strict_templates(mut self, strict: bool) -> Self {
        self.strict_templates = strict;
        self
    }
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }
    pub fn planned_cycles(mut self, on: bool) -> Self {
        self.planned_cycles = on;
        self
    }
    #[doc(hidden)]
    pub fn retention(mut self, r: Option<super::retention::Retention>) -> Self {
        self.retention = r;
        self
    }

    pub fn settle_children_at_commit(mut self, on: bool) -> Self {
        self.settle_children_at_commit = on;
        self
    }
}
