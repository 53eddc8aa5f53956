//! Claiming: ready steps become jobs with a lease, their parents' results and their task's
//! context; the tasks they belong to start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::tx::TxCx;
use super::{parse_json, CONTEXT_CACHE};
use crate::error::Result;
use crate::protocol::{Claim, Job, JobKey};
use crate::state::{StepState, TaskState};
use crate::store::ClaimSpec;

impl TxCx<'_> {
    /// Claims ready steps and builds their jobs.
    pub(super) async fn claim(&mut self, c: &Claim) -> Result<Vec<Job>> {
        // Park first: a task blocked by this transaction's outcomes must not have its steps
        // claimed. The claim reads only the steps table, so counter updates can wait for the
        // transaction's final write.
        self.repark().await?;
        let lease_until = self.now + self.engine.inner.opts.lease.as_millis() as i64;
        let held: Vec<i64> = self.tasks.keys().copied().collect();
        let claimed = self
            .tx
            .claim(&ClaimSpec {
                now: self.now,
                max: c.max as i64,
                handlers: c.handlers.as_deref(),
                worker_id: &c.worker_id,
                lease_until,
                held_tasks: &held,
            })
            .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // Contexts never change after creation: keep them parsed.
        let mut contexts: HashMap<i64, Arc<Value>> = HashMap::new();
        {
            let mut cache = self.engine.inner.contexts.lock().unwrap();
            for s in &claimed {
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
        let mut templates = Vec::with_capacity(claimed.len());
        let mut keys = Vec::new();
        for s in &claimed {
            let t = self.template(s.named_task_id).await?;
            for &p in &t.steps[s.position as usize].parents {
                keys.push((s.task_id, p as i32));
            }
            templates.push(t);
        }
        let mut parent_results: HashMap<(i64, i32), (String, Value)> = HashMap::new();
        if !keys.is_empty() {
            for (t, p, name, res) in self.tx.results(&keys).await? {
                let v = res
                    .as_deref()
                    .map(parse_json)
                    .transpose()?
                    .unwrap_or(Value::Null);
                parent_results.insert((t, p), (name, v));
            }
        }
        let mut jobs = Vec::with_capacity(claimed.len());
        let mut starting = Vec::new();
        let mut started: Vec<(i64, i64)> = Vec::new();
        for (s, t) in claimed.iter().zip(templates) {
            let st = &t.steps[s.position as usize];
            let attempt = s.attempts as u32;
            let step = Some((s.step_id, st.name.as_str(), attempt));
            if attempt > 1 {
                self.push_step_change(
                    s.task_id,
                    step,
                    StepState::Error,
                    StepState::Pending,
                    s.version - 1,
                    json!({"attempt": attempt}),
                )?;
            }
            self.push_step_change(
                s.task_id,
                step,
                StepState::Pending,
                StepState::InProgress,
                s.version,
                json!({"attempt": attempt, "worker": c.worker_id}),
            )?;
            // A task this transaction holds starts here (its row is written at the end); the
            // claim itself started any other that was still pending.
            if self
                .tasks
                .get(&s.task_id)
                .is_some_and(|t| t.state == TaskState::Pending)
            {
                starting.push(s.task_id);
            }
            if let Some(version) = s.started_version {
                started.push((s.task_id, version));
            }
            let mut results = Map::new();
            for &p in &st.parents {
                if let Some((name, v)) = parent_results.get(&(s.task_id, p as i32)) {
                    results.insert(name.clone(), v.clone());
                }
            }
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
        starting.sort_unstable();
        starting.dedup();
        for t in starting {
            self.set_task_states(
                t,
                &[TaskState::InProgress],
                json!({"reason": "step_claimed"}),
            )?;
        }
        started.sort_unstable();
        started.dedup();
        for (task_id, version) in started {
            self.push_task_change(
                task_id,
                TaskState::Pending,
                TaskState::InProgress,
                version,
                json!({"reason": "step_claimed"}),
            );
        }
        Ok(jobs)
    }
}
