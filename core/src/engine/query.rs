//! Reading tasks back: snapshots, listings, states, transition history, waiting for a task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::{parse_json, Engine};
use crate::clock::format_ms;
use crate::error::{Error, Result};
use crate::state::{StepState, TaskState};
use crate::store::{IdRange, NextTimes, TaskDetail, TaskFilter, TransitionRow};
use crate::template::TaskTemplate;

/// A task as `get_task` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSnapshot {
    pub id: i64,
    pub name: String,
    pub namespace: String,
    pub version: String,
    pub status: TaskState,
    /// Paused by an operator ([`Engine::pause_task`]): no new step of it starts. Always false
    /// for a finished task.
    pub paused: bool,
    pub context: Value,
    pub initiator: String,
    pub source_system: String,
    pub reason: String,
    pub tags: Value,
    pub bypass_steps: Value,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    /// A child task's parent: the task, and the step that waits for this one (null for a task
    /// created any other way).
    pub parent_task_id: Option<i64>,
    pub parent_step: Option<String>,
    pub steps: Vec<StepSnapshot>,
}

impl TaskSnapshot {
    pub fn step(&self, name: &str) -> Option<&StepSnapshot> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The fan-out instances of batch worker `worker`, in item order.
    pub fn instances_of<'a, 'w>(
        &'a self,
        worker: &'w str,
    ) -> impl Iterator<Item = &'a StepSnapshot> + use<'a, 'w> {
        self.steps
            .iter()
            .filter(move |s| s.instance_of.as_deref() == Some(worker))
    }

    /// The steps that depend on step `name` directly, in template order.
    pub fn children_of(&self, name: &str) -> Vec<String> {
        self.steps
            .iter()
            .filter(|o| o.depends_on.iter().any(|d| d == name))
            .map(|o| o.name.clone())
            .collect()
    }
}

impl StepSnapshot {
    /// The template step this row is: its batch worker for a fan-out instance, else its name.
    pub fn template_name(&self) -> &str {
        self.instance_of.as_deref().unwrap_or(&self.name)
    }
}

/// How many of `steps` are in each state, in a fixed order (complete, in_progress, pending,
/// error, resolved_manually, cancelled), states with none left out: a fan-out's summary.
pub fn count_by_state<'a>(
    steps: impl IntoIterator<Item = &'a StepSnapshot>,
) -> Vec<(StepState, usize)> {
    let order = [
        StepState::Complete,
        StepState::InProgress,
        StepState::Pending,
        StepState::Error,
        StepState::ResolvedManually,
        StepState::Cancelled,
    ];
    let mut n = [0usize; 6];
    for s in steps {
        if let Some(i) = order.iter().position(|st| *st == s.status) {
            n[i] += 1;
        }
    }
    order.into_iter().zip(n).filter(|(_, k)| *k > 0).collect()
}

/// A step inside a [`TaskSnapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct StepSnapshot {
    pub id: i64,
    pub name: String,
    pub handler: String,
    pub status: StepState,
    pub attempts: i64,
    pub max_attempts: i64,
    pub results: Value,
    /// The last failure: `{message, kind, attempt, retry_after_seconds?, detail?}`.
    pub error: Option<Value>,
    pub depends_on: Vec<String>,
    /// When a step waiting for a retry becomes claimable.
    pub next_attempt_at: Option<String>,
    pub last_attempted_at: Option<String>,
    pub completed_at: Option<String>,
    /// How long the last attempt ran, for a step that finished by running.
    pub duration_ms: Option<i64>,
    /// A fan-out instance's batch worker step (`work` for `work_003`); none for other steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_of: Option<String>,
    /// A fan-out instance's 0-based place among its fan-out's items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
    /// The task this step created (it returned a ChildTask): the newest, when a retry
    /// created another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_task_id: Option<i64>,
    /// What a `waiting` step waits for: `{"signal": ..., "correlation_id": ..., "timeout_at":
    /// ...}` (a Wait's, the keys it gave) or `{"child_task_id": ID}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<Value>,
}

