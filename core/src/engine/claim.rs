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
        let claimed = self
            .tx
            .claim(&ClaimSpec {
                now: self.now,
                max: c.max as i64,
                handlers: c.handlers.as_deref(),
                worker_id: &c.worker_id,
                lease_until,
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
            // A task this transaction holds is known exactly; any other is as the claim read it.
            let state = self
                .tasks
                .get(&s.task_id)
                .map(|t| t.state)
                .unwrap_or(s.task_state);
            if state == TaskState::Pending {
                starting.push(s.task_id);
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
        let (held, other): (Vec<i64>, Vec<i64>) = starting
            .into_iter()
            .partition(|t| self.tasks.contains_key(t));
        for t in held {
            self.set_task_states(
                t,
                &[TaskState::InProgress],
                json!({"reason": "step_claimed"}),
            )?;
        }
        if !other.is_empty() {
            for (task_id, version) in self.tx.start_tasks(&other, self.now).await? {
                self.push_task_change(
                    task_id,
                    TaskState::Pending,
                    TaskState::InProgress,
                    version,
                    json!({"reason": "step_claimed"}),
                );
                self.tasks_changed = true;
            }
        }
        Ok(jobs)
    }
}
