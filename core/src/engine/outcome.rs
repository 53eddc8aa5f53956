//! What a reported outcome does: its step's new state (a completion, or a failure judged by
//! [`decide::failure_effect`] and the backoff), its children's readiness, its task's
//! settlement; and expired leases, recorded as failures of their attempts.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::child::ChildRequests;
use super::create::Prepared;
use super::decide::{self, FailureEffect};
use super::tx::TxCx;
use crate::backoff::retry_delay_ms;
use crate::clock::format_ms;
use crate::error::Result;
use crate::protocol::{
    FailureKind, JobKey, Outcome, Report, Reschedule, Shaped, StepFailure, Wait,
};
use crate::state::{StepState, TaskState};
use crate::store::{Decrement, StepLock, StepUpdate, TaskRow};
use crate::template::{StepKind, TaskTemplate};

/// One report, decided.
struct Decided {
    key: JobKey,
    template: Arc<TaskTemplate>,
    update: StepUpdate,
    meta: Value,
    /// The step is out of attempts: it blocks its task.
    blocked: bool,
    /// The step is out of attempts under `continue_on_failure`: final, counted as finished,
    /// its children run ([`crate::template::StepTemplate::tolerates_failure`]).
    tolerated: bool,
    /// A decision's choice or a fan-out's items, to record with its completion.
    growth: Option<decide::Growth>,
    /// The task the step waits for (it returned a ChildTask), to create with its update.
    child: Option<Prepared>,
    /// What the step waits for (it returned a Wait), to record with its update.
    wait: Option<Wait>,
}

