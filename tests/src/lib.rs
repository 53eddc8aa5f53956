//! Helpers shared by the scenario tests: an engine on a fresh database with a manual clock, and
//! a deterministic driver that runs handlers inline until nothing is claimable at the current
//! (manual) time.

use std::sync::Arc;
use std::time::Duration;

use tasker_core::{Claim, Engine, EngineOptions, ManualClock, Outcome, Registry, Report};

/// An engine on a throwaway database, with a clock tests move by hand.
pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with(|o| o).await
    }

    /// Opens with options adjusted by `f` (url and clock are set by the harness).
    pub async fn with(f: impl FnOnce(EngineOptions) -> EngineOptions) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::default();
        let url = format!("sqlite://{}", dir.path().join("tasker.db").display());
        let opts = f(EngineOptions::default()).url(url).clock(Arc::new(clock.clone()));
        let engine = Engine::open_with(opts).await.expect("open engine");
        Harness { engine, clock, _dir: dir }
    }

    /// Path of the database directory.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub async fn register(&self, yaml: &str) -> String {
        self.engine.register_template_yaml(yaml).await.expect("register template")
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
            reports.push(Report { key: job.key, outcome });
        }
    }
}
