//! Recording outcomes: the report half of a worker cycle, leases (heartbeats, expiry), and the
//! waiting half of a poll.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{debug, debug_span, Instrument};

use super::decide::{self, FailureEffect};
use super::plan::PlanTx;
use super::tx::TxCx;
use super::{Engine, REAP_EVERY_MS};
use crate::backoff::retry_delay_ms;
use crate::clock::format_ms;
use crate::error::{Error, Result};
use crate::protocol::{Claim, Cycle, FailureKind, Job, JobKey, Outcome, Report, StepFailure};
use crate::state::{StepState, TaskState};
use crate::store::{ClaimSpec, StepUpdate};
use crate::template::TaskTemplate;

impl Engine {
    /// Records outcomes and claims the next jobs in one transaction. Also returns expired leases
    /// to the claimable pool (at most every 500 ms of engine time).
    pub async fn report(&self, reports: &[Report], claim: Option<&Claim>) -> Result<Cycle> {
        self.report_with(reports, claim, false).await
    }

    /// [`Engine::report`] for a worker that found nothing at its last claim and heard of no
    /// new work since (`quiet`): where the cycle runs as one statement, its claim runs only if
    /// the cycle's own writes made a step claimable (else it would read the ready steps to
    /// find none). Elsewhere it claims as usual.
    pub(crate) async fn report_with(
        &self,
        reports: &[Report],
        claim: Option<&Claim>,
        quiet: bool,
    ) -> Result<Cycle> {
        let span = debug_span!(
            "tasker.report",
            reports = reports.len(),
            claim = claim.map(|c| c.max)
        );
        let started = Instant::now();
        async move {
            let now = self.now();
            let last = self.inner.last_reap_ms.load(Ordering::Relaxed);
            let reap = last == i64::MIN || now - last >= REAP_EVERY_MS || now < last;
            let mut planned = None;
            if !reap && self.inner.opts.planned_cycles && self.inner.store.executes_plans() {
                match self.cycle_planned(reports, claim, now, quiet).await {
                    Ok(done) => {
                        self.inner.planned[0].fetch_add(1, Ordering::Relaxed);
                        planned = Some(done);
                    }
                    Err(Error::PlanStale) => {
                        self.inner.planned[1].fetch_add(1, Ordering::Relaxed);
                        debug!("planned cycle refused: running it the general way");
                    }
                    Err(e) => return Err(e),
                }
            }
            let (jobs, stale) = match planned {
                Some(done) => done,
                None => self.cycle_general(reports, claim, now, reap).await?,
            };
            if self.metrics_on() {
                let part = match (reports.is_empty(), claim.is_some_and(|c| c.max > 0)) {
                    (false, true) => "report_and_claim",
                    (false, false) => "report",
                    _ => "claim",
                };
                metrics::histogram!("tasker_worker_cycle_seconds", "part" => part)
                    .record(started.elapsed().as_secs_f64());
                if !jobs.is_empty() {
                    metrics::counter!("tasker_steps_claimed_total").increment(jobs.len() as u64);
                }
            }
            if !stale.is_empty() {
                debug!(
                    count = stale.len(),
                    "reports for attempts that were taken over were ignored"
                );
            }
            Ok(Cycle { jobs, stale })
        }
        .instrument(span)
        .await
    }

    /// A cycle as one transaction that reads, decides and writes (every backend; on
    /// PostgreSQL when a plan is not possible). With `reap`, also re-queues expired leases.
    async fn cycle_general(
        &self,
        reports: &[Report],
        claim: Option<&Claim>,
        now: i64,
        reap: bool,
    ) -> Result<(Vec<Job>, Vec<JobKey>)> {
        // A claim alone need not reach the disk before the handler runs: lost in a crash,
        // the step is simply claimable again. Outcomes always are durable.
        let mut cx = TxCx::begin_with(self, now, !reports.is_empty()).await?;
        let mut stale = cx.apply_reports(reports).await?;
        if reap {
            self.inner.last_reap_ms.store(now, Ordering::Relaxed);
            stale.extend(cx.reap_expired().await?);
        }
        let jobs = match claim {
            Some(c) if c.max > 0 => {
                cx.claim(c)
                    .instrument(debug_span!("tasker.claim", max = c.max, worker = %c.worker_id))
                    .await?
            }
            _ => Vec::new(),
        };
        cx.finish().await?;
        Ok((jobs, stale))
    }