impl TxCx<'_> {
    /// Records outcomes; returns the keys of reports that no longer applied (the attempt was
    /// taken over, or its step already settled).
    pub(super) async fn apply_reports(&mut self, reports: &[Report]) -> Result<Vec<JobKey>> {
        self.apply_reports_from(reports, StepState::InProgress)
            .await
    }

    /// [`TxCx::apply_reports`] for steps in state `from`: `in_progress` for a worker's
    /// attempts, `waiting` for the outcome of a step's child task ([`super::child`]).
    pub(super) async fn apply_reports_from(
        &mut self,
        reports: &[Report],
        from: StepState,
    ) -> Result<Vec<JobKey>> {
        let mut stale = Vec::new();
        if reports.is_empty() {
            return Ok(stale);
        }
        let mut ids: Vec<i64> = reports.iter().map(|r| r.key.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        self.load_tasks(&ids).await?;
        // A failure is judged against the step's own limit, which an operator may have changed
        // (read with the step, only when the batch has failures: the happy path plans).
        let failures = reports
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)));
        let keys: Vec<JobKey> = reports.iter().map(|r| r.key).collect();
        // A child task to create is checked against its template first: its errors fail the
        // step like the handler's own. (An outcome from outside a waiting step is plain
        // results: it asks for no shape.)
        let shaped = from == StepState::InProgress;
        let mut children = if shaped {
            ChildRequests::prepare(self, reports).await?
        } else {
            ChildRequests::none()
        };
        if shaped && reports.iter().any(is_wait) {
            // A wait reads and writes its tables: the general way.
            self.db()?;
        }
        if shaped && reports.iter().any(|r| reschedule_of(&r.outcome).is_some()) {
            // A bounded reschedule counts in its table.
            self.needs_reschedule_counts(reports).await?;
        }
        let locks = self.step_locks(&keys, failures).await?;
        let mut decided = Vec::with_capacity(reports.len());
        for r in reports {
            let (Some(task), Some(lock)) = (
                self.tasks.get(&r.key.task_id).cloned(),
                locks.get(&r.key.step_id).copied(),
            ) else {
                stale.push(r.key);
                continue;
            };
            if lock.state != from
                || lock.attempts != r.key.attempt as i64
                || lock.task_id != r.key.task_id
                || self.updates_step(r.key.step_id)
            {
                stale.push(r.key);
                continue;
            }
            let template = self.template(task.named_task_id).await?;
            if template.steps.get(r.key.position as usize).is_none() {
                stale.push(r.key);
                continue;
            }
            let child = children.take(r.key.step_id);
            let over;
            let r = match shaped {
                true => match self.over_reschedule_limit(r, &template).await? {
                    Some(failed) => {
                        over = failed;
                        &over
                    }
                    None => r,
                },
                false => r,
            };
            let d = self.decide(r, &task, &lock, template, child, shaped);
            let d = self.take_kept_signal(d, &task, &lock).await?;
            decided.push(d);
        }
        let mut decs: HashMap<(i64, i32), i64> = HashMap::new();
        let mut touched = Vec::new();
        let mut grown = Vec::new();
        let mut created = Vec::new();
        for mut d in decided {
            touched.push(d.key.task_id);
            if let Some(p) = d.child.take() {
                created.push(p);
            }
            if let Some(w) = d.wait.take() {
                self.record_wait(d.key, &w).await?;
            }
            if d.growth.is_some() && self.tasks[&d.key.task_id].state != TaskState::Cancelled {
                grown.push((d.key.task_id, d.template.clone()));
            }
            self.record(d, &mut decs)?;
        }
        if !decs.is_empty() {
            self.decrement(decs.into_iter().map(|((task_id, position), by)| Decrement {
                task_id,
                position,
                by,
            }));
        }
        grown.dedup_by_key(|g| g.0);
        for (task_id, template) in grown {
            self.grow(task_id, &template).await?;
        }
        for p in created {
            let (id, _, _) = self.insert_prepared(&p, None).await?;
            self.children_created
                .push((id, p.template().clone(), p.parent.map(|(t, _)| t)));
        }
        touched.sort_unstable();
        touched.dedup();
        for t in touched {
            self.settle(t).await?;
        }
        Ok(stale)
    }

    /// A wait for a signal that was sent before it (kept): the step completes now with the
    /// signal's payload (none: the wait's results) instead of waiting.
    async fn take_kept_signal(
        &mut self,
        d: Decided,
        task: &TaskRow,
        lock: &StepLock,
    ) -> Result<Decided> {
        let Some(Wait {
            signal: Some(name),
            results,
            ..
        }) = &d.wait
        else {
            return Ok(d);
        };
        let Some(sig) = self.db()?.take_signal(d.key.task_id, name).await? else {
            return Ok(d);
        };
        let payload = sig
            .payload
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| crate::error::Error::Corrupt(e.to_string()))?
            .unwrap_or(Value::Null);
        let now = Report {
            key: d.key,
            outcome: Outcome::Complete(if payload.is_null() {
                results.clone()
            } else {
                payload
            }),
        };
        let name = name.clone();
        let mut done = self.decide(&now, task, lock, d.template, None, false);
        done.meta["signal"] = json!(name);
        Ok(done)
    }

    /// The step update a report calls for.
    fn decide(
        &self,
        r: &Report,
        task: &TaskRow,
        lock: &StepLock,
        template: Arc<TaskTemplate>,
        child: Option<std::result::Result<Prepared, String>>,
        shaped: bool,
    ) -> Decided {
        let st = &template.steps[r.key.position as usize];
        let attempt = r.key.attempt;
        let mut update = StepUpdate {
            expect_attempts: Some(attempt as i64),
            ..StepUpdate::new(r.key.step_id, lock.version, lock.state, StepState::Complete)
        };
        let mut blocked = false;
        let mut tolerated = false;
        // A result PostgreSQL cannot store fails the step here, alike on every backend,
        // instead of failing the whole batch's transaction.
        let unstorable = match &r.outcome {
            Outcome::Complete(v) => decide::nul_path(v).map(|path| {
                Outcome::Failed(StepFailure::permanent(format!(
                    "the handler's results cannot be stored: the string at {path} contains a NUL character (\\u0000)"
                )))
            }),
            Outcome::Failed(_) => None,
        };
        let (mut outcome, growth) = match unstorable {
            Some(o) => (o, None),
            None if !shaped => (r.outcome.clone(), None),
            None => decide::shaped_outcome(&template, r.key.position as usize, &r.outcome),
        };
        // A child task: the step waits for it (or fails, when it cannot be created).
        let mut waits_for = None;
        if let (Outcome::Complete(_), Some(c)) = (&outcome, child) {
            match c {
                Ok(p) => waits_for = Some(p),
                Err(m) => outcome = Outcome::Failed(StepFailure::permanent(m)),
            }
        }
        if let Some(re) = shaped.then(|| reschedule_of(&outcome)).flatten() {
            return rescheduled(r.key, template, update, re, self.now);
        }
        let wait = shaped.then(|| wait_of(&outcome)).flatten();
        if wait.is_some() || waits_for.is_some() {
            return waiting(r.key, template, update, wait, waits_for);
        }
        let meta = match &outcome {
            // Completed from outside with no results: the wait's own results stay.
            Outcome::Complete(Value::Null) if lock.state == StepState::Waiting => {
                update.error = Some(None);
                update.processed_at = Some(self.now);
                json!({"attempt": attempt})
            }
            Outcome::Complete(v) => {
                update.results = Some(Some(serde_json::to_string(v).expect("json")));
                update.error = Some(None);
                update.processed_at = Some(self.now);
                let mut meta = json!({"attempt": attempt});
                match &growth {
                    Some(decide::Growth {
                        items: Some(items), ..
                    }) => {
                        meta["batches"] = json!(items.len());
                    }
                    Some(g) => {
                        meta["decision"] = json!(g
                            .chosen
                            .iter()
                            .map(|&i| &template.steps[i].name)
                            .collect::<Vec<_>>());
                    }
                    None => {}
                }
                meta
            }
            Outcome::Failed(f) => {
                let limit = match lock.retry_limit {
                    l if l > 0 => l.clamp(0, u32::MAX as i64) as u32,
                    _ => st.max_attempts,
                };
                let effect = decide::failure_effect(
                    f.kind,
                    attempt,
                    limit,
                    task.state == TaskState::Cancelled,
                );
                tolerated = effect == FailureEffect::Exhaust && st.tolerates_failure();
                blocked = effect == FailureEffect::Exhaust && !tolerated;
                let mut meta = self.fail(&mut update, f, effect, &st.backoff);
                if tolerated {
                    meta["continue_on_failure"] = json!(true);
                }
                meta
            }
        };
        Decided {
            key: r.key,
            template,
            update,
            meta,
            blocked,
            tolerated,
            growth: growth.filter(|_| to_complete(&outcome)),
            child: None,
            wait: None,
        }
    }

    /// Reschedules of steps with `max_reschedules` are counted in the database: the general
    /// way (a planned cycle cannot).
    async fn needs_reschedule_counts(&mut self, reports: &[Report]) -> Result<()> {
        for r in reports
            .iter()
            .filter(|r| reschedule_of(&r.outcome).is_some())
        {
            let Some(task) = self.tasks.get(&r.key.task_id).cloned() else {
                continue;
            };
            let t = self.template(task.named_task_id).await?;
            if t.steps
                .get(r.key.position as usize)
                .is_some_and(|s| s.max_reschedules.is_some())
            {
                self.db()?;
                break;
            }
        }
        Ok(())
    }

    /// A reschedule beyond its step's `max_reschedules`, as the permanent failure it becomes
    /// (`None`: not a reschedule, or within the bound; each counted).
    async fn over_reschedule_limit(
        &mut self,
        r: &Report,
        template: &TaskTemplate,
    ) -> Result<Option<Report>> {
        let Some(max) =
            reschedule_of(&r.outcome).and(template.steps[r.key.position as usize].max_reschedules)
        else {
            return Ok(None);
        };
        let n = self.db()?.bump_reschedules(r.key.step_id).await?;
        if n <= max as i64 {
            return Ok(None);
        }
        Ok(Some(Report {
            key: r.key,
            outcome: Outcome::Failed(StepFailure::permanent(format!(
                "the handler asked to reschedule a {} time; the step allows {max} (max_reschedules)",
                ordinal(n)
            ))),
        }))
    }

    /// Fills in a failed attempt's update; returns its transition's metadata.
    fn fail(
        &self,
        update: &mut StepUpdate,
        f: &StepFailure,
        effect: FailureEffect,
        backoff: &crate::backoff::Backoff,
    ) -> Value {
        let attempt = update.expect_attempts.unwrap_or_default() as u32;
        match effect {
            FailureEffect::Cancel => update.state = StepState::Cancelled,
            FailureEffect::Exhaust => update.state = StepState::Error,
            FailureEffect::Retry => {
                update.state = StepState::Error;
                let delay = retry_delay_ms(
                    backoff,
                    attempt,
                    f.retry_after_seconds,
                    self.engine.inner.opts.max_server_backoff_seconds,
                    rand::random::<f64>(),
                );
                update.ready_at = Some(self.now + delay);
            }
            FailureEffect::Release => {
                // The attempt never ran: give it back. A step back at zero attempts is
                // `pending` again (through `error`, the legal path).
                let back = attempt.saturating_sub(1) as i64;
                update.attempts = Some(back);
                update.ready_at = Some(self.now);
                if back == 0 {
                    update.state = StepState::Pending;
                    update.transitions = 2;
                } else {
                    update.state = StepState::Error;
                }
            }
        }
        if effect != FailureEffect::Release {
            update.error = Some(Some(failure_json(f, attempt, self.now)));
        }
        let mut meta = json!({
            "attempt": attempt,
            "error": f.message.replace('\0', "\u{fffd}"),
            "kind": f.kind,
            "attempts_exhausted": effect == FailureEffect::Exhaust,
        });
        if let Some(at) = update.ready_at {
            meta["next_attempt_at"] = json!(format_ms(at));
        }
        meta
    }

    /// Records a decided report: its update and transitions, counters, children.
    fn record(&mut self, d: Decided, decs: &mut HashMap<(i64, i32), i64>) -> Result<()> {
        let task_id = d.key.task_id;
        let st = &d.template.steps[d.key.position as usize];
        let to = d.update.state;
        let version = d.update.new_version();
        let step = Some((d.key.step_id, st.name.as_str(), d.key.attempt));
        // A released attempt back at `pending` goes `in_progress -> error -> pending`.
        let mut from = d.update.expect_state;
        if d.update.transitions == 2 {
            self.push_step_change(
                task_id,
                step,
                from,
                StepState::Error,
                version - 1,
                d.meta.clone(),
            )?;
            from = StepState::Error;
        }
        if self.engine.metrics_on() {
            let outcome = match to {
                StepState::Complete => "complete",
                StepState::Waiting => "waiting",
                StepState::Cancelled => "cancelled",
                StepState::Pending => "released",
                _ if d.blocked => "exhausted",
                _ if d.tolerated => "tolerated",
                _ if d.update.attempts.is_some() => "released",
                _ => "retry",
            };
            metrics::counter!(
                "tasker_step_outcomes_total",
                "namespace" => d.template.namespace.clone(),
                "name" => d.template.name.clone(),
                "step" => st.name.clone(),
                "outcome" => outcome
            )
            .increment(1);
        }
        self.push_step_change(task_id, step, from, to, version, d.meta)?;
        // A tolerated failure is finished like a completion: its task and children go on.
        let finished = to == StepState::Complete || d.tolerated;
        let done = finished as i64;
        self.adjust(task_id, done, d.blocked as i64);
        if d.update.ready_at.is_some() {
            self.work = true;
            self.made_ready(&st.handler);
        }
        if let Some(g) = &d.growth {
            // The children it opened are created by [`TxCx::grow`], with their parents' counts.
            self.record_decision(task_id, d.key.step_id, &d.template, &g.chosen);
            if let Some(items) = &g.items {
                self.fan_outs
                    .insert((task_id, d.key.position as usize), items.clone());
            }
        }
        if finished && self.tasks[&task_id].state != TaskState::Cancelled {
            for &c in &st.children {
                if d.growth.as_ref().is_some_and(|g| g.chosen.contains(&c))
                    || st.kind == StepKind::Decision
                {
                    continue;
                }
                *decs.entry((task_id, c as i32)).or_default() += 1;
                self.made_ready(&d.template.steps[c].handler);
            }
        }
        self.record_update(d.update);
        Ok(())
    }

    /// Fails attempts whose lease expired; they become claimable again at once if attempts
    /// remain.
    pub(super) async fn reap_expired(&mut self) -> Result<Vec<JobKey>> {
        let expired = self.expired_leases(1000).await?;
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        tracing::info!(
            count = expired.len(),
            "re-queueing steps whose lease expired"
        );
        if self.engine.metrics_on() {
            metrics::counter!("tasker_lease_expiries_total").increment(expired.len() as u64);
        }
        let reports: Vec<Report> = expired
            .into_iter()
            .map(|e| Report {
                key: JobKey { task_id: e.task_id, step_id: e.step_id, attempt: e.attempts as u32, position: e.position as u32 },
                outcome: Outcome::Failed(StepFailure {
                    message: "lease_expired: the worker running this attempt stopped heartbeating (it died or stalled)".into(),
                    kind: FailureKind::LeaseExpired,
                    retry_after_seconds: Some(0.0),
                    detail: None,
                }),
            })
            .collect();
        self.apply_reports(&reports).await
    }
}

