//! Planned cycles: a worker cycle decided from rows the engine already knows, sent to the
//! database as one statement (issue 13, "one round trip per cycle").
//!
//! Recording outcomes needs the task rows (state, counters, version) and the versions of the
//! steps being reported. A worker learned both when it claimed the steps and when it committed
//! its last cycle, so the engine keeps them ([`Known`]) and runs the *same* decision code
//! ([`super::tx::TxCx`], `apply_reports`, `settle`, `repark`) against a [`PlanTx`]: a
//! transaction that answers reads from what is known and records every write into a
//! [`Plan`]. The store then applies the plan in one statement, after checking that what the
//! engine assumed still holds (task rows unchanged, each step at the version assumed); if not,
//! it writes nothing and answers [`Error::PlanStale`], and the engine runs the cycle the
//! general way (a transaction that reads, locks and decides). A plan that needs anything not
//! known (a failure's `retry_limit`, a blocked task's running count, a template not yet
//! loaded, expired leases) stops at once with the same error, before any I/O.
//!
//! The decisions therefore live once, in Rust; the store only executes (its SQL functions are
//! shared by both paths).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::store::{
    ClaimSpec, ClaimedStep, NewStep, NewTask, Plan, StepRow, StepUpdate, StoreTx, TaskRow,
    TaskUpdate, TemplateRow, TransitionRow,
};

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
    /// Remembers the steps just claimed and their tasks as the claim saw them; a task this
    /// transaction held is remembered later, by [`Known::committed`].
    pub(crate) fn claimed(&mut self, claimed: &[ClaimedStep], held: &HashMap<i64, TaskRow>) {
        if self.steps.len() + claimed.len() > KNOWN_MAX || self.tasks.len() > KNOWN_MAX {
            self.steps.clear();
            self.tasks.clear();
        }
        for s in claimed {
            self.steps.insert(s.step_id, s.version);
            if !held.contains_key(&s.task_id) {
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
                    },
                );
            }
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

    /// Forgets a task (its planned cycle was refused: it changed elsewhere).
    pub(crate) fn forget(&mut self, task_ids: impl Iterator<Item = i64>) {
        for t in task_ids {
            self.tasks.remove(&t);
        }
    }
}

/// A transaction that plans instead of executing (see the module docs).
pub(crate) struct PlanTx {
    known: Arc<Mutex<Known>>,
    plan: Plan,
}

impl PlanTx {
    pub(crate) fn new(known: Arc<Mutex<Known>>, now: i64, durable: bool) -> PlanTx {
        PlanTx {
            known,
            plan: Plan {
                now,
                durable,
                ..Plan::default()
            },
        }
    }
}

/// A read the plan cannot answer from what is known.
fn unknown<T>() -> Result<T> {
    Err(Error::PlanStale)
}

#[async_trait]
impl StoreTx for PlanTx {
    fn into_plan(self: Box<Self>) -> Option<Plan> {
        Some(self.plan)
    }

    async fn commit(self: Box<Self>, _work_ready: bool, _task_changed: bool) -> Result<()> {
        Err(Error::Internal(
            "a planned cycle is executed by the store, not committed".into(),
        ))
    }

    async fn find_template(&mut self, _: &str, _: &str, _: &str) -> Result<Option<TemplateRow>> {
        unknown()
    }

    async fn insert_template(
        &mut self,
        _: &str,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: &str,
        _: &str,
        _: i64,
        _: i64,
    ) -> Result<i64> {
        unknown()
    }

    async fn template_by_id(&mut self, _: i64) -> Result<Option<TemplateRow>> {
        unknown()
    }

    async fn task_by_idempotency_key(&mut self, _: &str) -> Result<Option<i64>> {
        unknown()
    }

    async fn insert_task(&mut self, _: &NewTask<'_>) -> Result<i64> {
        unknown()
    }

