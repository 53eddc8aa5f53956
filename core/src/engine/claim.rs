//! Claiming: ready steps become jobs with a lease, their parents' results and their task's
//! context; the tasks they belong to start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::tx::{announce_stored, TxCx};
use super::{decide, Engine};
use super::{parse_json, CONTEXT_CACHE};
use crate::error::Result;
use crate::protocol::{Claim, Job, JobKey};
use crate::state::{StepState, TaskState};
use crate::store::{ClaimSpec, ClaimedStep, TransitionRow};
use crate::template::TaskTemplate;

impl TxCx<'_> {
    /// Claims ready steps and builds their jobs.
    pub(super) async fn claim(&mut self, c: &Claim) -> Result<Vec<Job>> {
        // Park first: a task blocked by this transaction's outcomes must not have its steps
        // claimed. The claim reads only the steps table, so counter updates can wait for the
        // transaction's final write.
        self.repark().await?;
        let held: Vec<i64> = self.tasks.keys().copied().collect();
        let claimed = self
            .tx
            .claim(&self.engine.claim_spec(c, self.now, &held))
            .await?;
        self.drained = decide::claim_took_everything(
            self.claim_covers_ready(c.handlers.as_deref()),
            c.max,
            claimed.len(),
        );
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // Parents' results the claim did not return (SQLite, or steps stored before PostgreSQL
        // kept their parents).
        let mut templates = Vec::with_capacity(claimed.len());
        for s in &claimed {
            templates.push(self.template(s.named_task_id).await?);
        }
        let keys = missing_parent_keys(&claimed, &templates);
        let parents = if keys.is_empty() {
            Vec::new()
        } else {
            self.tx.results(&keys).await?
        };
        let (jobs, announced) = self
            .engine
            .jobs_for(&claimed, &templates, c, parents, self.now)?;
        self.announce_stored(announced);
        // A task this transaction holds starts here (its row is written at the end); the claim
        // itself started any other that was still pending.
        let mut starting: Vec<i64> = claimed
            .iter()
            .filter(|s| {
                self.tasks
                    .get(&s.task_id)
                    .is_some_and(|t| t.state == TaskState::Pending)
            })
            .map(|s| s.task_id)
            .collect();
        starting.sort_unstable();
        starting.dedup();
        for t in starting {
            self.set_task_states(t, &[TaskState::InProgress], task_started_meta())?;
        }
        self.claimed.extend(claimed);
        Ok(jobs)
    }
}

/// The metadata of a claim's `pending -> in_progress` step transition (the stores' claims
/// write the same: `tasker_claim`, `SqliteTx::claim`).
pub(super) fn step_claimed_meta(attempt: u32, worker: &str) -> Value {
    json!({"attempt": attempt, "worker": worker})
}

/// The metadata of the `pending -> in_progress` transition of a task a claim starts.
pub(super) fn task_started_meta() -> Value {
    json!({"reason": "step_claimed"})
}

/// The (task, position) of every parent whose results the claim did not return with its
/// step (SQLite; PostgreSQL steps stored before their parents were recorded).
pub(super) fn missing_parent_keys(
    claimed: &[ClaimedStep],
    templates: &[Arc<TaskTemplate>],
) -> Vec<(i64, i32)> {
    claimed
        .iter()
        .zip(templates)
        .filter(|(s, _)| s.parent_results.is_none())
        .flat_map(|(s, t)| {
            t.steps[s.position as usize]
                .parents
                .iter()
                .map(move |&p| (s.task_id, p as i32))
        })
        .collect()
}

/// A transition the store wrote, to announce: (row, event, step name, attempt, metadata).
pub(super) type Stored = (
    TransitionRow,
    &'static str,
    Option<String>,
    Option<u32>,
    Value,
);

impl Engine {
    /// The jobs of steps a planned statement claimed (and committed) for `c`; announces the
    /// claim's transitions.
    pub(super) async fn jobs_of_statement(
        &self,
        claimed: &[ClaimedStep],
        c: &Claim,
        now: i64,
    ) -> Result<Vec<Job>> {
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut templates = Vec::with_capacity(claimed.len());
        for s in claimed {
            templates.push(self.template_by_id(s.named_task_id).await?);
        }
        // Steps stored before their parents were recorded: read the parents' results (they
        // never change once a child is ready). Committed, not dropped: a transaction dropped
        // open costs its pooled connection.
        let keys = missing_parent_keys(claimed, &templates);
        let parents = if keys.is_empty() {
            Vec::new()
        } else {
            let mut tx = self.inner.store.begin(false).await?;
            let rows = tx.results(&keys).await?;
            tx.commit(false, false).await?;
            rows
        };
        let (jobs, announced) = self.jobs_for(claimed, &templates, c, parents, now)?;
        announce_stored(self, announced);
        Ok(jobs)
    }

