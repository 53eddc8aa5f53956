//! A task growing at run time: a decision recorded, then the steps the task's decisions now
//! call for created (which ones: [`super::shape`]) and the steps that will never exist
//! counted as done, so a task completes when every step that exists is done.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::shape::{self, Presence};
use super::tx::TxCx;
use crate::error::{Error, Result};
use crate::state::StepState;
use crate::store::{NewDecision, NewStep};
use crate::template::{StepKind, TaskTemplate};

impl TxCx<'_> {
    /// Records what a decision step chose (positions of its children).
    pub(super) fn record_decision(
        &mut self,
        task_id: i64,
        step_id: i64,
        t: &TaskTemplate,
        chosen: &[usize],
    ) {
        let names: Vec<&str> = chosen.iter().map(|&c| t.steps[c].name.as_str()).collect();
        self.plan_decision(NewDecision {
            task_id,
            step_id,
            chosen: json!(names).to_string(),
        });
    }

    /// Creates the steps of `task_id` its decisions call for now and counts the steps that
    /// will never exist as done. Reads the task's steps and decisions as this transaction
    /// leaves them (a database transaction: a planned cycle stops here and runs the general
    /// way).
    pub(super) async fn grow(&mut self, task_id: i64, t: &TaskTemplate) -> Result<()> {
        let rows = self.task_steps(task_id).await?;
        let decisions = self.db()?.decisions(task_id).await?;
        let n = t.steps.len();
        let mut present = vec![Presence::Unknown; n];
        let mut state = vec![None; n];
        let mut position_of = HashMap::new();
        for r in &rows {
            let p = r.position as usize;
            if p < n {
                present[p] = if r.state == StepState::Cancelled {
                    Presence::Absent
                } else {
                    Presence::Created
                };
                state[p] = Some(r.state);
                position_of.insert(r.step_id, p);
            }
        }
        let mut choices: HashMap<usize, Vec<usize>> = HashMap::new();
        for d in decisions {
            let Some(&p) = position_of.get(&d.step_id) else {
                continue;
            };
            let names: Vec<String> = serde_json::from_str(&d.chosen)
                .map_err(|e| Error::Corrupt(format!("step {}: stored decision: {e}", d.step_id)))?;
            choices.insert(p, names.iter().filter_map(|x| t.step_index(x)).collect());
        }
        // A decision resolved by an operator (or bypassed) chose none.
        for (p, s) in t.steps.iter().enumerate() {
            if s.kind == StepKind::Decision && state[p] == Some(StepState::ResolvedManually) {
                choices.entry(p).or_default();
            }
        }
        let e = shape::expand(t, &present, &choices);
        // Finished rows count as done (a cancelled step too, as `cancel_step` counts it).
        let done_rows = state
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Some(StepState::Complete | StepState::ResolvedManually | StepState::Cancelled)
                )
            })
            .count() as i64;
        let counted = self.tasks[&task_id].steps_done;
        let missing = done_rows + e.absent as i64 - counted;
        if missing != 0 {
            self.adjust(task_id, missing, 0);
        }
        if e.create.is_empty() {
            return Ok(());
        }
        let priority = self.db()?.task_priority(task_id).await? as i32;
        let now = self.now;
        let mut steps = Vec::with_capacity(e.create.len());
        for &i in &e.create {
            let s = &t.steps[i];
            let remaining = s
                .parents
                .iter()
                .filter(|&&p| {
                    e.create.contains(&p)
                        || matches!(state[p], Some(st) if !matches!(st, StepState::Complete | StepState::ResolvedManually))
                })
                .count() as i64;
            if remaining == 0 {
                self.made_ready(&s.handler);
            }
            steps.push(NewStep {
                task_id,
                position: i as i32,
                name: s.name.clone(),
                handler: s.handler.clone(),
                state: StepState::Pending,
                retry_limit: s.max_attempts as i64,
                remaining_parents: remaining,
                ready_at: (remaining == 0).then_some(now),
                priority,
                version: 1,
                parents: s.parents.iter().map(|&q| q as i32).collect(),
                born: false,
            });
        }
        self.work = true;
        for (position, step_id) in self.insert_steps(steps) {
            let name = t.steps[position as usize].name.as_str();
            let meta: Value = json!({"reason": "created by a decision"});
            self.push_new_step(task_id, (step_id, name, 0), StepState::Pending, 1, meta);
        }
        Ok(())
    }
}
