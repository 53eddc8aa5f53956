//! Claiming, the engine's half: what a worker's claim asks for ([`Engine::claim_spec`]), and
//! the jobs of the steps a store claimed ([`Engine::jobs_of_claimed`]): contexts, parents'
//! results, handler configs, and the claim's transitions announced. What a claim does to its
//! rows is the store's claim rule (`store/sqlite/claim.rs`, `tasker_claim.sql`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::tx::{send, Change};
use super::Engine;
use super::{parse_json, CONTEXT_CACHE};
use crate::error::Result;
use crate::protocol::{Claim, Job, JobKey, FAILED_KEY};
use crate::state::{StepState, TaskState};
use crate::store::plan::claim_transitions;
use crate::store::{ClaimSpec, ClaimedStep, ParentResult, StepKey, TransitionRow};
use crate::template::{StepKind, TaskTemplate};

/// One stored row of a parent step: its instance place, name and results (or failure mark).
type ParentEntry = (Option<i64>, String, Value);

impl Engine {
    /// What to claim for `c` at `now`.
    pub(super) fn claim_spec<'a>(&self, c: &'a Claim, now: i64) -> ClaimSpec<'a> {
        ClaimSpec {
            now,
            max: c.max as i64,
            handlers: c.handlers.as_deref(),
            worker_id: &c.worker_id,
            lease_until: now + self.inner.opts.lease.as_millis() as i64,
            only_if_readied: false,
        }
    }

    /// The jobs of steps a committed statement claimed for `c`; announces the claim's
    /// transitions.
    pub(super) async fn jobs_of_claimed(
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
        // Parents' results the claim did not return (SQLite, or PostgreSQL steps stored before
        // their parents were recorded): they never change once a child is ready.
        let keys = missing_parent_keys(claimed, &templates);
        let parents = self.inner.store.parent_results(&keys).await?;
        let jobs = self.jobs_for(claimed, &templates, parents)?;
        let names: HashMap<i64, (String, u32)> = jobs
            .iter()
            .map(|j| (j.key.step_id, (j.step_name.clone(), j.key.attempt)))
            .collect();
        announce_claim(self, claim_transitions(claimed, &c.worker_id, now), &names);
        Ok(jobs)
    }

    /// The jobs of claimed steps (contexts parsed once per task and cached, parents' results
    /// from the claim or from `parent_rows`).
    fn jobs_for(
        &self,
        claimed: &[ClaimedStep],
        templates: &[Arc<TaskTemplate>],
        parent_rows: Vec<ParentResult>,
    ) -> Result<Vec<Job>> {
        let contexts = self.contexts_of(claimed)?;
        // (task, position) -> its rows: one, or a fan-out's instances.
        let mut parent_results: HashMap<(i64, i32), Vec<ParentEntry>> = HashMap::new();
        for p in parent_rows {
            let v = match (&p.results, &p.error, p.batch_index) {
                // An instance failed under `continue_on_failure`: its entry says so.
                (None, Some(e), Some(_)) => json!({ FAILED_KEY: parse_json(e)? }),
                (r, _, _) => r
                    .as_deref()
                    .map(parse_json)
                    .transpose()?
                    .unwrap_or(Value::Null),
            };
            parent_results
                .entry((p.task_id, p.position))
                .or_default()
                .push((p.batch_index, p.name, v));
        }
        let mut jobs = Vec::with_capacity(claimed.len());
        for (s, t) in claimed.iter().zip(templates) {
            let st = &t.steps[s.position as usize];
            let results = match &s.parent_results {
                Some(text) => match parse_json(text)? {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
                None => {
                    let mut results = Map::new();
                    for &p in &st.parents {
                        let rows = parent_results.get_mut(&(s.task_id, p as i32));
                        let Some(rows) = rows else {
                            if t.steps[p].kind == StepKind::BatchWorker {
                                // A fan-out with no items (or one never created).
                                results.insert(t.steps[p].name.clone(), Value::Array(Vec::new()));
                            }
                            continue;
                        };
                        if t.steps[p].kind == StepKind::BatchWorker {
                            // A fan-out's results: one list, in item order.
                            rows.sort_by_key(|r| r.0);
                            let list = rows.iter().map(|r| r.2.clone()).collect();
                            results.insert(t.steps[p].name.clone(), Value::Array(list));
                        } else if let Some((_, name, v)) = rows.first() {
                            results.insert(name.clone(), v.clone());
                        }
                    }
                    results
                }
            };
            let json = |text: &Option<String>| text.as_deref().map(parse_json).transpose();
            jobs.push(Job {
                key: JobKey {
                    task_id: s.task_id,
                    step_id: s.step_id,
                    attempt: s.attempts as u32,
                    position: s.position as u32,
                },
                step_name: match s.batch_index {
                    Some(i) => crate::template::instance_name(&st.name, i as usize),
                    None => st.name.clone(),
                },
                handler: st.handler.clone(),
                max_attempts: s.retry_limit.clamp(0, u32::MAX as i64) as u32,
                context: contexts.get(&s.task_id).cloned().unwrap_or_default(),
                results,
                config: st.handler_config.clone(),
                timeout: st.timeout_seconds.map(Duration::from_secs_f64),
                custom_events: t.custom_event_names.clone(),
                lease_expires_at_ms: s.lease_expires_at,
                task_created_at_ms: s.task_created_at,
                batch: json(&s.batch)?,
                batch_index: s.batch_index.map(|i| i as u32),
                checkpoint: json(&s.checkpoint)?,
            });
        }
        Ok(jobs)
    }

    /// The claimed steps' task contexts, parsed (contexts never change after creation: kept
    /// parsed, at most [`CONTEXT_CACHE`] of them).
    fn contexts_of(&self, claimed: &[ClaimedStep]) -> Result<HashMap<i64, Arc<Value>>> {
        let mut contexts: HashMap<i64, Arc<Value>> = HashMap::new();
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
        Ok(contexts)
    }
}

