//! # tasker-core
//!
//! The orchestration core of Tasker: a task is a run of a template, a DAG of steps; the engine
//! persists every state change, hands ready steps to workers through a poll/complete protocol,
//! retries failures with backoff, and recovers the steps of crashed workers through leases.
//!
//! Modules, one per concept:
//! * [`template`]: YAML templates, validation, the step DAG (petgraph);
//! * [`state`]: task and step states, the transition tables, event names;
//! * [`backoff`]: the retry policy;
//! * [`clock`]: time as the engine sees it (swappable in tests);
//! * [`store`]: persistence (SQLite now; one trait for every backend);
//! * [`engine`]: every orchestration decision: create, claim, complete, fail, cancel, retry,
//!   resolve, finalization;
//! * [`protocol`]: the wire types between the engine and hosts (claims, jobs, outcomes);
//! * [`host`]: the host driver, the one worker loop every language uses (prefetch, batching,
//!   heartbeats, timeouts, database outages, graceful shutdown, built-in handlers, events);
//! * [`handler`]: Rust handlers, the registry, and `execute` (timeout, panics);
//! * [`worker`]: the host driver with Rust handlers;
//! * [`events`]: lifecycle events for in-process subscribers;
//! * [`builtin`]: the `command` and `http` step handlers every host gets;
//! * [`diagram`]: Mermaid flowcharts of templates and tasks;
//! * [`schedule`]: cron schedules: patterns, time zones, catch-up and overlap rules.

pub mod backoff;
pub mod builtin;
pub mod clock;
pub mod diagram;
pub mod engine;
pub mod error;
pub mod events;
pub mod handler;
pub mod host;
pub mod protocol;
pub mod schedule;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod template;
pub use host::worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    count_by_state, Claim, Cycle, Engine, EngineOptions, EventSource, FailureKind, Job, JobKey,
    Outcome, Registration, Report, Retention, StateCounts, StepFailure, StepSnapshot, TaskFilter,
    TaskRequest, TaskSelection, TaskSnapshot, TaskSummary, TemplateSource,
};
pub use error::{Error, Result, TemplateError};
pub use events::Event;
pub use handler::{execute, HandlerError, Registry, StepContext, StepHandler};
pub use host::{HostBatch, HostDriver, HostOptions, RunMode, RunStats, ShutdownHandle};
pub use protocol::{Batches, ChildTask, Decision, Reschedule, Shaped, Wait};
pub use state::{StepState, TaskState};
pub use store::sqlite::Durability;
pub use template::{StepKind, TaskTemplate};
pub use worker::{Worker, WorkerOptions};
