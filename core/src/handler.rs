//! Rust step handlers: the [`StepHandler`] trait, [`HandlerError`], the [`Registry`] of handlers
//! by name, and [`execute`], the one way a job is run in Rust (timeout counted from the
//! handler's start, panics caught, a missing handler named). The Rust [`crate::worker`] and every
//! binding (for the built-in handlers) run Rust handlers through [`execute`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::protocol::{FailureKind, Job, Outcome, StepFailure};

/// What a handler receives: the claimed job (task id, step name, attempt, context, config,
/// parent results).
pub type StepContext = Job;

/// A handler's failure.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum HandlerError {
    /// Retried while attempts remain; `retry_after` overrides the backoff.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Never retried.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after: Some(after),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent(message.into())
    }

    /// The engine-side failure for this error.
    pub fn into_failure(self) -> StepFailure {
        match self {
            HandlerError::Retryable {
                message,
                retry_after,
            } => StepFailure {
                message,
                kind: FailureKind::Retryable,
                retry_after_seconds: retry_after.map(|d| d.as_secs_f64()),
                detail: None,
            },
            HandlerError::Permanent(message) => StepFailure::permanent(message),
        }
    }
}

impl From<String> for HandlerError {
    fn from(s: String) -> Self {
        HandlerError::retryable(s)
    }
}

impl From<&str> for HandlerError {
    fn from(s: &str) -> Self {
        HandlerError::retryable(s)
    }
}

/// A step handler. The returned JSON value is the step's results.
#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    async fn call(&self, step: &StepContext) -> Result<Value, HandlerError>;
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Value, HandlerError>> + Send>>;

struct FnHandler<F>(F);

#[async_trait]
impl<F> StepHandler for FnHandler<F>
where
    F: Fn(StepContext) -> BoxFut + Send + Sync + 'static,
{
    async fn call(&self, step: &StepContext) -> Result<Value, HandlerError> {
        (self.0)(step.clone()).await
    }
}

/// Handlers by name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn StepHandler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a handler under `name` (the step's `handler_class`, default its step name).
    pub fn register(&mut self, name: impl Into<String>, handler: impl StepHandler) -> &mut Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// Registers an async closure: `registry.register_fn("a", |step| async move { Ok(json!(1)) })`.
    pub fn register_fn<F, Fut>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        let boxed = move |s: StepContext| -> BoxFut { Box::pin(f(s)) };
        self.handlers
            .insert(name.into(), Arc::new(FnHandler(boxed)));
        self
    }

    /// Removes the handler `name` (a host that runs it itself).
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.handlers.remove(name);
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn StepHandler>> {
        self.handlers.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.handlers.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Runs `handler` for `job` and turns what happens into the attempt's [`Outcome`]: its value
/// (complete), its [`HandlerError`] (failed), a panic (a retryable failure naming the panic), the
/// job's `timeout` running out (counted from this call: the handler's start), or no handler at
/// all (a permanent failure naming it).
pub async fn execute(handler: Option<Arc<dyn StepHandler>>, job: Job) -> Outcome {
    let Some(h) = handler else {
        return Outcome::Failed(StepFailure::permanent(format!(
            "no handler named {:?} is registered in this worker",
            job.handler
        )));
    };
    let timeout = job.timeout;
    // Panics are caught where the future is polled, so the worker's own task survives them.
    let fut = CatchUnwind(Box::pin(async move { h.call(&job).await }));
    let joined = match timeout {
        None => Some(fut.await),
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
    };
    match joined {
        None => Outcome::Failed(StepFailure::timeout(
            timeout.expect("timed out with a limit"),
        )),
        Some(Ok(Ok(v))) => Outcome::Complete(v),
        Some(Ok(Err(e))) => Outcome::Failed(e.into_failure()),
        Some(Err(panic)) => Outcome::Failed(
            StepFailure::retryable(format!("handler panicked: {}", panic_message(panic)))
                .detail(json!({"panic": true})),
        ),
    }
}

/// The failure of a handler whose result cannot be stored as JSON (a host language's value
/// that does not convert); `reason` says why. Permanent: running it again returns the same.
pub fn not_json(reason: impl std::fmt::Display) -> StepFailure {
    StepFailure::not_json(reason)
}

type Panic = Box<dyn std::any::Any + Send>;

/// Polls a boxed future, turning a panic inside it into an error.
struct CatchUnwind<F: ?Sized>(Pin<Box<F>>);

impl<F: Future + ?Sized> Future for CatchUnwind<F> {
    type Output = std::result::Result<F::Output, Panic>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(p) => std::task::Poll::Ready(Err(p)),
        }
    }
}

fn panic_message(p: Panic) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