    /// What to claim for `c` at `now`, leaving the `held` tasks' rows alone.
    pub(super) fn claim_spec<'a>(&self, c: &'a Claim, now: i64, held: &'a [i64]) -> ClaimSpec<'a> {
        ClaimSpec {
            now,
            max: c.max as i64,
            handlers: c.handlers.as_deref(),
            worker_id: &c.worker_id,
            lease_until: now + self.inner.opts.lease.as_millis() as i64,
            held_tasks: held,
            only_if_readied: false,
        }
    }

    /// The jobs of claimed steps (contexts parsed once per task and cached, parents' results
    /// from the claim or from `parent_rows`), and the claim's transitions to announce (the
    /// store wrote them).
    pub(super) fn jobs_for(
        &self,
        claimed: &[ClaimedStep],
        templates: &[Arc<TaskTemplate>],
        c: &Claim,
        parent_rows: Vec<(i64, i32, String, Option<String>)>,
        now: i64,
    ) -> Result<(Vec<Job>, Vec<Stored>)> {
        // Contexts never change after creation: keep them parsed.
        let mut contexts: HashMap<i64, Arc<Value>> = HashMap::new();
        {
            let mut cache = self.inner.contexts.lock().unwrap();
            for s in claimed {
                if contexts.contains_key(&s.task_id) {
                    continue;
                }
                let v = match cache.get(&s.task_id) {
                    Some(v) => v.clone(),
                    None => {
                        if cache.len() >= CONTEXT_CACHE {
                            cache.clear();
                        }
                        let v = Arc::new(parse_json(&s.context)?);
                        cache.insert(s.task_id, v.clone());
                        v
                    }
                };
                contexts.insert(s.task_id, v);
            }
        }
        let mut parent_results: HashMap<(i64, i32), (String, Value)> = HashMap::new();
        for (t, p, name, res) in parent_rows {
            let v = res
                .as_deref()
                .map(parse_json)
                .transpose()?
                .unwrap_or(Value::Null);
            parent_results.insert((t, p), (name, v));
        }
        let mut jobs = Vec::with_capacity(claimed.len());
        let mut announced = Vec::with_capacity(claimed.len());
        let mut started: Vec<(i64, i64)> = Vec::new();
        for (s, t) in claimed.iter().zip(templates) {
            let st = &t.steps[s.position as usize];
            let attempt = s.attempts as u32;
            let mut step_row = |from: StepState, to: StepState, sort_key: i64, meta: Value| {
                let event =
                    StepState::event(Some(from), to).expect("a claim's transitions are legal");
                announced.push((
                    TransitionRow {
                        task_id: s.task_id,
                        step_id: Some(s.step_id),
                        from_state: Some(from.as_str()),
                        to_state: to.as_str(),
                        metadata: String::new(),
                        sort_key,
                        created_at: now,
                    },
                    event,
                    Some(st.name.clone()),
                    Some(attempt),
                    meta,
                ));
            };
            if attempt > 1 {
                step_row(
                    StepState::Error,
                    StepState::Pending,
                    s.version - 1,
                    json!({"attempt": attempt}),
                );
            }
            step_row(
                StepState::Pending,
                StepState::InProgress,
                s.version,
                step_claimed_meta(attempt, &c.worker_id),
            );
            if let Some(version) = s.started_version {
                started.push((s.task_id, version));
            }
            let results = match &s.parent_results {
                Some(text) => match parse_json(text)? {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
                None => {
                    let mut results = Map::new();
                    for &p in &st.parents {
                        if let Some((name, v)) = parent_results.get(&(s.task_id, p as i32)) {
                            results.insert(name.clone(), v.clone());
                        }
                    }
                    results
                }
            };
            jobs.push(Job {
                key: JobKey {
                    task_id: s.task_id,
                    step_id: s.step_id,
                    attempt,
                    position: s.position as u32,
                },
                step_name: st.name.clone(),
                handler: st.handler.clone(),
                max_attempts: s.retry_limit.clamp(0, u32::MAX as i64) as u32,
                context: contexts.get(&s.task_id).cloned().unwrap_or_default(),
                results,
                config: st.handler_config.clone(),
                timeout: st.timeout_seconds.map(Duration::from_secs_f64),
                custom_events: t.custom_event_names.clone(),
                lease_expires_at_ms: s.lease_expires_at,
                task_created_at_ms: s.task_created_at,
            });
        }
        started.sort_unstable();
        started.dedup_by_key(|s| s.0);
        for (task_id, version) in started {
            let (from, to) = (TaskState::Pending, TaskState::InProgress);
            announced.push((
                TransitionRow {
                    task_id,
                    step_id: None,
                    from_state: Some(from.as_str()),
                    to_state: to.as_str(),
                    metadata: String::new(),
                    sort_key: version,
                    created_at: now,
                },
                TaskState::event(Some(from), to).expect("legal task transition"),
                None,
                None,
                task_started_meta(),
            ));
        }
        Ok((jobs, announced))
    }
}