fn to_complete(o: &Outcome) -> bool {
    matches!(o, Outcome::Complete(_))
}

/// The decided report of a step that now waits: for what its handler's Wait names, or for the
/// child task it asked for.
fn waiting(
    key: JobKey,
    template: Arc<TaskTemplate>,
    mut update: StepUpdate,
    wait: Option<Wait>,
    child: Option<Prepared>,
) -> Decided {
    update.state = StepState::Waiting;
    let meta = match (&wait, &child) {
        (Some(w), _) => {
            if !w.results.is_null() {
                update.results = Some(Some(serde_json::to_string(&w.results).expect("json")));
            }
            json!({"attempt": key.attempt, "wait": {
                "signal": w.signal, "correlation_id": w.correlation_id, "timeout": w.timeout}})
        }
        (None, Some(p)) => {
            let t = p.template();
            json!({
                "attempt": key.attempt,
                "child_task": {"namespace": t.namespace, "name": t.name, "version": t.version.to_string()},
            })
        }
        (None, None) => json!({"attempt": key.attempt}),
    };
    Decided {
        key,
        template,
        update,
        meta,
        blocked: false,
        tolerated: false,
        growth: None,
        child,
        wait,
    }
}

/// The decided report of a step that asked to run again later: its attempt given back (as a
/// released one is: at zero attempts it is `pending` again, through `error`), claimable after
/// `after` seconds.
fn rescheduled(
    key: JobKey,
    template: Arc<TaskTemplate>,
    mut update: StepUpdate,
    re: Reschedule,
    now: i64,
) -> Decided {
    let back = key.attempt.saturating_sub(1) as i64;
    update.attempts = Some(back);
    update.ready_at = Some(now + (re.after * 1000.0).round() as i64);
    if back == 0 {
        update.state = StepState::Pending;
        update.transitions = 2;
    } else {
        update.state = StepState::Error;
    }
    let meta = json!({
        "attempt": key.attempt,
        "reason": "rescheduled",
        "reschedule": {"after": re.after},
        "next_attempt_at": format_ms(update.ready_at.expect("set")),
    });
    Decided {
        key,
        template,
        update,
        meta,
        blocked: false,
        tolerated: false,
        growth: None,
        child: None,
        wait: None,
    }
}