    /// A cycle decided from known rows and executed as one statement ([`super::plan`]);
    /// [`Error::PlanStale`] (nothing written) when that is not possible.
    async fn cycle_planned(
        &self,
        reports: &[Report],
        claim: Option<&Claim>,
        now: i64,
        quiet: bool,
    ) -> Result<(Vec<Job>, Vec<JobKey>)> {
        let tx = Box::new(PlanTx::new(
            self.inner.known.clone(),
            now,
            !reports.is_empty(),
        ));
        let mut cx = TxCx::with_tx(self, tx, now);
        // A report that no longer applies is sorted out by the general path.
        if !cx.apply_reports(reports).await?.is_empty() {
            return Err(Error::PlanStale);
        }
        let claim = claim.filter(|c| c.max > 0);
        let spec = claim.map(|c| ClaimSpec {
            only_if_readied: quiet,
            ..self.claim_spec(c, now, &[])
        });
        // The plan's writes and the claim are one statement: traced as the claim when it claims.
        let claimed = match claim {
            Some(c) => cx
                .execute_planned(spec.as_ref())
                .instrument(
                    debug_span!("tasker.claim", max = c.max, worker = %c.worker_id, planned = true),
                )
                .await?,
            None => cx.execute_planned(None).await?,
        }
        .claimed;
        let jobs = match claim {
            Some(c) => self.jobs_of_statement(&claimed, c, now).await?,
            None => Vec::new(),
        };
        Ok((jobs, Vec::new()))
    }

    /// Claims up to `claim.max` jobs, waiting up to `wait` (real time) for work to appear.
    pub async fn poll(&self, claim: &Claim, wait: Duration) -> Result<Vec<Job>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.inner.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cycle = self.report(&[], Some(claim)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !cycle.jobs.is_empty() || left.is_zero() {
                return Ok(cycle.jobs);
            }
            let nap = self
                .time_to_next_work(claim.handlers.as_deref())
                .await?
                .min(left);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// How long until a step becomes claimable or a lease expires (engine clock), at most 1 s.
    pub async fn time_to_next_work(&self, handlers: Option<&[String]>) -> Result<Duration> {
        let now = self.now();
        let mut next = now + 1000;
        let times = self.inner.store.next_times(handlers).await?;
        if let Some(t) = times.ready_at {
            next = next.min(t);
        }
        if let Some(t) = times.lease_expiry {
            next = next.min(t + 1);
        }
        Ok(Duration::from_millis((next - now).clamp(1, 1000) as u64))
    }

    /// A future that resolves when new work may have appeared in this process.
    pub fn work_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.work.notified()
    }

    /// Records one successful attempt.
    pub async fn complete(&self, key: JobKey, results: Value) -> Result<bool> {
        let c = self
            .report(
                &[Report {
                    key,
                    outcome: Outcome::Complete(results),
                }],
                None,
            )
            .await?;
        Ok(c.stale.is_empty())
    }

    /// Records one failed attempt.
    pub async fn fail(&self, key: JobKey, failure: StepFailure) -> Result<bool> {
        let c = self
            .report(
                &[Report {
                    key,
                    outcome: Outcome::Failed(failure),
                }],
                None,
            )
            .await?;
        Ok(c.stale.is_empty())
    }

    /// Extends the leases of running attempts by the engine's lease duration; returns how many
    /// are still held (an attempt that was taken over is not extended).
    pub async fn heartbeat(&self, keys: &[JobKey]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let until = now + self.inner.opts.lease.as_millis() as i64;
        let pairs: Vec<(i64, i64)> = keys.iter().map(|k| (k.step_id, k.attempt as i64)).collect();
        let mut tx = self.inner.store.begin(false).await?;
        let n = tx.extend_leases(&pairs, until, now).await?;
        tx.commit(false, false).await?;
        Ok(n)
    }
}

