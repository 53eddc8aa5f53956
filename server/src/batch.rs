//! Group commit for `POST /tasks`: requests that arrive while a creation transaction is in
//! flight are created together in the next one (one durable commit for many tasks). A batch
//! that fails (one bad request makes `create_tasks_once` refuse all of them) is retried one
//! request at a time, so each request gets its own answer and nothing is lost.
//!
//! Traces: a lone request is created inside its own span; a batch runs in a
//! `tasker.create_tasks` span linked to every request's span.

use tasker_core::{Engine, Result, TaskRequest};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, Span};

/// At most this many requests share a transaction.
const MAX_BATCH: usize = 64;

type Job = (TaskRequest, oneshot::Sender<Result<(i64, bool)>>, Span);

/// Hands creation requests to the batching task.
#[derive(Clone)]
pub struct Creator {
    tx: mpsc::Sender<Job>,
}

impl Creator {
    /// Starts the batching task on the current runtime.
    pub fn start(engine: Engine) -> Creator {
        let (tx, mut rx) = mpsc::channel::<Job>(1024);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                if batch.len() == 1 {
                    let (req, reply, span) = batch.pop().expect("one");
                    let _ = reply.send(engine.create_task_once(req).instrument(span).await);
                    continue;
                }
                let span = tracing::info_span!("tasker.create_tasks", count = batch.len());
                for (_, _, s) in &batch {
                    tasker_core::telemetry::link(&span, s);
                }
                let reqs: Vec<TaskRequest> = batch.iter().map(|(r, _, _)| r.clone()).collect();
                match engine.create_tasks_once(reqs).instrument(span).await {
                    Ok(ids) => {
                        for ((_, reply, _), id) in batch.into_iter().zip(ids) {
                            let _ = reply.send(Ok(id));
                        }
                    }
                    Err(_) => {
                        for (req, reply, span) in batch {
                            let _ = reply.send(engine.create_task_once(req).instrument(span).await);
                        }
                    }
                }
            }
        });
        Creator { tx }
    }

    /// Creates the task (with others arriving at the same time): `(id, created)`.
    pub async fn create(&self, req: TaskRequest) -> Result<(i64, bool)> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((req, reply, Span::current()))
            .await
            .map_err(|_| tasker_core::Error::Internal("the task creator stopped".into()))?;
        rx.await.map_err(|_| {
            tasker_core::Error::Internal("the task creator dropped a request".into())
        })?
    }
}
