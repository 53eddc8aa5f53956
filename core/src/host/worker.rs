//! The Rust worker: the [`crate::host`] driver with Rust handlers. Every handler of its
//! [`Registry`] runs inside the driver ([`crate::handler::execute`]); the worker adds only the
//! ways to start and stop a run.

use std::time::Duration;

use tokio::sync::watch;

use crate::engine::{Engine, TaskSnapshot};
use crate::error::{Error, Result};
use crate::host::{HostDriver, HostOptions, RunMode};

pub use crate::handler::{HandlerError, Registry, StepContext, StepHandler};
pub use crate::host::{RunStats, ShutdownHandle};

/// Worker settings (see [`HostOptions`] for what each one does).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Steps run at once.
    pub concurrency: usize,
    pub worker_id: String,
    /// On shutdown, how long running steps may still finish before they are reported as
    /// `worker_shutdown` failures.
    pub shutdown_grace: Duration,
    /// Steps claimed ahead of free slots (None: adaptive, see [`HostOptions::prefetch`]).
    pub prefetch: Option<usize>,
    /// How long the first finished step may wait for the others (default 1 ms).
    pub batch_window: Duration,
    /// Claim only steps whose handler is registered (default). `false` claims every ready step
    /// and fails those without a handler permanently (only for a worker meant to own them all).
    pub only_registered: bool,
    /// Report-and-claim loops run side by side (None: 2 on PostgreSQL, 1 on SQLite; see
    /// [`HostOptions::lanes`]).
    pub lanes: Option<usize>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        let h = HostOptions::default();
        WorkerOptions {
            concurrency: h.concurrency,
            prefetch: h.prefetch,
            batch_window: h.batch_window,
            worker_id: h.worker_id,
            shutdown_grace: h.shutdown_grace,
            only_registered: h.only_registered,
            lanes: h.lanes,
        }
    }
}

/// Runs Rust handlers against an engine.
pub struct Worker {
    engine: Engine,
    registry: Registry,
    opts: WorkerOptions,
    stop_tx: watch::Sender<bool>,
}

impl Worker {
    pub fn new(engine: Engine, registry: Registry, opts: WorkerOptions) -> Worker {
        let (stop_tx, _) = watch::channel(false);
        Worker {
            engine,
            registry,
            opts,
            stop_tx,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops a run gracefully, from any task or thread (also before the run starts).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop_tx.clone())
    }

    /// Runs until [`ShutdownHandle::shutdown`].
    pub async fn run(&self) -> Result<RunStats> {
        self.run_inline(RunMode::Forever).await
    }

    /// Runs until there is nothing left to do: nothing claimable now or later for these
    /// handlers, nothing running anywhere.
    pub async fn run_until_idle(&self) -> Result<RunStats> {
        self.run_inline(RunMode::UntilIdle).await
    }

    /// Runs until the task is finished (`complete`, `error`, `cancelled`) and returns it. After
    /// `timeout` the run stops gracefully (steps in flight are reported) and the answer is
    /// [`Error::Timeout`].
    pub async fn run_until_complete(
        &self,
        task_id: i64,
        timeout: Option<Duration>,
    ) -> Result<TaskSnapshot> {
        let run = self.run_inline(RunMode::UntilTask(task_id));
        match timeout {
            None => {
                run.await?;
            }
            Some(t) => {
                tokio::pin!(run);
                if tokio::time::timeout(t, &mut run).await.is_err() {
                    // Stop gracefully: the run reports what it holds before it ends. The stop is
                    // this call's own: a later run of this worker starts afresh.
                    let stopped_before = *self.stop_tx.borrow();
                    self.shutdown_handle().shutdown();
                    let r = run.await;
                    if !stopped_before {
                        self.stop_tx.send_replace(false);
                    }
                    r?;
                    return Err(Error::Timeout(format!(
                        "task {task_id} did not finish within {t:?}"
                    )));
                }
            }
        }
        self.engine.get_task(task_id).await
    }

    async fn run_inline(&self, mode: RunMode) -> Result<RunStats> {
        let o = &self.opts;
        let opts = HostOptions {
            worker_id: o.worker_id.clone(),
            concurrency: o.concurrency,
            prefetch: o.prefetch,
            batch_window: o.batch_window,
            shutdown_grace: o.shutdown_grace,
            only_registered: o.only_registered,
            mode,
            host_handlers: Vec::new(),
            events: false,
            lanes: o.lanes,
        };
        HostDriver::run_inline(
            self.engine.clone(),
            self.registry.clone(),
            opts,
            self.shutdown_handle(),
            self.stop_tx.subscribe(),
        )
        .await
    }
}
