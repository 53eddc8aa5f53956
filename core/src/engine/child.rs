//! Child tasks: a step whose handler returned `ChildTask(...)` waits while the task it created
//! runs, and the child's end is the step's outcome.
//!
//! * **Creating.** [`ChildRequests::prepare`] checks each requested child against its template
//!   before the reports are decided: an unknown template or a context its schema refuses fails
//!   the step permanently, naming why. The outcome code ([`super::outcome`]) then records the
//!   step `waiting` and inserts the child, linked by `parent_task_id` and `parent_step_id`, in
//!   the same transaction. (Such a cycle runs the general way, on a database transaction.)
//! * **Ending.** The transaction that brings a child to `complete`, `error` or `cancelled`
//!   learns it from the store ([`crate::store::PlanOutcome::finished_children`]); after its
//!   commit the engine hands each child's outcome to its parent's step in a transaction of its
//!   own ([`Engine::settle_children`]), which locks only the parents. Rows are locked in task
//!   id order everywhere and a parent's id is below its child's, so a transaction that holds a
//!   child never waits for its parent. A crash between the two commits leaves a finished child
//!   and a step still waiting: the sweep at each lease reaping
//!   ([`Engine::settle_orphaned_children`]) finds and finishes them.
//! * **Which child.** A step retried after its child failed creates a new child; the newest
//!   child of a step (the highest id) is the one it waits for, and an older one's end is
//!   ignored.
//! * **Cancelling** a task cancels its unfinished children, in the same transaction
//!   ([`super::operator`]).
//! * **Depth.** Children nest at most [`MAX_DEPTH`] levels below their root task: a step of a
//!   task that deep asking for another fails permanently (a template whose step creates a
//!   child of its own template would otherwise recurse without end).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::create::{Prepared, TaskRequest};
use super::tx::TxCx;
use super::Engine;
use crate::error::{Error, Result};
use crate::protocol::{ChildTask, JobKey, Outcome, Report, Shaped, StepFailure};
use crate::state::{StepState, TaskState};
use crate::store::{StepRow, TaskDetail};

/// How many levels of child tasks may hang below a root task.
pub const MAX_DEPTH: usize = 32;

/// The children a batch of reports asks for, checked: by the reporting step's id, the task
/// ready to insert or why it cannot be created.
pub(super) struct ChildRequests(HashMap<i64, std::result::Result<Prepared, String>>);

impl ChildRequests {
    /// Checks the child task of every report that returned one. Planning: [`Error::PlanStale`]
    /// (a creation reads the parent's priority and runs the general way).
    pub(super) async fn prepare(cx: &mut TxCx<'_>, reports: &[Report]) -> Result<ChildRequests> {
        let mut out = HashMap::new();
        for r in reports {
            let Outcome::Complete(v) = &r.outcome else {
                continue;
            };
            let Some(Ok(Shaped::ChildTask(c))) = Shaped::of(v) else {
                continue;
            };
            let priority = cx.db()?.task_priority(r.key.task_id).await?;
            let Some(task) = cx.tasks.get(&r.key.task_id).cloned() else {
                continue;
            };
            let template = cx.template(task.named_task_id).await?;
            let step = template
                .steps
                .get(r.key.position as usize)
                .map_or("?", |s| s.name.as_str());
            let depth = depth(cx.engine, r.key.task_id).await?;
            if depth >= MAX_DEPTH {
                out.insert(
                    r.key.step_id,
                    Err(format!(
                        "step {step:?} returned ChildTask {:?}, but task {} is already {depth} levels of child tasks below its root (at most {MAX_DEPTH})",
                        c.name, r.key.task_id
                    )),
                );
                continue;
            }
            let req = request(&c, r.key, step, priority);
            let prepared = match cx.engine.prepare(req).await {
                Ok(mut p) => {
                    p.parent = Some((r.key.task_id, r.key.step_id));
                    Ok(p)
                }
                Err(Error::Validation(m) | Error::NotFound(m)) => Err(format!(
                    "step {step:?} returned ChildTask {:?}, which cannot be created: {m}",
                    c.name
                )),
                Err(e) => return Err(e),
            };
            out.insert(r.key.step_id, prepared);
        }
        Ok(ChildRequests(out))
    }

    /// No children (reports from outside a waiting step ask for none).
    pub(super) fn none() -> ChildRequests {
        ChildRequests(HashMap::new())
    }

    /// The child the report of this step asks for, if any.
    pub(super) fn take(&mut self, step_id: i64) -> Option<std::result::Result<Prepared, String>> {
        self.0.remove(&step_id)
    }
}

/// How many parents a task has above it (0 for a root task), counted up to [`MAX_DEPTH`].
async fn depth(engine: &Engine, task_id: i64) -> Result<usize> {
    let mut depth = 0;
    let mut id = task_id;
    while depth < MAX_DEPTH {
        match engine
            .inner
            .store
            .task(id)
            .await?
            .and_then(|t| t.parent_task_id)
        {
            Some(parent) => {
                depth += 1;
                id = parent;
            }
            None => break,
        }
    }
    Ok(depth)
}