impl TxCx<'_> {
    /// Records outcomes; returns the keys of reports that no longer applied.
    pub(super) async fn apply_reports(&mut self, reports: &[Report]) -> Result<Vec<JobKey>> {
        let mut stale = Vec::new();
        if reports.is_empty() {
            return Ok(stale);
        }
        let mut ids: Vec<i64> = reports.iter().map(|r| r.key.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        self.load_tasks(&ids).await?;
        let max_server = self.engine.inner.opts.max_server_backoff_seconds;
        struct Plan {
            key: JobKey,
            template: Arc<TaskTemplate>,
            update: StepUpdate,
            meta: Value,
            blocked: bool,
        }
        // A failure is judged against the step's own limit, which an operator may have changed
        // (read only when the batch has failures: the happy path costs nothing).
        let failing: Vec<i64> = reports
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .map(|r| r.key.step_id)
            .collect();
        let limits: HashMap<i64, i64> = if failing.is_empty() {
            HashMap::new()
        } else {
            self.tx.retry_limits(&failing).await?.into_iter().collect()
        };
        let mut plans = Vec::with_capacity(reports.len());
        for r in reports {
            let Some(task) = self.tasks.get(&r.key.task_id).cloned() else {
                stale.push(r.key);
                continue;
            };
            let template = self.template(task.named_task_id).await?;
            let Some(st) = template.steps.get(r.key.position as usize) else {
                stale.push(r.key);
                continue;
            };
            let attempt = r.key.attempt;
            let mut update = StepUpdate {
                expect_attempts: Some(attempt as i64),
                ..StepUpdate::new(r.key.step_id, StepState::InProgress, StepState::Complete)
            };
            let mut blocked = false;
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
            let meta = match unstorable.as_ref().unwrap_or(&r.outcome) {
                Outcome::Complete(v) => {
                    update.results = Some(Some(serde_json::to_string(v).expect("json")));
                    update.error = Some(None);
                    update.processed_at = Some(self.now);
                    json!({"attempt": attempt})
                }
                Outcome::Failed(f) => {
                    let effect = decide::failure_effect(
                        f.kind,
                        attempt,
                        limits
                            .get(&r.key.step_id)
                            .map_or(st.max_attempts, |&l| l.clamp(0, u32::MAX as i64) as u32),
                        task.state == TaskState::Cancelled,
                    );
                    match effect {
                        FailureEffect::Cancel => update.state = StepState::Cancelled,
                        FailureEffect::Exhaust => {
                            update.state = StepState::Error;
                            blocked = true;
                        }
                        FailureEffect::Retry => {
                            update.state = StepState::Error;
                            let delay = retry_delay_ms(
                                &st.backoff,
                                attempt,
                                f.retry_after_seconds,
                                max_server,
                                rand::random::<f64>(),
                            );
                            update.ready_at = Some(self.now + delay);
                        }
                        FailureEffect::Release => {
                            // The attempt never ran: give it back. A step back at zero attempts
                            // is `pending` again (through `error`, the legal path).
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
            };
            plans.push(Plan {
                key: r.key,
                template,
                update,
                meta,
                blocked,
            });
        }
        let updates: Vec<StepUpdate> = plans.iter().map(|p| p.update.clone()).collect();
        let applied: HashMap<i64, i64> = self
            .tx
            .update_steps(&updates, self.now)
            .await?
            .into_iter()
            .collect();
        let mut decs: HashMap<(i64, i32), i64> = HashMap::new();
        let mut touched = Vec::new();
        for p in plans {
            let Some(&version) = applied.get(&p.key.step_id) else {
                stale.push(p.key);
                continue;
            };
            let task_id = p.key.task_id;
            let st = &p.template.steps[p.key.position as usize];
            let to = p.update.state;
            let step = Some((p.key.step_id, st.name.as_str(), p.key.attempt));
            // A released attempt back at `pending` goes `in_progress -> error -> pending`.
            let mut from = StepState::InProgress;
            if p.update.transitions == 2 {
                self.push_step_change(
                    task_id,
                    step,
                    from,
                    StepState::Error,
                    version - 1,
                    p.meta.clone(),
                )?;
                from = StepState::Error;
            }
            if self.engine.metrics_on() {
                let outcome = match to {
                    StepState::Complete => "complete",
                    StepState::Cancelled => "cancelled",
                    StepState::Pending => "released",
                    _ if p.blocked => "exhausted",
                    _ if p.update.attempts.is_some() => "released",
                    _ => "retry",
                };
                metrics::counter!(
                    "tasker_step_outcomes_total",
                    "namespace" => p.template.namespace.clone(),
                    "name" => p.template.name.clone(),
                    "step" => st.name.clone(),
                    "outcome" => outcome
                )
                .increment(1);
            }
            self.push_step_change(task_id, step, from, to, version, p.meta)?;
            let done = (to == StepState::Complete) as i64;
            self.adjust(task_id, done, p.blocked as i64);
            if p.update.ready_at.is_some() {
                self.work = true;
                self.made_ready(&st.handler);
            }
            let task_state = self.tasks[&task_id].state;
            if to == StepState::Complete && task_state != TaskState::Cancelled {
                for &c in &st.children {
                    *decs.entry((task_id, c as i32)).or_default() += 1;
                    self.made_ready(&p.template.steps[c].handler);
                }
            }
            touched.push(task_id);
        }
        if !decs.is_empty() {
            let decs: Vec<(i64, i32, i64)> =
                decs.into_iter().map(|((t, p), c)| (t, p, c)).collect();
            if self.tx.decrement_parents(&decs, self.now).await? > 0 {
                self.work = true;
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for t in touched {
            self.settle(t).await?;
        }
        Ok(stale)
    }

    /// Fails attempts whose lease expired; they become claimable again at once if attempts
    /// remain.
    pub(super) async fn reap_expired(&mut self) -> Result<Vec<JobKey>> {
        let expired = self.tx.expired_leases(self.now, 1000).await?;
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
            .map(|(step_id, task_id, position, attempts)| Report {
                key: JobKey { task_id, step_id, attempt: attempts as u32, position: position as u32 },
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

impl Engine {
    /// Publishes the custom event `name` from a running job's handler: delivered at once to
    /// subscribers, like the lifecycle events, with `metadata = {event_type: "custom", payload}`.
    /// The template must declare the event (`custom_events`); anything else is refused with
    /// the list of what it declares.
    pub fn publish_custom_event(&self, job: &Job, name: &str, payload: Value) -> Result<()> {
        self.publish_custom_event_for(job.key, &job.step_name, &job.custom_events, name, payload)
    }

    /// [`Engine::publish_custom_event`] for a host that keeps the job's key, step name and
    /// declared events instead of the [`Job`].
    pub fn publish_custom_event_for(
        &self,
        key: JobKey,
        step_name: &str,
        declared: &[String],
        name: &str,
        payload: Value,
    ) -> Result<()> {
        if !declared.iter().any(|d| d == name) {
            return Err(Error::Validation(if declared.is_empty() {
                format!(
                    "step {step_name:?} cannot publish {name:?}: its template declares no custom_events"
                )
            } else {
                format!(
                    "step {step_name:?} cannot publish {name:?}: its template declares only {}",
                    declared.join(", ")
                )
            }));
        }
        if let Some(path) = decide::nul_path(&payload) {
            return Err(Error::Validation(format!(
                "custom event {name}: the string at {path} contains a NUL character (\\u0000)"
            )));
        }
        let inner = &self.inner;
        if inner.events.receiver_count() > 0 {
            let _ = inner.events.send(Arc::new(crate::events::Event {
                name: std::borrow::Cow::Owned(name.to_owned()),
                task_id: key.task_id,
                step_id: Some(key.step_id),
                step_name: Some(step_name.to_owned()),
                from_state: None,
                to_state: None,
                attempt: Some(key.attempt),
                metadata: json!({"event_type": "custom", "payload": payload}),
                at_ms: self.now(),
            }));
        }
        Ok(())
    }
}
