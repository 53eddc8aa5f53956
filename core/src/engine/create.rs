//! Task creation: validating a request against its template and inserting the task with its
//! steps (bypassed steps resolved, roots claimable) in one transaction.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::claim;
use super::decide;
use super::handoff::Handoff;
use super::plan::PlanTx;
use super::tx::TxCx;
use super::{json_kind, Engine};
use crate::error::{Error, Result};
use crate::protocol::{Claim, Job};
use crate::state::{StepState, TaskState};
use crate::store::{ClaimedStep, NewStep, NewTask, TaskRow};
use crate::template::TaskTemplate;

/// A request to create a task. Everything but `name` is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TaskRequest {
    pub name: String,
    /// Default `default`.
    pub namespace: Option<String>,
    /// Default: the highest registered version.
    pub version: Option<String>,
    /// A JSON object (null means `{}`), validated against the template's schema.
    pub context: Value,
    pub initiator: Option<String>,
    pub source_system: Option<String>,
    pub reason: Option<String>,
    pub tags: Vec<String>,
    /// Skippable steps to resolve at creation (`resolved_manually`, results null).
    pub bypass_steps: Vec<String>,
    /// A second request with the same key returns the first task instead of creating one.
    pub idempotency_key: Option<String>,
    /// Steps of higher-priority tasks are claimed first (default 0); equal priorities go
    /// oldest first.
    pub priority: i32,
}

impl TaskRequest {
    pub fn new(name: impl Into<String>, context: Value) -> Self {
        TaskRequest {
            name: name.into(),
            context,
            ..Default::default()
        }
    }
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }
    pub fn idempotency_key(mut self, k: impl Into<String>) -> Self {
        self.idempotency_key = Some(k.into());
        self
    }
    pub fn bypass(mut self, steps: &[&str]) -> Self {
        self.bypass_steps = steps.iter().map(|s| s.to_string()).collect();
        self
    }
}

impl Engine {
    /// Creates a task; returns its id (the existing task's id for a repeated idempotency key).
    pub async fn create_task(&self, req: TaskRequest) -> Result<i64> {
        Ok(self.create_tasks(vec![req]).await?[0])
    }

    /// Like [`Engine::create_task`], and says whether the task was created (`false`: the
    /// idempotency key named an existing task, whose id this is).
    pub async fn create_task_once(&self, req: TaskRequest) -> Result<(i64, bool)> {
        Ok(self.create_tasks_once(vec![req]).await?[0])
    }

