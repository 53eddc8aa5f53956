//! Task creation: validating a request against its template and inserting the task with its
//! steps (bypassed steps resolved, roots claimable) in one transaction; with an idle worker of
//! this process, its first steps claimed for that worker in the same transaction (hand-off).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::decide;
use super::handoff::Handoff;
use super::tx::TxCx;
use super::{json_kind, Engine};
use crate::error::{Error, Result};
use crate::protocol::Job;
use crate::state::{StepState, TaskState};
use crate::store::{ClaimSpec, NewStep, NewTask, TaskRow};
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
    /// Seconds from creation: the task, unfinished then, is failed (its unfinished steps
    /// cancelled). Default: the template's `deadline_seconds`; none when neither has one.
    pub deadline_seconds: Option<f64>,
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
        // ([`super::handoff`]); answered (empty) on drop if anything below fails. Taken once:
        // a planned creation refused runs the general way with the same offer.
        let mut handoff = None;
        let mut done = None;
        // A keyed creation needs a look-up first: not planned.
        if self.inner.opts.planned_cycles
            && self.inner.store.executes_plans()
            && prepared
                .iter()
                .all(|p| p.idempotency_key.is_none() && p.deadline_ms.is_none())
        {
            let cx = TxCx::planning(self, now, true);
            match self.create_in(cx, &prepared, &mut handoff).await {
                Ok(d) => done = Some(d),
                Err(Error::PlanStale) => {}
                Err(e) => return Err(e),
            }
        }
        let (ids, jobs) = match done {
            Some(d) => d,
            None => {
                let cx = TxCx::begin(self, now).await?;
                self.create_in(cx, &prepared, &mut handoff).await?
            }
        };
        if let Some(h) = handoff {
            h.deliver(self, jobs);
        }
        for ((id, created), p) in ids.iter().zip(&prepared) {
            if *created {
                self.announce_created(*id, now, &p.template, None);
            }
        }
        Ok(ids)
    }

    /// A new task's root span and its count.
    pub(super) fn announce_created(
        &self,
        id: i64,
        now: i64,
        template: &TaskTemplate,
        parent: Option<i64>,
    ) {
        crate::telemetry::task_created(id, now, &template.key(), parent);
        if self.metrics_on() {
            metrics::counter!(
                "tasker_tasks_created_total",
                "namespace" => template.namespace.clone(),
                "name" => template.name.clone()
            )
            .increment(1);
        }
    }

    /// The creation in `cx`, with the hand-off: one task whose ready steps are roots has them
    /// inserted already claimed by an idle worker's offer (born claimed: the store's claim rule
    /// makes them what its claim would); otherwise the creation claims for an offer after
    /// inserting, as any claim does.
    async fn create_in(
        &self,
        mut cx: TxCx<'_>,
        prepared: &[Prepared],
        handoff: &mut Option<Handoff>,
    ) -> Result<(Vec<(i64, bool)>, Vec<Job>)> {
        let now = cx.now;
        let born = matches!(prepared, [p] if p.roots_only());
        if born && handoff.is_none() {
            let p = &prepared[0];
            *handoff = self.take_offer(&p.ready_handlers());
        }
        let born_claim = handoff.as_ref().filter(|_| born).map(|h| h.claim.clone());
        let born_spec = born_claim.as_ref().map(|c| self.claim_spec(c, now));
        let mut ids = Vec::with_capacity(prepared.len());
        let mut born_count = 0;
        for p in prepared {
            let (id, created, n) = cx.insert_prepared(p, born_spec.as_ref()).await?;
            ids.push((id, created));
            born_count += n;
        }
        if !born && handoff.is_none() {
            *handoff = self.take_offer(&cx.ready_handlers());
        }
        let spec = match (&born_spec, handoff.as_ref()) {
            // Born claimed: the claim takes those steps and nothing else.
            (Some(s), _) => Some(ClaimSpec {
                max: born_count as i64,
                ..s.clone()
            }),
            (None, Some(h)) => Some(self.claim_spec(&h.claim, now)),
            (None, None) => None,
        };
        let out = cx.finish(spec.as_ref().filter(|s| s.max > 0)).await?;
        let jobs = match handoff.as_ref() {
            Some(h) => self.jobs_of_claimed(&out.claimed, &h.claim, now).await?,
            None => Vec::new(),
        };
        let ids = ids
            .into_iter()
            .map(|(id, created)| (out.task_id(id), created))
            .collect();
        Ok((ids, jobs))
    }

    /// A request checked against its template, ready to insert (a validation error names
    /// what is wrong).
    pub(super) async fn prepare(&self, req: TaskRequest) -> Result<Prepared> {
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
        let deadline_seconds = req.deadline_seconds.or(template.deadline_seconds);
        if let Some(d) = deadline_seconds {
            if !(d.is_finite() && d > 0.0 && d <= crate::template::MAX_DEADLINE_SECONDS) {
                return Err(Error::Validation(format!(
                    "task {}: deadline_seconds must be a positive number of seconds up to a year, got {d}",
                    template.key()
                )));
            }
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
            if !template.steps[i].created_at_start {
                return Err(Error::Validation(format!(
                    "task {}: step {name:?} cannot be bypassed: a decision above it decides whether it is created",
                    template.key()
                )));
            }
            bypass[i] = true;
        }
        // The steps created with the task: those with no decision above them. A bypassed
        // decision chose none: the steps below it never exist (counted as done).
        let bypassed_decisions = template
            .steps
            .iter()
            .enumerate()
            .filter(|(i, s)| bypass[*i] && s.kind == crate::template::StepKind::Decision)
            .map(|(i, _)| (i, Vec::new()))
            .collect();
        let shape = super::shape::expand(&template, &[], &bypassed_decisions);
        let mut created = vec![false; template.steps.len()];
        for &i in &shape.create {
            created[i] = true;
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
            created,
            never_created: shape.absent as i64,
            idempotency_key: req.idempotency_key,
            priority: req.priority,
            parent: None,
            deadline_ms: deadline_seconds.map(|d| (d * 1000.0).round() as i64),
        })
    }
}