    async fn insert_steps(&mut self, _: i64, _: &[NewStep<'_>], _: i64) -> Result<Vec<(i32, i64)>> {
        unknown()
    }

    /// Stand-in ids (negative) until the store inserts the rows; a task with an idempotency
    /// key needs a look-up first, so it is not planned.
    async fn insert_task_with_steps(
        &mut self,
        task: &NewTask<'_>,
        steps: &[NewStep<'_>],
    ) -> Result<(i64, Vec<(i32, i64)>)> {
        if task.idempotency_key.is_some() {
            return unknown();
        }
        Ok(self.plan.new_rows.push(task, steps))
    }

    /// The known rows, each becoming a guard.
    async fn lock_tasks(&mut self, task_ids: &[i64]) -> Result<Vec<TaskRow>> {
        let known = self.known.lock().unwrap();
        let mut rows = Vec::with_capacity(task_ids.len());
        for id in task_ids {
            rows.push(known.tasks.get(id).cloned().ok_or(Error::PlanStale)?);
        }
        drop(known);
        self.plan.guards.extend(rows.iter().cloned());
        Ok(rows)
    }

    async fn task_steps(&mut self, _: i64) -> Result<Vec<StepRow>> {
        unknown()
    }

    async fn count_running(&mut self, _: i64) -> Result<i64> {
        unknown()
    }

    async fn update_task_details(
        &mut self,
        _: i64,
        _: Option<&str>,
        _: Option<&str>,
        _: i64,
    ) -> Result<()> {
        unknown()
    }

    /// Every update is assumed to apply to the version the claim left; the store checks it.
    async fn update_steps(&mut self, updates: &[StepUpdate], _now: i64) -> Result<Vec<(i64, i64)>> {
        let known = self.known.lock().unwrap();
        let mut out = Vec::with_capacity(updates.len());
        for u in updates {
            let v = *known.steps.get(&u.step_id).ok_or(Error::PlanStale)?;
            self.plan.step_updates.push(u.clone());
            self.plan.expect_versions.push(v);
            out.push((u.step_id, v + u.transitions));
        }
        Ok(out)
    }

    /// Recorded; the store reports how many became claimable ([`crate::store::PlanOutcome`]).
    async fn decrement_parents(
        &mut self,
        decrements: &[(i64, i32, i64)],
        _now: i64,
    ) -> Result<u64> {
        self.plan.decrements.extend_from_slice(decrements);
        Ok(0)
    }

    async fn update_tasks(&mut self, updates: &[TaskUpdate], _now: i64) -> Result<()> {
        self.plan.task_updates.extend_from_slice(updates);
        Ok(())
    }

    async fn park(&mut self, task_ids: &[i64], _now: i64) -> Result<()> {
        self.plan.park.extend_from_slice(task_ids);
        Ok(())
    }

    async fn unpark(&mut self, task_ids: &[i64], _now: i64) -> Result<()> {
        self.plan.unpark.extend_from_slice(task_ids);
        Ok(())
    }

    async fn claim(&mut self, _: &ClaimSpec<'_>) -> Result<Vec<ClaimedStep>> {
        unknown()
    }

    async fn results(
        &mut self,
        _: &[(i64, i32)],
    ) -> Result<Vec<(i64, i32, String, Option<String>)>> {
        unknown()
    }

    async fn retry_limits(&mut self, _: &[i64]) -> Result<Vec<(i64, i64)>> {
        unknown()
    }

    async fn set_retry_limit(
        &mut self,
        _: i64,
        _: i64,
        _: Option<Option<i64>>,
        _: i64,
    ) -> Result<()> {
        unknown()
    }

    async fn expired_leases(&mut self, _: i64, _: i64) -> Result<Vec<(i64, i64, i32, i64)>> {
        unknown()
    }

    async fn extend_leases(&mut self, _: &[(i64, i64)], _: i64, _: i64) -> Result<u64> {
        unknown()
    }

    async fn insert_transitions(&mut self, rows: &[TransitionRow]) -> Result<()> {
        self.plan.transitions.extend_from_slice(rows);
        Ok(())
    }
}
