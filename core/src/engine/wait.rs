//! Steps that wait for the world: a handler returns `Wait(signal, correlation_id, timeout,
//! results)` and its step is `waiting` (no lease, no worker slot) until something outside ends
//! it.
//!
//! * **Recording.** `engine/outcome.rs` records the step `in_progress -> waiting` (the wait's
//!   `results`, if any, shown meanwhile) and [`TxCx::record_wait`] its row in `step_waits`
//!   for that attempt: the signal, the correlation id, the deadline. A row speaks for its step
//!   only while the step is `waiting` at that attempt. A wait for a signal that was sent
//!   before it (kept in `task_signals`) completes at once with that signal's payload.
//! * **Ending.** [`Engine::signal`] completes each step of the task waiting for that signal
//!   (or keeps the signal when none waits: no signal is lost; the task's row lock orders a
//!   signal and a step's wait, so one of them sees the other); [`Engine::complete_step`],
//!   [`Engine::fail_step`] end one step; [`Engine::complete_correlated`] the steps waiting
//!   with that id; a deadline passing fails the step as retryable (its handler runs again),
//!   found at lease reaping ([`TxCx::reap_expired_waits`]). Each is a report from `waiting`
//!   through the ordinary outcome rules ([`TxCx::apply_reports_from`]): the parent's
//!   counters, children and settlement as for any outcome.
//! * An outcome from outside is plain results: no decision, fan-out, child or wait is read
//!   from it; no results (null) keeps the wait's own.

use serde_json::Value;

use super::tx::TxCx;
use super::Engine;
use crate::error::{Error, Result};
use crate::protocol::{FailureKind, JobKey, Outcome, Report, StepFailure, Wait};
use crate::state::StepState;
use crate::store::{NewWait, WaitRow};

impl TxCx<'_> {
    /// Records the wait of a step that now waits at `key`'s attempt.
    pub(super) async fn record_wait(&mut self, key: JobKey, w: &Wait) -> Result<()> {
        let now = self.now;
        let deadline_at = w.timeout.map(|t| now + (t * 1000.0).round() as i64);
        self.db()?
            .insert_wait(&NewWait {
                step_id: key.step_id,
                task_id: key.task_id,
                attempt: key.attempt as i64,
                signal: w.signal.as_deref(),
                correlation_id: w.correlation_id.as_deref(),
                deadline_at,
                now,
            })
            .await
    }

    /// Fails the waits whose deadline passed, as retryable (the handler runs again).
    pub(super) async fn reap_expired_waits(&mut self) -> Result<Vec<JobKey>> {
        let now = self.now;
        let expired = self.db()?.expired_waits(now, 1000).await?;
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let reports: Vec<Report> = expired
            .iter()
            .map(|w| {
                let waited = w.deadline_at.map_or(0, |d| d - w.created_at);
                report(
                    w,
                    Outcome::Failed(StepFailure {
                        message: format!("waited {} for {}", seconds(waited), what(w)),
                        kind: FailureKind::Timeout,
                        retry_after_seconds: None,
                        detail: None,
                    }),
                )
            })
            .collect();
        self.apply_reports_from(&reports, StepState::Waiting).await
    }
}

