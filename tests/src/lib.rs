//! Helpers shared by the scenario tests: an engine on a fresh database with a manual clock, and
//! a deterministic driver that runs handlers inline until nothing is claimable at the current
//! (manual) time.
//!
//! The backend comes from `TASKER_TEST_BACKEND`: `sqlite` (default; a file in a temporary
//! directory) or `postgres` (`DATABASE_URL`, one fresh schema per test). `scripts/test.sh` runs
//! the suite once with each.

use std::sync::Arc;
use std::time::Duration;

use tasker_core::{Claim, Engine, EngineOptions, Job, ManualClock, Outcome, Registry, Report};

/// An engine on a throwaway database, with a clock tests move by hand.
pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    opts: EngineOptions,
    _dir: tempfile::TempDir,
}

/// The backend under test: `sqlite` or `postgres`.
pub fn backend() -> String {
    std::env::var("TASKER_TEST_BACKEND").unwrap_or_else(|_| "sqlite".into())
}

/// Options for a fresh database of the backend under test (sqlite file in `dir`, or a new
/// PostgreSQL schema).
pub fn fresh_options(dir: &std::path::Path) -> EngineOptions {
    match backend().as_str() {
        "postgres" => {
            let url = std::env::var("DATABASE_URL").expect(
                "TASKER_TEST_BACKEND=postgres needs DATABASE_URL (scripts/test.sh starts a server)",
            );
            let schema = format!("t_{}_{:08x}", std::process::id(), rand_u32());
            EngineOptions::default().url(url).schema(schema)
        }
        "sqlite" => {
            EngineOptions::default().url(format!("sqlite://{}", dir.join("tasker.db").display()))
        }
        other => panic!("TASKER_TEST_BACKEND={other:?}: expected sqlite or postgres"),
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with(|o| o).await
    }

    /// Opens with options adjusted by `f` (url and clock are set by the harness).
    pub async fn with(f: impl FnOnce(EngineOptions) -> EngineOptions) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::default();
        let fresh = fresh_options(dir.path());
        let mut opts = f(EngineOptions::default()).clock(Arc::new(clock.clone()));
        opts.url = fresh.url;
        opts.schema = fresh.schema;
        let engine = Engine::open_with(opts.clone()).await.expect("open engine");
        Harness {
            engine,
            clock,
            opts,
            _dir: dir,
        }
    }

    /// Like [`Harness::new`] but on the system clock, for tests with other processes.
    pub async fn real_time() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = fresh_options(dir.path());
        let engine = Engine::open_with(opts.clone()).await.expect("open engine");
        Harness {
            engine,
            clock: ManualClock::default(),
            opts,
            _dir: dir,
        }
    }

    /// The database URL and (PostgreSQL) schema, for other processes.
    pub fn url(&self) -> (String, Option<String>) {
        (
            self.opts.url.clone().unwrap_or_default(),
            self.opts.schema.clone(),
        )
    }

    /// A second engine on the same database (as another process would open it).
    pub async fn reopen(&self) -> Engine {
        Engine::open_with(self.opts.clone())
            .await
            .expect("reopen engine")
    }

    pub async fn register(&self, yaml: &str) -> String {
        self.engine
            .register_template_yaml(yaml)
            .await
            .expect("register template")
    }

    /// Claims up to `max` ready steps (any handler) as worker `worker`, nothing reported.
    pub async fn claim(&self, worker: &str, max: usize) -> Vec<Job> {
        let claim = Claim {
            worker_id: worker.into(),
            max,
            handlers: None,
        };
        self.engine
            .report(&[], Some(&claim))
            .await
            .expect("claim")
            .jobs
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Runs every claimable step with `registry`'s handlers, inline, until nothing is claimable
    /// at the current clock time. Returns the number of attempts run.
    pub async fn drive(&self, registry: &Registry) -> usize {
        drive(&self.engine, registry).await
    }
}

/// See [`Harness::drive`].
pub async fn drive(engine: &Engine, registry: &Registry) -> usize {
    let claim = Claim {
        worker_id: "test-driver".into(),
        max: 16,
        handlers: Some(registry.names()),
    };
    let mut reports: Vec<Report> = Vec::new();
    let mut runs = 0;
    loop {
        let cycle = engine.report(&reports, Some(&claim)).await.expect("report");
        reports.clear();
        if cycle.jobs.is_empty() {
            return runs;
        }
        for job in cycle.jobs {
            runs += 1;
            let h = registry.get(&job.handler).expect("handler registered");
            let outcome = match h.call(&job).await {
                Ok(v) => Outcome::Complete(v),
                Err(e) => Outcome::Failed(e.into_failure()),
            };
            reports.push(Report {
                key: job.key,
                outcome,
            });
        }
    }
}