/// The reschedule a handler's results ask for.
fn reschedule_of(o: &Outcome) -> Option<Reschedule> {
    match shape_of(o)? {
        Shaped::Reschedule(r) => Some(r),
        _ => None,
    }
}

/// The well-formed shape a completion's results carry.
fn shape_of(o: &Outcome) -> Option<Shaped> {
    match o {
        Outcome::Complete(v) => Shaped::of(v)?.ok(),
        Outcome::Failed(_) => None,
    }
}

/// The wait a handler's results ask for.
fn wait_of(o: &Outcome) -> Option<Wait> {
    match shape_of(o)? {
        Shaped::Wait(w) => Some(w),
        _ => None,
    }
}

fn is_wait(r: &Report) -> bool {
    wait_of(&r.outcome).is_some()
}

/// The stored `error` of a step: `{message, kind, attempt, at, retry_after_seconds?, detail?}`
/// (NUL characters replaced: a failure is always recorded).
fn failure_json(f: &StepFailure, attempt: u32, now: i64) -> String {
    let mut err = json!({
        "message": f.message,
        "kind": f.kind,
        "attempt": attempt,
        "at": format_ms(now),
    });
    if let Some(ra) = f.retry_after_seconds {
        err["retry_after_seconds"] = json!(ra);
    }
    if let Some(d) = &f.detail {
        err["detail"] = d.clone();
    }
    decide::strip_nul(&mut err);
    err.to_string()
}

fn ordinal(n: i64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}
