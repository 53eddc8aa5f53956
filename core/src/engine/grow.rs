//! A task growing at run time: a decision or fan-out recorded, then the steps the task's
//! decisions now call for created (which ones: [`super::shape`]; a fan-out's batch workers as
//! one instance per item) and the steps that will never exist counted as done, so a task
//! completes when every step that exists is done.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::shape::{self, Presence};
use super::tx::TxCx;
use crate::error::{Error, Result};
use crate::state::StepState;
use crate::store::{NewDecision, NewStep, StepRow};
use crate::template::{instance_name, StepKind, TaskTemplate};

/// Complete, resolved or cancelled: counted in `steps_done`.
fn done(s: StepState) -> bool {
    matches!(
        s,
        StepState::Complete | StepState::ResolvedManually | StepState::Cancelled
    )
}

/// What the rows of one task say, by template position.
struct Rows {
    /// Each position's rows' states (a fan-out's instances share one position).
    states: Vec<Vec<StepState>>,
    present: Vec<Presence>,
    position_of: HashMap<i64, usize>,
}

impl Rows {
    fn of(t: &TaskTemplate, rows: &[StepRow]) -> Rows {
        let n = t.steps.len();
        let mut r = Rows {
            states: vec![Vec::new(); n],
            present: vec![Presence::Unknown; n],
            position_of: HashMap::new(),
        };
        for row in rows {
            let p = row.position as usize;
            if p < n {
                r.states[p].push(row.state);
                r.position_of.insert(row.step_id, p);
            }
        }
        for (p, states) in r.states.iter().enumerate() {
            r.present[p] = match states.as_slice() {
                [] => Presence::Unknown,
                // A cancelled step counts as never created for the steps below it.
                [StepState::Cancelled] if t.steps[p].kind != StepKind::BatchWorker => {
                    Presence::Absent
                }
                _ => Presence::Created,
            };
        }
        r
    }

    /// Rows at `p` that are not done yet.
    fn undone(&self, p: usize) -> usize {
        self.states[p].iter().filter(|&&s| !done(s)).count()
    }
}

