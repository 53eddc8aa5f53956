//! Errors at the crate boundary.
//!
//! Every public entry point answers with one of these. Messages name what is wrong and where
//! (template name, step name, YAML line and column, JSON path), so a binding can pass them on
//! verbatim as its language's exception text.

use crate::state::{StepState, TaskState};

/// A template that cannot be accepted. Each message names the template (when it is known) and
/// the place inside it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template YAML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("template {template}: {path}: {message}")]
    Shape {
        template: String,
        path: String,
        message: String,
    },
    #[error("template {template}: has no steps (step_templates / steps is empty)")]
    EmptySteps { template: String },
    #[error("template {template}: step name {step:?} appears more than once (step_templates[{first}] and step_templates[{second}])")]
    DuplicateStep {
        template: String,
        step: String,
        first: usize,
        second: usize,
    },
    #[error("template {template}: step {step:?} depends on unknown step {dependency:?}")]
    UnknownDependency {
        template: String,
        step: String,
        dependency: String,
    },
    #[error("template {template}: dependency cycle: {}", cycle.join(" -> "))]
    Cycle {
        template: String,
        /// The steps on the cycle in order, the first repeated at the end.
        cycle: Vec<String>,
    },
    #[error(
        "template {template}: step {step:?}: default_retry_limit must be at least 1, got {limit}"
    )]
    RetryLimit {
        template: String,
        step: String,
        limit: i64,
    },
    #[error("template {template}: version {version:?} is not a semantic version (MAJOR.MINOR.PATCH): {message}")]
    Version {
        template: String,
        version: String,
        message: String,
    },
    #[error("template {template}: schema is not a valid JSON Schema: {message}")]
    Schema { template: String, message: String },
    #[error("template {template}: step {step:?}: {message}")]
    Step {
        template: String,
        step: String,
        message: String,
    },
    /// Only with strict templates; otherwise a changed body becomes a new revision.
    #[error("template {key} is already registered with a different body; register it under a new version (strict templates are on)")]
    Conflict { key: String },
    /// Only with strict templates; otherwise unknown keys are kept and warned about.
    #[error("template {template}: {} (strict templates are on; without them these are kept and only warned about)", warnings.join("; "))]
    UnknownKeys {
        template: String,
        warnings: Vec<String>,
    },
    #[error("template file {path}: {message}")]
    Io { path: String, message: String },
}

/// Errors returned by the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Bad input to an API call (task request, context, results, options).
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    NotFound(String),
    #[error("illegal task transition {from} -> {to} for task {task_id}")]
    IllegalTaskTransition {
        task_id: i64,
        from: TaskState,
        to: TaskState,
    },
    #[error("illegal step transition {from} -> {to} for step {step:?} of task {task_id}")]
    IllegalStepTransition {
        task_id: i64,
        step: String,
        from: StepState,
        to: StepState,
    },
    /// An operator action that the task's or step's present state does not allow.
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Opening the database failed: the driver's own reason (refused, unknown host, bad
    /// password, missing database), at once.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}: expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DB")]
    UnsupportedUrl(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the engine is shutting down")]
    Shutdown,
    /// A planned cycle no longer applies (a task or step changed since the engine saw it): the
    /// engine runs the cycle again the general way. Never returned by a public call.
    #[doc(hidden)]
    #[error("internal: the planned cycle no longer applies")]
    PlanStale,
    /// A bug in Tasker (a panic in its own loop); the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A short machine-readable kind, for bindings that map errors onto exception classes.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Template(_) => "template",
            Error::Validation(_) => "validation",
            Error::NotFound(_) => "not_found",
            Error::IllegalTaskTransition { .. } | Error::IllegalStepTransition { .. } => {
                "illegal_transition"
            }
            Error::Conflict(_) => "conflict",
            Error::Database(_)
            | Error::Connect { .. }
            | Error::Sqlite(_)
            | Error::Migration(_)
            | Error::Corrupt(_) => "database",
            Error::UnsupportedUrl(_) => "validation",
            Error::Timeout(_) => "timeout",
            Error::Shutdown => "shutdown",
            Error::Internal(_) | Error::PlanStale => "internal",
        }
    }

    /// True for errors that may pass once the database is back (connection refused or lost,
    /// pool exhausted, a server shutting down or starting up, a busy SQLite file): a running
    /// worker waits them out. Errors that are the database's real answer (bad data, a broken
    /// constraint, a missing table, a decoding bug) are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => match e {
                sqlx::Error::Database(d) => !d.code().is_some_and(|c| {
                    // 22 data exception, 23 integrity violation, 42 syntax error or access
                    // rule violation: retrying gives the same answer.
                    c.starts_with("22") || c.starts_with("23") || c.starts_with("42")
                }),
                sqlx::Error::Configuration(_)
                | sqlx::Error::InvalidArgument(_)
                | sqlx::Error::RowNotFound
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::ColumnIndexOutOfBounds { .. }
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Encode(_)
                | sqlx::Error::Decode(_) => false,
                _ => true,
            },
            Error::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::SystemIoFailure
                        | rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::DiskFull
                )
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
