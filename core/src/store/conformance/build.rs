//! Building plans for the cases: a template row, new tasks and steps, claims, reads back.

use super::super::*;
use crate::state::StepState;

pub(super) const NOW: i64 = 1_000_000;

pub(super) async fn template(s: &dyn Store) -> i64 {
    let mut tx = s.begin(true).await.unwrap();
    let id = tx
        .insert_template(&NewTemplate {
            namespace: "conf",
            name: "t",
            version: "1.0.0",
            description: None,
            definition: "{}",
            definition_hash: "h",
            revision: 1,
            now: NOW,
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

pub(super) fn new_task(named: i64, steps: i64) -> NewTask {
    NewTask {
        named_task_id: named,
        state: TaskState::Pending,
        context: r#"{"k":1}"#.into(),
        initiator: "i".into(),
        source_system: "s".into(),
        reason: "r".into(),
        tags: "[]".into(),
        bypass_steps: "[]".into(),
        idempotency_key: None,
        steps_total: steps,
        steps_done: 0,
        version: 1,
        parent_task_id: None,
        parent_step_id: None,
    }
}

pub(super) fn new_step(task: i64, position: i32, handler: &str, ready_at: Option<i64>) -> NewStep {
    NewStep {
        task_id: task,
        position,
        name: format!("s{position}"),
        handler: handler.into(),
        state: StepState::Pending,
        retry_limit: 3,
        remaining_parents: if ready_at.is_some() { 0 } else { 1 },
        ready_at,
        priority: 0,
        version: 1,
        parents: Vec::new(),
        born: false,
        batch_index: None,
        batch: None,
    }
}

pub(super) async fn apply(
    s: &dyn Store,
    plan: &Plan,
    claim: Option<&ClaimSpec<'_>>,
) -> Result<PlanOutcome> {
    let mut tx = s.begin(true).await?;
    let out = tx.apply(plan, claim).await?;
    tx.commit().await?;
    Ok(out)
}

/// A task of `steps` (handler, ready_at) created by one plan; returns (task id, step ids).
pub(super) async fn seed(
    s: &dyn Store,
    named: i64,
    steps: &[(&str, Option<i64>)],
) -> (i64, Vec<i64>) {
    let mut plan = Plan::new(NOW, true);
    plan.new_tasks.push(new_task(named, steps.len() as i64));
    for (i, (h, r)) in steps.iter().enumerate() {
        plan.new_steps.push(new_step(-1, i as i32, h, *r));
    }
    let out = apply(s, &plan, None).await.unwrap();
    (out.task_ids[0], out.step_ids)
}

pub(super) fn spec<'a>(max: i64, handlers: Option<&'a [String]>) -> ClaimSpec<'a> {
    ClaimSpec {
        now: NOW,
        max,
        handlers,
        worker_id: "w1",
        lease_until: NOW + 30_000,
        only_if_readied: false,
    }
}

pub(super) async fn claim(
    s: &dyn Store,
    max: i64,
    handlers: Option<&[String]>,
) -> Vec<ClaimedStep> {
    apply(s, &Plan::new(NOW, false), Some(&spec(max, handlers)))
        .await
        .unwrap()
        .claimed
}

pub(super) async fn step(s: &dyn Store, task: i64, id: i64) -> StepRow {
    s.steps(task)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.step_id == id)
        .expect("step")
}

/// Stored JSON text, parsed (PostgreSQL gives `jsonb` back in its own spacing).
pub(super) fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("stored JSON")
}

/// Transition rows with their metadata as parsed JSON text (PostgreSQL normalizes jsonb).
pub(super) fn normalize(rows: &mut [TransitionRow]) {
    for r in rows.iter_mut() {
        r.metadata = serde_json::from_str::<serde_json::Value>(&r.metadata)
            .unwrap()
            .to_string();
    }
    rows.sort_by_key(|r| (r.step_id, r.sort_key));
}