impl TxCx<'_> {
    /// Records what a decision step chose, or which batch workers a fan-out fanned out to
    /// (positions of its children).
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

    /// The children each decided step of `task_id` opened, by position: recorded choices, and
    /// none for a decision or fan-out resolved by an operator (or bypassed).
    async fn choices(
        &mut self,
        task_id: i64,
        t: &TaskTemplate,
        rows: &Rows,
    ) -> Result<HashMap<usize, Vec<usize>>> {
        let mut choices: HashMap<usize, Vec<usize>> = HashMap::new();
        for d in self.db()?.decisions(task_id).await? {
            let Some(&p) = rows.position_of.get(&d.step_id) else {
                continue;
            };
            let names: Vec<String> = serde_json::from_str(&d.chosen)
                .map_err(|e| Error::Corrupt(format!("step {}: stored decision: {e}", d.step_id)))?;
            choices.insert(p, names.iter().filter_map(|x| t.step_index(x)).collect());
        }
        for (p, s) in t.steps.iter().enumerate() {
            if matches!(s.kind, StepKind::Decision | StepKind::Batchable)
                && rows.states[p] == [StepState::ResolvedManually]
            {
                choices.entry(p).or_default();
            }
        }
        Ok(choices)
    }

    /// Creates the steps of `task_id` its decisions and fan-outs call for now and counts the
    /// steps that will never exist as done. Reads the task's steps and decisions as this
    /// transaction leaves them (a database transaction: a planned cycle stops here and runs
    /// the general way); a fan-out's items are the ones this transaction recorded
    /// ([`TxCx::fan_outs`]).
    pub(super) async fn grow(&mut self, task_id: i64, t: &TaskTemplate) -> Result<()> {
        let task_rows = self.task_steps(task_id).await?;
        let mut rows = Rows::of(t, &task_rows);
        let choices = self.choices(task_id, t, &rows).await?;
        // A batch worker whose fan-out happened in an earlier transaction exists as its
        // instances (none for no items); one fanned out now is created below.
        for (p, s) in t.steps.iter().enumerate() {
            if s.kind == StepKind::BatchWorker && rows.present[p] == Presence::Unknown {
                let parent = s.parents[0];
                let fanned = choices.get(&parent).is_some_and(|c| c.contains(&p));
                if fanned && !self.fan_outs.contains_key(&(task_id, parent)) {
                    rows.present[p] = Presence::Created;
                }
            }
        }
        let e = shape::expand(t, &rows.present, &choices);
        let done_rows = rows.states.iter().flatten().filter(|&&s| done(s)).count() as i64;
        let counted = self.tasks[&task_id].steps_done;
        let missing = done_rows + e.absent as i64 - counted;
        if missing != 0 {
            self.adjust(task_id, missing, 0);
        }
        if e.create.is_empty() {
            return Ok(());
        }
        let items = |cx: &Self, p: usize| -> Result<Vec<Value>> {
            cx.fan_outs
                .get(&(task_id, t.steps[p].parents[0]))
                .cloned()
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "batch worker {:?} of task {task_id}: its fan-out's items are not at hand",
                        t.steps[p].name
                    ))
                })
        };
        // How many rows each new position gets: a batch worker one per item.
        let mut count = HashMap::new();
        for &i in &e.create {
            let n = if t.steps[i].kind == StepKind::BatchWorker {
                let n = items(self, i)?.len();
                self.adjust_total(task_id, n as i64 - 1);
                n
            } else {
                1
            };
            count.insert(i, n);
        }
        let priority = self.db()?.task_priority(task_id).await? as i32;
        let now = self.now;
        let mut steps = Vec::new();
        let mut metas = Vec::new();
        for &i in &e.create {
            let s = &t.steps[i];
            let remaining = s
                .parents
                .iter()
                .map(|&p| count.get(&p).copied().unwrap_or_else(|| rows.undone(p)))
                .sum::<usize>() as i64;
            if remaining == 0 && count[&i] > 0 {
                self.made_ready(&s.handler);
            }
            let below_fan_out = s
                .parents
                .iter()
                .any(|&p| t.steps[p].kind == StepKind::BatchWorker);
            let row = |name: String, batch: Option<(usize, &Value)>| NewStep {
                task_id,
                position: i as i32,
                name,
                handler: s.handler.clone(),
                state: StepState::Pending,
                retry_limit: s.max_attempts as i64,
                remaining_parents: remaining,
                ready_at: (remaining == 0).then_some(now),
                priority,
                version: 1,
                // A step below a fan-out has many parent rows: the engine reads them.
                parents: if below_fan_out {
                    Vec::new()
                } else {
                    s.parents.iter().map(|&q| q as i32).collect()
                },
                born: false,
                batch_index: batch.map(|b| b.0 as i64),
                batch: batch.map(|b| b.1.to_string()),
            };
            if s.kind == StepKind::BatchWorker {
                for (k, item) in items(self, i)?.iter().enumerate() {
                    steps.push(row(instance_name(&s.name, k), Some((k, item))));
                    metas.push(json!({"reason": "created by a fan-out", "batch_index": k}));
                }
            } else {
                steps.push(row(s.name.clone(), None));
                // Reached once the steps above it decided: below a fan-out, or a decision.
                let by = if below_fan_out {
                    "created below a fan-out"
                } else {
                    "created by a decision"
                };
                metas.push(json!({ "reason": by }));
            }
        }
        for &i in &e.create {
            if t.steps[i].kind == StepKind::BatchWorker {
                // Created: a later look at this task counts them from their rows.
                self.fan_outs.remove(&(task_id, t.steps[i].parents[0]));
            }
        }
        self.work = true;
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        let ids = self.insert_steps(steps);
        for ((name, (_, step_id)), meta) in names.iter().zip(ids).zip(metas) {
            self.push_new_step(task_id, (step_id, name, 0), StepState::Pending, 1, meta);
        }
        Ok(())
    }
}
