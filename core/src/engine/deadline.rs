//! Task deadlines: a task created with `deadline_seconds` (its request's, else its
//! template's) gets a row in `task_deadlines` in its creating transaction. The lease reaper of
//! every process ([`TxCx::reap_deadlines`], every 500 ms with the leases) takes the rows whose
//! time passed: an unfinished task is failed (`task.failed` with `reason: deadline_exceeded`,
//! and `task.deadline_exceeded`), its unfinished steps, running ones included, cancelled (a
//! worker's later report of such a step is stale and ignored), its unfinished child tasks
//! cancelled; a task already finished only loses its row.

use serde_json::json;

use super::tx::{StepChange, TxCx};
use crate::clock::format_ms;
use crate::error::Result;
use crate::protocol::JobKey;
use crate::state::{StepState, TaskState};
use crate::store::StepUpdate;

/// At most this many deadlines are handled per reaping.
const DEADLINES_PER_REAP: i64 = 100;

impl TxCx<'_> {
    /// Fails the unfinished tasks whose deadline passed (see the module documentation).
    pub(super) async fn reap_deadlines(&mut self) -> Result<Vec<JobKey>> {
        let now = self.now;
        let mut due = self
            .db()?
            .expired_deadlines(now, DEADLINES_PER_REAP)
            .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // Locked in id order, as every transaction locks tasks.
        due.sort_unstable();
        let ids: Vec<i64> = due.iter().map(|d| d.0).collect();
        self.load_tasks(&ids).await?;
        for (task_id, at) in due {
            self.db()?.delete_deadline(task_id).await?;
            let Some(task) = self.tasks.get(&task_id).cloned() else {
                continue;
            };
            if task.state.is_terminal() {
                continue;
            }
            self.fail_at_deadline(task_id, at).await?;
        }
        Ok(Vec::new())
    }

    async fn fail_at_deadline(&mut self, task_id: i64, at: i64) -> Result<()> {
        let task = self.tasks[&task_id].clone();
        let template = self.template(task.named_task_id).await?;
        let meta = json!({"reason": "deadline_exceeded", "deadline_at": format_ms(at)});
        let mut updates = Vec::new();
        for s in self.task_steps(task_id).await? {
            if !matches!(
                s.state,
                StepState::Pending | StepState::Error | StepState::Waiting | StepState::InProgress
            ) {
                continue;
            }
            if super::decide::is_exhausted(s.state, s.ready_at, s.parked_ready_at) {
                self.adjust(task_id, 0, -1);
            }
            updates.push(StepChange {
                update: StepUpdate::new(s.step_id, s.version, s.state, StepState::Cancelled),
                name: template.steps[s.position as usize].name.clone(),
                attempt: s.attempts,
                meta: meta.clone(),
            });
        }
        self.update_steps(task_id, updates)?;
        self.set_task_states(task_id, &[TaskState::Error], meta)?;
        tracing::info!(task_id, deadline_at = %format_ms(at), "task deadline exceeded: failed");
        // Its unfinished children go with it.
        for c in self.db()?.child_tasks(task_id).await? {
            if c.state.is_finished() || c.state == TaskState::Error {
                continue;
            }
            let child = self.task(c.task_id).await?;
            if TaskState::event(Some(child.state), TaskState::Cancelled).is_some() {
                self.cancel_tree(
                    c.task_id,
                    json!({"reason": "parent_task_deadline_exceeded", "parent_task_id": task_id}),
                )
                .await?;
            }
        }
        Ok(())
    }
}
