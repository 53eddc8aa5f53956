//! What a task becomes once its counters change ([`super::decide::settle_path`] decides).
//! (Parking a blocked task's claimable steps is recorded with a transaction's last writes:
//! `TxCx::repark`.)

use super::decide;
use super::tx::TxCx;
use crate::error::Result;
use crate::state::TaskState;

impl TxCx<'_> {
    /// Moves the task on if its counters say so: complete when every step is done; error when
    /// a step is out of attempts and nothing is in flight; back to pending when an operator
    /// unblocked it.
    pub(super) async fn settle(&mut self, task_id: i64) -> Result<()> {
        let row = &self.tasks[&task_id];
        let counts = decide::TaskCounts {
            state: row.state,
            steps_total: row.steps_total,
            steps_done: row.steps_done,
            steps_blocked: row.steps_blocked,
        };
        let running = if counts.needs_running_count() {
            Some(self.count_running(task_id).await?)
        } else {
            None
        };
        let Some((path, meta)) = decide::settle_path(&counts, running) else {
            return Ok(());
        };
        if path.contains(&TaskState::Pending) {
            self.work = true;
        }
        if self.engine.metrics_on() {
            if let Some(&end @ (TaskState::Complete | TaskState::Error)) = path.last() {
                let t = self.template(self.tasks[&task_id].named_task_id).await?;
                metrics::counter!(
                    "tasker_tasks_finished_total",
                    "namespace" => t.namespace.clone(),
                    "name" => t.name.clone(),
                    "state" => end.as_str()
                )
                .increment(1);
            }
        }
        self.set_task_states(task_id, path, meta)
    }
}