/// One line of a task listing.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    pub id: i64,
    pub name: String,
    pub namespace: String,
    pub version: String,
    pub status: TaskState,
    /// As [`TaskSnapshot::paused`].
    pub paused: bool,
    pub steps_total: i64,
    pub steps_done: i64,
    pub created_at: String,
    pub completed_at: Option<String>,
    /// A child task's parent task (null for a task created any other way).
    pub parent_task_id: Option<i64>,
}

/// One state change of a task or of one of its steps ([`Engine::task_transitions`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransitionEntry {
    pub task_id: i64,
    /// Null for the task's own transitions.
    pub workflow_step_id: Option<i64>,
    pub step_name: Option<String>,
    pub from_state: Option<String>,
    pub to_state: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Value,
    pub sort_key: i64,
    /// RFC 3339.
    pub created_at: String,
}

impl Engine {
    /// The task's snapshot.
    pub async fn get_task(&self, task_id: i64) -> Result<TaskSnapshot> {
        let detail = self
            .inner
            .store
            .task(task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))?;
        self.snapshot(task_id, detail, None).await
    }

    /// The snapshot of a task whose row was just read, with its steps (read now if not given).
    async fn snapshot(
        &self,
        task_id: i64,
        d: TaskDetail,
        steps: Option<Vec<crate::store::StepRow>>,
    ) -> Result<TaskSnapshot> {
        let template = self.template_by_id(d.row.named_task_id).await?;
        let steps = match steps {
            Some(s) => s,
            None => self.inner.store.steps(task_id).await?,
        };
        // The newest child of each step that created one (ids ascending).
        let children: HashMap<i64, i64> = self
            .inner
            .store
            .child_tasks(task_id)
            .await?
            .into_iter()
            .map(|c| (c.parent_step_id, c.task_id))
            .collect();
        let waits: HashMap<i64, crate::store::WaitRow> =
            if steps.iter().any(|s| s.state == StepState::Waiting) {
                self.inner
                    .store
                    .waits(task_id)
                    .await?
                    .into_iter()
                    .map(|w| (w.step_id, w))
                    .collect()
            } else {
                HashMap::new()
            };
        Ok(TaskSnapshot {
            id: d.row.task_id,
            name: d.name,
            namespace: d.namespace,
            version: d.template_version,
            status: d.row.state,
            paused: d.row.paused && !d.row.state.is_finished(),
            context: parse_json(&d.context)?,
            initiator: d.initiator,
            source_system: d.source_system,
            reason: d.reason,
            tags: parse_json(&d.tags)?,
            bypass_steps: parse_json(&d.bypass_steps)?,
            idempotency_key: d.idempotency_key,
            created_at: format_ms(d.created_at),
            updated_at: format_ms(d.updated_at),
            completed_at: d.completed_at.map(format_ms),
            parent_task_id: d.parent_task_id,
            parent_step: d.parent_step,
            steps: steps
                .into_iter()
                .map(|s| {
                    let st = template.steps.get(s.position as usize);
                    let instance_of = st
                        .filter(|t| {
                            t.kind == crate::template::StepKind::BatchWorker && t.name != s.name
                        })
                        .map(|t| t.name.clone());
                    let batch_index = instance_of
                        .as_ref()
                        .and_then(|w| s.name.get(w.len() + 1..))
                        .and_then(|d| d.parse::<u32>().ok())
                        .map(|n| n.saturating_sub(1));
                    Ok(StepSnapshot {
                        instance_of,
                        batch_index,
                        child_task_id: children.get(&s.step_id).copied(),
                        waiting_for: (s.state == StepState::Waiting)
                            .then(|| waiting_for(waits.get(&s.step_id), children.get(&s.step_id))),
                        id: s.step_id,
                        name: s.name,
                        handler: s.handler,
                        status: s.state,
                        attempts: s.attempts,
                        max_attempts: s.retry_limit,
                        results: s
                            .results
                            .as_deref()
                            .map(parse_json)
                            .transpose()?
                            .unwrap_or(Value::Null),
                        error: s.error.as_deref().map(parse_json).transpose()?,
                        depends_on: st.map(|t| t.depends_on.clone()).unwrap_or_default(),
                        next_attempt_at: match s.state {
                            StepState::Error => s.ready_at.map(format_ms),
                            _ => None,
                        },
                        last_attempted_at: s.last_attempted_at.map(format_ms),
                        completed_at: s.processed_at.map(format_ms),
                        duration_ms: match (s.state, s.last_attempted_at, s.processed_at) {
                            (StepState::Complete, Some(a), Some(b)) => Some((b - a).max(0)),
                            _ => None,
                        },
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    pub(super) async fn template_by_id(&self, id: i64) -> Result<Arc<TaskTemplate>> {
        if let Some(t) = self.inner.templates.read().unwrap().by_id.get(&id) {
            return Ok(t.clone());
        }
        let row = self
            .inner
            .store
            .template_by_id(id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("missing template {id}")))?;
        self.cache_template_row(row)
    }

    /// Tasks matching `filter`, newest first (default limit 100).
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>> {
        if let Some(l) = filter.limit {
            if l < 0 {
                return Err(Error::Validation(format!(
                    "list tasks: limit must be >= 0, got {l}"
                )));
            }
        }
        let ids = self.id_range(filter).await?;
        Ok(self
            .inner
            .store
            .list_tasks(filter, ids)
            .await?
            .into_iter()
            .map(|d| TaskSummary {
                id: d.row.task_id,
                name: d.name,
                namespace: d.namespace,
                version: d.template_version,
                status: d.row.state,
                paused: d.row.paused && !d.row.state.is_finished(),
                steps_total: d.row.steps_total,
                steps_done: d.row.steps_done,
                created_at: format_ms(d.created_at),
                completed_at: d.completed_at.map(format_ms),
                parent_task_id: d.parent_task_id,
            })
            .collect())
    }

    /// How many tasks match `filter` (its limit and offset ignored): the total of a paged
    /// listing.
    pub async fn count_tasks(&self, filter: &TaskFilter) -> Result<i64> {
        let ids = self.id_range(filter).await?;
        self.inner.store.count_tasks(filter, ids).await
    }

    /// The task ids a filter's creation times come to.
    async fn id_range(&self, f: &TaskFilter) -> Result<IdRange> {
        let mut ids = IdRange::default();
        if let Some(t) = f.created_from {
            // No task created since: an empty range.
            ids.from = Some(self.first_task_created_at(t).await?.unwrap_or(i64::MAX));
        }
        if let Some(t) = f.created_until {
            ids.until = self.first_task_created_at(t).await?;
        }
        Ok(ids)
    }

    /// The id of the first task created at or after `at` (epoch ms), if any: a binary search
    /// over task ids, which grow with creation time (about log2(tasks) primary-key reads).
    /// Two tasks created concurrently may be ordered by id a few milliseconds apart from their
    /// creation times; at the boundary of a range the id order wins.
    pub async fn first_task_created_at(&self, at: i64) -> Result<Option<i64>> {
        let store = &self.inner.store;
        let Some(max) = store.max_task_id().await? else {
            return Ok(None);
        };
        match store.task_at_or_after(max).await? {
            Some((_, c)) if c >= at => {}
            _ => return Ok(None),
        }
        // The answer is a task id in (lo, hi].
        let (mut lo, mut hi) = (0i64, max);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match store.task_at_or_after(mid).await? {
                Some((_, c)) if c >= at => hi = mid,
                Some((id, _)) if id < hi => lo = id,
                _ => lo = mid,
            }
        }
        Ok(store.task_at_or_after(hi).await?.map(|(id, _)| id))
    }

    /// Tasks and steps by state, failed steps in backoff and out of attempts: for health checks
    /// and metrics (one statement).
    pub async fn state_counts(&self) -> Result<crate::store::StateCounts> {
        self.inner
            .store
            .state_counts(self.inner.clock.now_ms())
            .await
    }

    /// The durability commits get, as the database reports it (for benchmarks and health
    /// checks): PostgreSQL's `fsync`, `synchronous_commit`, `full_page_writes`; SQLite's
    /// `synchronous`.
    pub async fn durability(&self) -> Result<crate::store::DurabilityReport> {
        self.inner.store.durability().await
    }

    /// Statements sent to the database by this engine so far (PostgreSQL: one round trip
    /// each); 0 on SQLite, where statements are function calls.
    pub fn database_statements(&self) -> u64 {
        self.inner.store.statements()
    }

    /// The task's state.
    pub async fn get_task_state(&self, task_id: i64) -> Result<TaskState> {
        self.inner
            .store
            .task_state(task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))
    }

    /// True when nothing is claimable now or later for these handlers and no step is running
    /// anywhere.
    pub async fn is_idle(&self, handlers: Option<&[String]>) -> Result<bool> {
        Ok(self.inner.store.next_times(handlers).await? == NextTimes::default())
    }

    /// Transition rows of a task and its steps, oldest first.
    pub async fn transitions(&self, task_id: i64) -> Result<Vec<TransitionRow>> {
        self.inner.store.transitions(task_id).await
    }

    /// The audit history of a task and its steps, oldest first, each change with its step's
    /// name and its metadata as JSON: what `GET /tasks/{id}/transitions` and the bindings'
    /// `transitions(task_id)` show. An unknown task is [`Error::NotFound`].
    pub async fn task_transitions(&self, task_id: i64) -> Result<Vec<TransitionEntry>> {
        let t = self.get_task(task_id).await?;
        let names: std::collections::HashMap<i64, &str> =
            t.steps.iter().map(|s| (s.id, s.name.as_str())).collect();
        let rows = self.transitions(task_id).await?;
        Ok(rows
            .iter()
            .map(|r| TransitionEntry {
                task_id: r.task_id,
                workflow_step_id: r.step_id,
                step_name: r
                    .step_id
                    .and_then(|s| names.get(&s).map(|n| (*n).to_owned())),
                from_state: r.from_state.map(str::to_owned),
                to_state: r.to_state.to_owned(),
                metadata: serde_json::from_str(&r.metadata).unwrap_or(Value::Null),
                sort_key: r.sort_key,
                created_at: format_ms(r.created_at),
            })
            .collect())
    }

    /// Waits until the task is `complete`, `error`, `cancelled` or `resolved_manually` and
    /// returns its snapshot. `timeout` is real time.
    pub async fn wait_for_task(
        &self,
        task_id: i64,
        timeout: Option<Duration>,
    ) -> Result<TaskSnapshot> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // A cycle of this process that finishes the task hands it over ([`super::watch`]).
        let watch = self.watches().watch(task_id);
        loop {
            let notified = self.inner.tasks_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(f) = watch.take() {
                let f = (*f).clone();
                return self.snapshot(task_id, f.task, Some(f.steps)).await;
            }
            // The task's row and, once it is finished, its steps: the snapshot in one read.
            match self.inner.store.task_if_finished(task_id).await? {
                None => return Err(Error::NotFound(format!("task {task_id} does not exist"))),
                Some((d, Some(steps))) => return self.snapshot(task_id, d, Some(steps)).await,
                Some((_, None)) => {}
            }
            // A missed notification (or a backend without them) costs at most 250 ms.
            let mut nap = Duration::from_millis(250);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(format!(
                        "task {task_id} did not finish within {:?}",
                        timeout.unwrap()
                    )));
                }
                nap = nap.min(left);
            }
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }
}

/// What a waiting step's snapshot says it waits for ([`StepSnapshot::waiting_for`]).
fn waiting_for(w: Option<&crate::store::WaitRow>, child: Option<&i64>) -> Value {
    let mut m = serde_json::Map::new();
    match (w, child) {
        (Some(w), _) => {
            if let Some(s) = &w.signal {
                m.insert("signal".into(), Value::from(s.clone()));
            }
            if let Some(c) = &w.correlation_id {
                m.insert("correlation_id".into(), Value::from(c.clone()));
            }
            if let Some(d) = w.deadline_at {
                m.insert("timeout_at".into(), Value::from(format_ms(d)));
            }
        }
        (None, Some(c)) => {
            m.insert("child_task_id".into(), Value::from(*c));
        }
        (None, None) => {}
    }
    Value::Object(m)
}