/// The creation request of a child task: its parent's priority, and who asked for it.
fn request(c: &ChildTask, key: JobKey, step: &str, priority: i64) -> TaskRequest {
    TaskRequest {
        name: c.name.clone(),
        namespace: c.namespace.clone(),
        version: c.version.clone(),
        context: c.context.clone(),
        initiator: Some(format!("task {}", key.task_id)),
        source_system: Some("child_task".into()),
        reason: Some(format!("step {step:?} of task {}", key.task_id)),
        priority: priority.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        ..TaskRequest::default()
    }
}

/// What a finished child means for the step waiting for it: complete, the step completes with
/// `{"task_id", "status": "complete", "results": {step: results}}`; in `error` or cancelled,
/// the step fails permanently with the child's error. `None` for a child not finished.
pub fn child_outcome(child: &TaskDetail, steps: &[StepRow]) -> Option<Outcome> {
    let id = child.row.task_id;
    let key = format!(
        "{}/{} {}",
        child.namespace, child.name, child.template_version
    );
    match child.row.state {
        TaskState::Complete | TaskState::ResolvedManually => {
            let mut results = Map::new();
            for s in steps {
                let v = s
                    .results
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                    .unwrap_or(Value::Null);
                results.insert(s.name.clone(), v);
            }
            Some(Outcome::Complete(json!({
                "task_id": id,
                "status": child.row.state.as_str(),
                "results": results,
            })))
        }
        TaskState::Error => {
            let failed: Vec<&StepRow> = steps
                .iter()
                .filter(|s| s.state == StepState::Error && s.error.is_some())
                .collect();
            let mut errors = Map::new();
            let mut first = None;
            for s in &failed {
                let e: Value = serde_json::from_str(s.error.as_deref().unwrap_or("null"))
                    .unwrap_or(Value::Null);
                let message = e["message"].as_str().unwrap_or("failed").to_owned();
                first.get_or_insert_with(|| format!("step {:?}: {message}", s.name));
                errors.insert(s.name.clone(), e);
            }
            let mut f = StepFailure::permanent(format!(
                "child task {id} ({key}) failed: {}",
                first.unwrap_or_else(|| "no step says why".into())
            ));
            f.detail = Some(json!({"task_id": id, "status": "error", "errors": errors}));
            Some(Outcome::Failed(f))
        }
        TaskState::Cancelled => {
            let mut f = StepFailure::permanent(format!("child task {id} ({key}) was cancelled"));
            f.detail = Some(json!({"task_id": id, "status": "cancelled"}));
            Some(Outcome::Failed(f))
        }
        TaskState::Pending | TaskState::InProgress => None,
    }
}

impl Engine {
    /// Hands each finished child task's outcome to the step waiting for it, in one
    /// transaction that locks the parents (see the module docs). A child whose step no longer
    /// waits for it (resolved, cancelled, or waiting for a newer child) changes nothing.
    pub(super) async fn settle_children(&self, ids: &[i64]) -> Result<()> {
        let mut ends = Vec::new();
        for &id in ids {
            let Some(child) = self.inner.store.task(id).await? else {
                continue;
            };
            let (Some(parent), Some(step)) = (child.parent_task_id, child.parent_step_id) else {
                continue;
            };
            let steps = match child.row.state {
                TaskState::Complete | TaskState::Error => self.inner.store.steps(id).await?,
                _ => Vec::new(),
            };
            if let Some(outcome) = child_outcome(&child, &steps) {
                ends.push((id, parent, step, outcome));
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        let mut cx = TxCx::begin(self, self.now()).await?;
        let mut reports = Vec::with_capacity(ends.len());
        for (child, parent, step, outcome) in ends {
            let Some(s) = cx.db()?.step_child(step).await? else {
                continue;
            };
            if s.state != StepState::Waiting || s.child != Some(child) {
                continue;
            }
            reports.push(Report {
                key: JobKey {
                    task_id: parent,
                    step_id: step,
                    attempt: s.attempts.max(0) as u32,
                    position: s.position.max(0) as u32,
                },
                outcome,
            });
        }
        if reports.is_empty() {
            return Ok(());
        }
        cx.apply_reports_from(&reports, StepState::Waiting).await?;
        cx.finish(None).await.map(drop)
    }

    /// The sweep after a crash: finished children whose parent step still waits for them (at
    /// most 100 per call) get their outcome handed over.
    pub(super) async fn settle_orphaned_children(&self) -> Result<()> {
        let ids = self.inner.store.finished_children_waited_for(100).await?;
        if ids.is_empty() {
            return Ok(());
        }
        tracing::info!(
            count = ids.len(),
            "handing finished child tasks' outcomes to the steps waiting for them"
        );
        self.settle_children(&ids).await
    }
}