/// A task request ready to insert ([`Engine::prepare`]).
pub(super) struct Prepared {
    template_id: i64,
    template: Arc<TaskTemplate>,
    context: String,
    initiator: String,
    source_system: String,
    reason: String,
    tags: String,
    bypass_names: String,
    bypass: Vec<bool>,
    /// The steps created with the task ([`super::shape`]).
    created: Vec<bool>,
    /// Steps that will never exist (below a bypassed decision): counted as done.
    never_created: i64,
    idempotency_key: Option<String>,
    pub(super) priority: i32,
    /// A child task's parent: (task, the step that waits for it).
    pub(super) parent: Option<(i64, i64)>,
    /// The task's deadline, from its creation (ms).
    pub(super) deadline_ms: Option<i64>,
}

impl Prepared {
    pub(super) fn template(&self) -> &Arc<TaskTemplate> {
        &self.template
    }

    /// Parents of step `i` that still have to finish (bypassed ones do not).
    fn remaining_parents(&self, i: usize) -> i64 {
        let s = &self.template.steps[i];
        s.parents.iter().filter(|&&q| !self.bypass[q]).count() as i64
    }

    /// Step `i` is claimable as soon as the task exists.
    fn ready(&self, i: usize) -> bool {
        self.created[i] && !self.bypass[i] && self.remaining_parents(i) == 0
    }

    /// The task has ready steps and all are roots (a step made ready by bypassed parents
    /// takes its parents' results from an ordinary claim).
    fn roots_only(&self) -> bool {
        let mut ready = (0..self.template.steps.len()).filter(|&i| self.ready(i));
        let mut any = false;
        let roots = ready.all(|i| {
            any = true;
            self.template.steps[i].parents.is_empty()
        });
        any && roots
    }

    /// The handlers of the steps claimable as soon as the task exists.
    fn ready_handlers(&self) -> Vec<&str> {
        (0..self.template.steps.len())
            .filter(|&i| self.ready(i))
            .map(|i| self.template.steps[i].handler.as_str())
            .collect()
    }
}