/// The (task, position) of every parent whose results the claim did not return with its step.
fn missing_parent_keys(claimed: &[ClaimedStep], templates: &[Arc<TaskTemplate>]) -> Vec<StepKey> {
    claimed
        .iter()
        .zip(templates)
        .filter(|(s, _)| s.parent_results.is_none())
        .flat_map(|(s, t)| {
            t.steps[s.position as usize]
                .parents
                .iter()
                .map(move |&p| StepKey {
                    task_id: s.task_id,
                    position: p as i32,
                })
        })
        .collect()
}

/// Announces the transition rows a store wrote for a claim
/// ([`crate::store::plan::claim_transitions`]); `names` gives each claimed step's name.
pub(super) fn announce_claim(
    engine: &Engine,
    rows: Vec<TransitionRow>,
    names: &HashMap<i64, (String, u32)>,
) {
    if engine.inner.events.receiver_count() == 0 {
        return;
    }
    for row in rows {
        let from = row.from_state;
        let event = match row.step_id {
            Some(_) => from
                .and_then(|f| f.parse().ok())
                .zip(row.to_state.parse().ok())
                .and_then(|(f, t)| StepState::event(Some(f), t)),
            None => from
                .and_then(|f| f.parse().ok())
                .zip(row.to_state.parse().ok())
                .and_then(|(f, t)| TaskState::event(Some(f), t)),
        }
        .expect("a claim's transitions are legal");
        let (step_name, attempt) = match row.step_id.and_then(|s| names.get(&s)) {
            Some((n, a)) => (Some(n.clone()), Some(*a)),
            None => (None, None),
        };
        let metadata = serde_json::from_str(&row.metadata).unwrap_or(Value::Null);
        send(
            engine,
            Change {
                row,
                event,
                step_name,
                attempt,
                metadata,
            },
        );
    }
}