    /// Creates many tasks in one transaction (all or none); ids in request order.
    pub async fn create_tasks(&self, reqs: Vec<TaskRequest>) -> Result<Vec<i64>> {
        Ok(self
            .create_tasks_once(reqs)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Like [`Engine::create_tasks`], and says of each task whether it was created (`false`:
    /// its idempotency key named an existing task).
    pub async fn create_tasks_once(&self, reqs: Vec<TaskRequest>) -> Result<Vec<(i64, bool)>> {
        let mut prepared = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            let where_ = if i == 0 {
                String::new()
            } else {
                format!(" (request {i})")
            };
            prepared.push(self.prepare(req).await.map_err(|e| match e {
                Error::Validation(m) if !where_.is_empty() => {
                    Error::Validation(format!("{m}{where_}"))
                }
                other => other,
            })?);
        }
        let now = self.now();
        // An idle worker of this process gets the new steps in the creating transaction
        // ([`super::handoff`]); answered (empty) on drop if anything below fails.
        let mut handoff = None;
        let mut planned = None;
        if self.inner.opts.planned_cycles && self.inner.store.executes_plans() {
            match self.create_planned(&prepared, now, &mut handoff).await {
                Ok(done) => planned = Some(done),
                Err(Error::PlanStale) => {}
                Err(e) => return Err(e),
            }
        }
        let (ids, jobs) = match planned {
            Some(done) => done,
            None => {
                let mut cx = TxCx::begin(self, now).await?;
                let mut ids = Vec::with_capacity(prepared.len());
                for p in &prepared {
                    ids.push(cx.insert_task(p, None).await?);
                }
                if handoff.is_none() {
                    handoff = self.take_offer(&cx.ready_handlers());
                }
                let jobs = match &handoff {
                    Some(h) => cx.claim(&h.claim).await?,
                    None => Vec::new(),
                };
                cx.finish().await?;
                (ids, jobs)
            }
        };
        if let Some(h) = handoff {
            h.deliver(self, jobs);
        }
        for ((id, created), p) in ids.iter().zip(&prepared) {
            if *created {
                crate::telemetry::task_created(*id, now, &p.template.key());
                if self.metrics_on() {
                    metrics::counter!(
                        "tasker_tasks_created_total",
                        "namespace" => p.template.namespace.clone(),
                        "name" => p.template.name.clone()
                    )
                    .increment(1);
                }
            }
        }
        Ok(ids)
    }

    /// The creation as one planned statement ([`super::plan`]): the same decisions, the rows
    /// inserted by the store with their ids. [`Error::PlanStale`] (nothing written) for a
    /// request the plan cannot carry (an idempotency key needs a look-up first).
    ///
    /// With an idle worker's offer taken (`handoff`), the new steps go to it: one task whose
    /// ready steps are roots is inserted with them already claimed ([`TxCx::insert_task`]);
    /// otherwise the statement claims after inserting, as any claim does.
    async fn create_planned(
        &self,
        prepared: &[Prepared],
        now: i64,
        handoff: &mut Option<Handoff>,
    ) -> Result<(Vec<(i64, bool)>, Vec<Job>)> {
        let tx = Box::new(PlanTx::new(self.inner.known.clone(), now, true));
        let mut cx = TxCx::with_tx(self, tx, now);
        *handoff = match prepared {
            [p] => self.birth_offer(p),
            _ => None,
        };
        let born = handoff.is_some();
        let mut ids = Vec::with_capacity(prepared.len());
        for p in prepared {
            ids.push(
                cx.insert_task(p, handoff.as_ref().map(|h| &h.claim))
                    .await?,
            );
        }
        if !born {
            *handoff = self.take_offer(&cx.ready_handlers());
        }
        let claim = handoff.as_ref().map(|h| &h.claim);
        let spec = claim
            .filter(|_| !born)
            .map(|c| self.claim_spec(c, now, &[]));
        let out = cx.execute_planned(spec.as_ref()).await?;
        let jobs = match claim {
            // Born claimed: the creation's own changes carried (and announced) the claim's
            // transitions.
            Some(c) if born => {
                let mut templates = Vec::with_capacity(out.claimed.len());
                for s in &out.claimed {
                    templates.push(self.template_by_id(s.named_task_id).await?);
                }
                self.jobs_for(&out.claimed, &templates, c, Vec::new(), now)?
                    .0
            }
            Some(c) => self.jobs_of_statement(&out.claimed, c, now).await?,
            None => Vec::new(),
        };
        let ids = ids
            .into_iter()
            .map(|(id, created)| (out.task_id(id), created))
            .collect();
        Ok((ids, jobs))
    }

    async fn prepare(&self, req: TaskRequest) -> Result<Prepared> {
        if let Some(path) = decide::nul_path(&serde_json::to_value(&req).expect("json")) {
            return Err(Error::Validation(format!(
                "task request: the string at {path} contains a NUL character (\\u0000), which cannot be stored"
            )));
        }
        if req.name.trim().is_empty() {
            return Err(Error::Validation(
                "task request: name must not be empty".into(),
            ));
        }
        let (template_id, template) = self
            .resolve_template(req.namespace.as_deref(), &req.name, req.version.as_deref())
            .await?;
        let mut context = match req.context {
            Value::Null => Value::Object(Map::new()),
            Value::Object(m) => Value::Object(m),
            other => {
                return Err(Error::Validation(format!(
                    "task {}: context must be a JSON object, got {}",
                    template.key(),
                    json_kind(&other)
                )))
            }
        };
        // The schema's defaults are filled in first and stored with the task, as the original
        // engine's `insert_defaults` did: handlers see the completed context.
        template.complete_context(&mut context);
        if let Err(errs) = template.validate_context(&context) {
            return Err(Error::Validation(format!(
                "task {}: context does not match the template's schema:\n  {}",
                template.key(),
                errs.join("\n  ")
            )));
        }
        let mut bypass = vec![false; template.steps.len()];
        for name in &req.bypass_steps {
            let Some(i) = template.step_index(name) else {
                return Err(Error::Validation(format!(
                    "task {}: bypass_steps names unknown step {name:?}",
                    template.key()
                )));
            };
            if !template.steps[i].skippable {
                return Err(Error::Validation(format!(
                    "task {}: step {name:?} cannot be bypassed: it is not skippable",
                    template.key()
                )));
            }
            bypass[i] = true;
        }
        Ok(Prepared {
            template_id,
            template,
            context: serde_json::to_string(&context).expect("json"),
            initiator: req.initiator.unwrap_or_else(|| "unknown".into()),
            source_system: req.source_system.unwrap_or_else(|| "unknown".into()),
            reason: req.reason.unwrap_or_else(|| "unknown".into()),
            tags: serde_json::to_string(&req.tags).expect("json"),
            bypass_names: serde_json::to_string(&req.bypass_steps).expect("json"),
            bypass,
            idempotency_key: req.idempotency_key,
            priority: req.priority,
        })
    }
}

struct Prepared {
    template_id: i64,
    template: Arc<TaskTemplate>,
    context: String,
    initiator: String,
    source_system: String,
    reason: String,
    tags: String,
    bypass_names: String,
    bypass: Vec<bool>,
    idempotency_key: Option<String>,
    priority: i32,
}

impl Engine {
    /// An idle worker's offer for a task whose ready steps can be inserted already claimed:
    /// they have no parents (a step made ready by bypassed parents takes its parents'
    /// results from a claim).
    fn birth_offer(&self, p: &Prepared) -> Option<Handoff> {
        let ready: Vec<usize> = (0..p.template.steps.len())
            .filter(|&i| p.ready(i))
            .collect();
        if ready.is_empty()
            || ready
                .iter()
                .any(|&i| !p.template.steps[i].parents.is_empty())
        {
            return None;
        }
        let handlers: Vec<&str> = ready
            .iter()
            .map(|&i| p.template.steps[i].handler.as_str())
            .collect();
        self.take_offer(&handlers)
    }
}

impl Prepared {
    /// Parents of step `i` that still have to finish (bypassed ones do not).
    fn remaining_parents(&self, i: usize) -> i64 {
        let s = &self.template.steps[i];
        s.parents.iter().filter(|&&q| !self.bypass[q]).count() as i64
    }

    /// Step `i` is claimable as soon as the task exists.
    fn ready(&self, i: usize) -> bool {
        !self.bypass[i] && self.remaining_parents(i) == 0
    }
}

impl TxCx<'_> {
    /// Inserts the task; `(id, false)` when its idempotency key names an existing one.
    ///
    /// With `born` (a planned creation handing its steps to an idle worker), up to
    /// `born.max` of its ready steps for `born`'s handlers are inserted as that claim would
    /// leave them: in progress, attempt 1, leased to the worker, with the claim's transitions;
    /// the task starts. They are added to [`TxCx::claimed`].
    async fn insert_task(&mut self, p: &Prepared, born: Option<&Claim>) -> Result<(i64, bool)> {
        if let Some(k) = &p.idempotency_key {
            if let Some(id) = self.tx.task_by_idempotency_key(k).await? {
                return Ok((id, false));
            }
        }
        let t = &p.template;
        let done = p.bypass.iter().filter(|b| **b).count() as i64;
        let new_task = NewTask {
            named_task_id: p.template_id,
            state: TaskState::Pending,
            context: &p.context,
            initiator: &p.initiator,
            source_system: &p.source_system,
            reason: &p.reason,
            tags: &p.tags,
            bypass_steps: &p.bypass_names,
            idempotency_key: p.idempotency_key.as_deref(),
            steps_total: t.steps.len() as i64,
            steps_done: done,
            version: 1,
            now: self.now,
        };
        let now = self.now;
        let spec = born.map(|c| self.engine.claim_spec(c, now, &[]));
        let mut room = born.map_or(0, |c| c.max);
        let steps: Vec<NewStep> = t
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let ready = p.ready(i);
                // In claim order: the task's steps share priority and ready time, so by id.
                let claimed = spec.as_ref().filter(|c| {
                    ready && room > 0 && c.handlers.is_none_or(|hs| hs.contains(&s.handler))
                });
                if claimed.is_some() {
                    room -= 1;
                }
                NewStep {
                    position: i as i32,
                    name: &s.name,
                    handler: &s.handler,
                    state: if p.bypass[i] {
                        StepState::ResolvedManually
                    } else if claimed.is_some() {
                        StepState::InProgress
                    } else {
                        StepState::Pending
                    },
                    retry_limit: s.max_attempts as i64,
                    remaining_parents: p.remaining_parents(i),
                    ready_at: (ready && claimed.is_none()).then_some(now),
                    priority: p.priority,
                    version: if p.bypass[i] || claimed.is_some() {
                        2
                    } else {
                        1
                    },
                    parents: &s.parents,
                    born_claimed: claimed.map(|c| (c.worker_id, c.lease_until)),
                }
            })
            .collect();
        for s in steps.iter().filter(|s| s.ready_at.is_some()) {
            self.made_ready(s.handler);
        }
        let born_steps: Vec<(i32, i64)> = steps
            .iter()
            .filter_map(|s| s.born_claimed.map(|(_, until)| (s.position, until)))
            .collect();
        let any_left_ready = steps.iter().any(|s| s.ready_at.is_some());
        let (task_id, mut ids) = self.tx.insert_task_with_steps(&new_task, &steps).await?;
        ids.sort_unstable();
        let event = TaskState::event(None, TaskState::Pending).expect("initial task state");
        self.push_change(
            task_id,
            None,
            None,
            TaskState::Pending.as_str(),
            event,
            1,
            json!({}),
        );
        for (pos, step_id) in ids {
            let s = &t.steps[pos as usize];
            let step = (step_id, s.name.as_str(), 0);
            self.push_new_step(task_id, step, StepState::Pending, 1, json!({}));
            if let (Some(c), Some(&(_, lease_until))) =
                (born, born_steps.iter().find(|(q, _)| *q == pos))
            {
                self.push_step_change(
                    task_id,
                    Some((step_id, s.name.as_str(), 1)),
                    StepState::Pending,
                    StepState::InProgress,
                    2,
                    claim::step_claimed_meta(1, &c.worker_id),
                )?;
                // The task's fields are filled in once the statement has run
                // ([`TxCx::execute_planned`]).
                self.claimed.push(ClaimedStep {
                    step_id,
                    task_id,
                    position: pos,
                    attempts: 1,
                    version: 2,
                    lease_expires_at: lease_until,
                    retry_limit: s.max_attempts as i64,
                    named_task_id: p.template_id,
                    task_state: TaskState::InProgress,
                    context: p.context.clone(),
                    task_created_at: now,
                    started_version: None,
                    steps_total: t.steps.len() as i64,
                    steps_done: done,
                    steps_blocked: 0,
                    task_version: 0,
                    parent_results: None,
                });
            }
            if p.bypass[pos as usize] {
                self.push_step_change(
                    task_id,
                    Some(step),
                    StepState::Pending,
                    StepState::ResolvedManually,
                    2,
                    json!({"reason": "bypassed"}),
                )?;
            }
        }
        self.tasks.insert(
            task_id,
            TaskRow {
                task_id,
                named_task_id: p.template_id,
                state: TaskState::Pending,
                steps_total: t.steps.len() as i64,
                steps_done: done,
                steps_blocked: 0,
                version: 1,
            },
        );
        self.settle(task_id).await?;
        if !born_steps.is_empty() {
            self.set_task_states(
                task_id,
                &[TaskState::InProgress],
                claim::task_started_meta(),
            )?;
        }
        // Nothing to announce when every ready step went to the worker.
        self.work = born_steps.is_empty() || any_left_ready;
        Ok((task_id, true))
    }
}