fn seconds(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn what(w: &WaitRow) -> String {
    match (&w.signal, &w.correlation_id) {
        (Some(s), _) => format!("signal {s:?}"),
        (None, Some(c)) => format!("completion of correlation id {c:?}"),
        (None, None) => "completion from outside".into(),
    }
}

fn report(w: &WaitRow, outcome: Outcome) -> Report {
    Report {
        key: JobKey {
            task_id: w.task_id,
            step_id: w.step_id,
            attempt: w.attempt.max(0) as u32,
            position: w.position.max(0) as u32,
        },
        outcome,
    }
}

/// Refuses a payload that cannot be stored (the step stays waiting).
fn storable(what: &str, v: &Value) -> Result<()> {
    match super::decide::nul_path(v) {
        Some(path) => Err(Error::Validation(format!(
            "{what}: the string at {path} contains a NUL character (\\u0000), which cannot be stored"
        ))),
        None => Ok(()),
    }
}

impl Engine {
    /// Sends signal `name` to task `task_id`: completes each of its steps waiting for it, with
    /// `payload` as their results (null: the wait's own); returns how many. When none waits,
    /// the signal is kept and the first step of the task to wait for it takes it.
    pub async fn signal(&self, task_id: i64, name: &str, payload: Value) -> Result<usize> {
        if name.trim().is_empty() {
            return Err(Error::Validation(
                "signal: the name must not be empty".into(),
            ));
        }
        storable("signal payload", &payload)?;
        let mut cx = TxCx::begin(self, self.now()).await?;
        let task = cx.task(task_id).await?;
        if task.state.is_finished() {
            return Err(Error::Conflict(format!(
                "cannot signal task {task_id}: it is {}",
                task.state
            )));
        }
        let waits = cx.db()?.waits_for_signal(task_id, name).await?;
        let n = if waits.is_empty() {
            let text = (!payload.is_null()).then(|| payload.to_string());
            let now = cx.now;
            cx.db()?
                .insert_signal(task_id, name, text.as_deref(), now)
                .await?;
            0
        } else {
            let reports: Vec<Report> = waits
                .iter()
                .map(|w| report(w, Outcome::Complete(payload.clone())))
                .collect();
            let stale = cx.apply_reports_from(&reports, StepState::Waiting).await?;
            reports.len() - stale.len()
        };
        cx.finish(None).await?;
        Ok(n)
    }

    /// Completes a waiting step with `results` (null: the wait's own). A step that is not
    /// waiting is a [`Error::Conflict`] naming its state.
    pub async fn complete_step(&self, task_id: i64, step: &str, results: Value) -> Result<()> {
        storable("results", &results)?;
        self.end_waiting(task_id, step, Outcome::Complete(results), "completed")
            .await
    }

    /// Fails a waiting step: `permanent` for good, else as a retryable failure (its handler
    /// runs again after backoff while attempts remain).
    pub async fn fail_step(
        &self,
        task_id: i64,
        step: &str,
        message: &str,
        permanent: bool,
    ) -> Result<()> {
        if message.trim().is_empty() {
            return Err(Error::Validation(
                "fail_step: the message must not be empty".into(),
            ));
        }
        let f = if permanent {
            StepFailure::permanent(message)
        } else {
            StepFailure::retryable(message)
        };
        self.end_waiting(task_id, step, Outcome::Failed(f), "failed")
            .await
    }

    async fn end_waiting(&self, task_id: i64, step: &str, o: Outcome, verb: &str) -> Result<()> {
        let mut cx = TxCx::begin(self, self.now()).await?;
        // The task locked (and found) first; a cancelled task's waiting steps are cancelled
        // with it, so the state check below refuses them too.
        cx.task(task_id).await?;
        let s = cx.step_named(task_id, step).await?;
        if s.state != StepState::Waiting {
            return Err(Error::Conflict(format!(
                "step {step:?} of task {task_id} is {}; only a waiting step can be {verb} from outside",
                s.state
            )));
        }
        let key = JobKey {
            task_id,
            step_id: s.step_id,
            attempt: s.attempts.max(0) as u32,
            position: s.position.max(0) as u32,
        };
        cx.apply_reports_from(&[Report { key, outcome: o }], StepState::Waiting)
            .await?;
        cx.finish(None).await.map(drop)
    }

    /// Completes every step waiting with this correlation id (the id a handler handed to
    /// another system) with `results`; returns how many.
    pub async fn complete_correlated(&self, correlation_id: &str, results: Value) -> Result<usize> {
        if correlation_id.is_empty() {
            return Err(Error::Validation(
                "complete_correlated: the correlation id must not be empty".into(),
            ));
        }
        storable("results", &results)?;
        let mut cx = TxCx::begin(self, self.now()).await?;
        let waits = cx.db()?.waits_by_correlation(correlation_id).await?;
        if waits.is_empty() {
            return Ok(0);
        }
        let mut ids: Vec<i64> = waits.iter().map(|w| w.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        cx.load_tasks(&ids).await?;
        let reports: Vec<Report> = waits
            .iter()
            .map(|w| report(w, Outcome::Complete(results.clone())))
            .collect();
        let stale = cx.apply_reports_from(&reports, StepState::Waiting).await?;
        cx.finish(None).await?;
        Ok(reports.len() - stale.len())
    }
}
