//! Planned cycles: a worker cycle decided from rows the engine already knows, sent to the
//! database as one statement (issue 13, "one round trip per cycle").
//!
//! Recording outcomes needs the task rows (state, counters, version) and the versions of the
//! steps being reported. A worker learned both when it claimed the steps and when it committed
//! its last cycle, so the engine keeps them ([`Known`]) and runs the *same* decision code
//! ([`super::tx::TxCx`]: `apply_reports`, `settle`, the claim) with the known rows as its
//! source of reads ([`super::tx::Source::Known`]). The store applies the recorded plan in one
//! statement, after checking that what the engine assumed still holds (task rows unchanged,
//! each step at the version assumed); if not, it writes nothing and answers
//! [`Error::PlanStale`], and the engine runs the cycle the general way (a transaction that
//! reads, locks and decides). A plan that needs anything not known (a failure's
//! `retry_limit`, a blocked task's running count, a template not yet loaded, expired leases)
//! stops at once with the same error, before any I/O.
//!
//! The decisions therefore live once, in Rust; the write path is the same for both
//! ([`crate::store::Plan`]).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::protocol::JobKey;
use crate::state::StepState;
use crate::store::{ClaimedStep, StepLock, TaskRow};

/// Past this many entries the known rows are forgotten (a worker's working set is its
/// in-flight steps and their tasks; anything else is stale).
const KNOWN_MAX: usize = 100_000;

/// Task rows and step versions this engine saw last, at its own claims and commits.
#[derive(Debug, Default)]
pub(crate) struct Known {
    tasks: HashMap<i64, TaskRow>,
    /// step_id -> version after the claim (what an outcome's update expects).
    steps: HashMap<i64, i64>,
}

impl Known {
    /// Remembers the steps just claimed and their tasks as the claim saw them (the claim runs
    /// after a transaction's other writes, so its view of a task is the latest).
    pub(crate) fn claimed(&mut self, claimed: &[ClaimedStep]) {
        if self.steps.len() + claimed.len() > KNOWN_MAX || self.tasks.len() > KNOWN_MAX {
            self.steps.clear();
            self.tasks.clear();
        }
        for s in claimed {
            self.steps.insert(s.step_id, s.version);
            self.tasks.insert(
                s.task_id,
                TaskRow {
                    task_id: s.task_id,
                    named_task_id: s.named_task_id,
                    state: s.task_state,
                    steps_total: s.steps_total,
                    steps_done: s.steps_done,
                    steps_blocked: s.steps_blocked,
                    version: s.task_version,
                    // Not paused at the version the claim read: a pause parks the task's
                    // claimable steps and raises its version (a plan assuming this fails
                    // its guard).
                    paused: false,
                },
            );
        }
    }

    /// After a commit: the task rows as the transaction left them (it held their locks), and
    /// the reported steps are no longer running here.
    pub(crate) fn committed<'a>(
        &mut self,
        tasks: impl Iterator<Item = &'a TaskRow>,
        reported: impl Iterator<Item = i64>,
    ) {
        for t in tasks {
            if t.state.is_terminal() {
                self.tasks.remove(&t.task_id);
            } else {
                self.tasks.insert(t.task_id, t.clone());
            }
        }
        for s in reported {
            self.steps.remove(&s);
        }
    }

    /// Forgets tasks (their planned cycle was refused: they changed elsewhere).
    pub(crate) fn forget(&mut self, task_ids: impl Iterator<Item = i64>) {
        for t in task_ids {
            self.tasks.remove(&t);
        }
    }

    /// The known rows of these tasks, or [`Error::PlanStale`] if one is not known.
    pub(crate) fn tasks(&self, ids: &[i64]) -> Result<Vec<TaskRow>> {
        ids.iter()
            .map(|id| self.tasks.get(id).cloned().ok_or(Error::PlanStale))
            .collect()
    }

    /// The reported steps as this engine's claims left them: running at the attempt reported,
    /// at the version known (the plan's step updates expect exactly that); their retry limits
    /// are not known (0).
    pub(crate) fn running(&self, keys: &[JobKey]) -> Result<HashMap<i64, StepLock>> {
        keys.iter()
            .map(|k| {
                let version = *self.steps.get(&k.step_id).ok_or(Error::PlanStale)?;
                Ok((
                    k.step_id,
                    StepLock {
                        step_id: k.step_id,
                        task_id: k.task_id,
                        state: StepState::InProgress,
                        attempts: k.attempt as i64,
                        version,
                        retry_limit: 0,
                    },
                ))
            })
            .collect()
    }
}