impl TxCx<'_> {
    /// Records the task and its steps; `(id, false, 0)` when its idempotency key names an
    /// existing one. With `born` (a hand-off of one task), up to `born.max` of its ready steps
    /// for `born`'s handlers are inserted born claimed; returns how many.
    pub(super) async fn insert_prepared(
        &mut self,
        p: &Prepared,
        born: Option<&ClaimSpec<'_>>,
    ) -> Result<(i64, bool, usize)> {
        if let Some(k) = &p.idempotency_key {
            if let Some(id) = self.task_by_key(k).await? {
                return Ok((id, false, 0));
            }
        }
        let t = &p.template;
        let done = p.bypass.iter().filter(|b| **b).count() as i64 + p.never_created;
        let new_task = NewTask {
            named_task_id: p.template_id,
            state: TaskState::Pending,
            context: p.context.clone(),
            initiator: p.initiator.clone(),
            source_system: p.source_system.clone(),
            reason: p.reason.clone(),
            tags: p.tags.clone(),
            bypass_steps: p.bypass_names.clone(),
            idempotency_key: p.idempotency_key.clone(),
            steps_total: t.steps.len() as i64,
            steps_done: done,
            version: 1,
            parent_task_id: p.parent.map(|(t, _)| t),
            parent_step_id: p.parent.map(|(_, s)| s),
        };
        let now = self.now;
        let mut room = born.map_or(0, |c| c.max);
        let steps: Vec<NewStep> = t
            .steps
            .iter()
            .enumerate()
            .filter(|(i, _)| p.created[*i])
            .map(|(i, s)| {
                let ready = p.ready(i);
                // In claim order: the task's steps share priority and ready time, so by id.
                let is_born = born.is_some_and(|c| {
                    ready && room > 0 && c.handlers.is_none_or(|hs| hs.contains(&s.handler))
                });
                room -= is_born as i64;
                NewStep {
                    task_id: 0,
                    position: i as i32,
                    name: s.name.clone(),
                    handler: s.handler.clone(),
                    state: if p.bypass[i] {
                        StepState::ResolvedManually
                    } else {
                        StepState::Pending
                    },
                    retry_limit: s.max_attempts as i64,
                    remaining_parents: p.remaining_parents(i),
                    ready_at: ready.then_some(now),
                    priority: p.priority,
                    version: if p.bypass[i] { 2 } else { 1 },
                    parents: s.parents.iter().map(|&q| q as i32).collect(),
                    born: is_born,
                    batch_index: None,
                    batch: None,
                }
            })
            .collect();
        let born_count = steps.iter().filter(|s| s.born).count();
        let left_ready = steps.iter().filter(|s| s.ready_at.is_some() && !s.born);
        let left_ready: Vec<String> = left_ready.map(|s| s.handler.clone()).collect();
        for h in &left_ready {
            self.made_ready(h);
        }
        if p.deadline_ms.is_some() {
            // Its row is written after the plan's (`TxCx::finish`): the general way only.
            self.db()?;
        }
        let (task_id, mut ids) = self.insert_task(new_task, steps);
        if let Some(ms) = p.deadline_ms {
            self.deadlines.push((task_id, now + ms));
        }
        ids.sort_unstable();
        self.record_created(p, task_id, &ids)?;
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
                paused: false,
            },
        );
        self.settle(task_id).await?;
        // Nothing to announce when every ready step went to the worker.
        self.work |= born_count == 0 || !left_ready.is_empty();
        Ok((task_id, true, born_count))
    }

    /// The transitions of a new task: created, each step created, bypassed steps resolved.
    fn record_created(&mut self, p: &Prepared, task_id: i64, ids: &[(i32, i64)]) -> Result<()> {
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
        for &(pos, step_id) in ids {
            let s = &p.template.steps[pos as usize];
            let step = (step_id, s.name.as_str(), 0);
            self.push_new_step(task_id, step, StepState::Pending, 1, json!({}));
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
        Ok(())
    }
}
