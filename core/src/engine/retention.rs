//! Retention: removing finished tasks once they are old ([`Engine::prune`]), by hand or in
//! every worker when [`super::EngineOptions::retention`] is set.
//!
//! A prune deletes in batches of [`PRUNE_BATCH`] tasks, each its own short transaction
//! (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so it never waits for a task a worker holds, and a
//! worker never waits long for it), oldest ids first; a task goes with its steps, transitions,
//! waits, signals, decisions, reschedule counts and deadline.

use std::time::Duration;

use super::Engine;
use crate::error::{Error, Result};
use crate::state::TaskState;
use crate::store::PruneBatch;

/// Tasks deleted per transaction.
pub const PRUNE_BATCH: i64 = 500;

/// How often a worker with a retention setting prunes.
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The states a prune removes unless told: the finished ones. Tasks in `error` wait for an
/// operator, so they are kept unless named.
pub const PRUNE_STATES: [TaskState; 3] = [
    TaskState::Complete,
    TaskState::Cancelled,
    TaskState::ResolvedManually,
];

/// What workers prune by themselves ([`super::EngineOptions::retention`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Tasks that ended longer ago than this.
    pub older_than: Duration,
    /// In these states ([`PRUNE_STATES`] when empty).
    pub statuses: Vec<TaskState>,
}

impl Engine {
    /// Removes the tasks in `statuses` ([`PRUNE_STATES`] when empty; each must be a state no
    /// work follows, `error` included) that ended more than `older_than` ago, with everything
    /// kept for them; returns how many tasks. A task's child tasks are pruned by their own
    /// age and state.
    pub async fn prune(&self, older_than: Duration, statuses: &[TaskState]) -> Result<u64> {
        let states: &[TaskState] = if statuses.is_empty() {
            &PRUNE_STATES
        } else {
            statuses
        };
        if let Some(s) = states.iter().find(|s| !s.is_terminal()) {
            return Err(Error::Validation(format!(
                "prune: status {s} is not a state a task ends in (complete, error, cancelled, resolved_manually)"
            )));
        }
        let before = self.now() - older_than.as_millis().min(i64::MAX as u128) as i64;
        let mut total = 0;
        for state in states {
            loop {
                let mut tx = self.inner.store.begin(true).await?;
                let n = tx
                    .prune_tasks(&PruneBatch {
                        state: state.as_str(),
                        before,
                        limit: PRUNE_BATCH,
                    })
                    .await?;
                tx.commit().await?;
                total += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
                // Let the process's other work (a worker's lanes) in between batches.
                tokio::task::yield_now().await;
            }
        }
        if total > 0 {
            tracing::info!(tasks = total, "pruned finished tasks");
        }
        Ok(total)
    }

    /// Prunes by the engine's retention setting every [`RETENTION_EVERY`] until dropped;
    /// never ends (and does nothing) without one.
    pub async fn run_retention(&self) {
        let Some(r) = self.inner.opts.retention.clone() else {
            return std::future::pending().await;
        };
        loop {
            if let Err(e) = self.prune(r.older_than, &r.statuses).await {
                tracing::warn!(error = %e, "pruning old tasks failed; trying again later");
            }
            tokio::time::sleep(RETENTION_EVERY).await;
        }
    }
}
