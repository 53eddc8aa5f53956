//! The JSON bodies: the original engine's serializers (task, step, handler), built from the
//! core's snapshots.

use serde_json::{json, Map, Value};
use tasker_core::{StepSnapshot, TaskSnapshot, TaskState, TaskSummary, TaskTemplate};

pub fn full_name(namespace: &str, name: &str, version: &str) -> String {
    format!("{namespace}.{name}@{version}")
}

/// A step as `GET /tasks/:id/workflow_steps/:step` shows it.
pub fn step(task: &TaskSnapshot, s: &StepSnapshot, template: Option<&TaskTemplate>) -> Value {
    let children = task.children_of(&s.name);
    let st = template.and_then(|t| t.step_index(&s.name).map(|i| &t.steps[i]));
    json!({
        "workflow_step_id": s.id,
        "task_id": task.id,
        "name": s.name,
        "handler": s.handler,
        "status": s.status,
        "attempts": s.attempts,
        "retry_limit": s.max_attempts,
        "retryable": st.map(|x| x.retryable),
        "skippable": st.map(|x| x.skippable),
        "results": s.results,
        "error": s.error,
        "parents": s.depends_on,
        "children": children,
        "processed_at": s.completed_at,
        "next_attempt_at": s.next_attempt_at,
        "last_attempted_at": s.last_attempted_at,
        "duration_ms": s.duration_ms,
    })
}

/// The fields a task line and a whole task share.
#[allow(clippy::too_many_arguments)]
fn head(
    id: i64,
    namespace: &str,
    name: &str,
    version: &str,
    status: TaskState,
    requested_at: &str,
    completed_at: &Option<String>,
) -> Map<String, Value> {
    let v = json!({
        "task_id": id,
        "name": name,
        "namespace": namespace,
        "version": version,
        "full_name": full_name(namespace, name, version),
        "status": status,
        "complete": status == TaskState::Complete,
        "requested_at": requested_at,
        "completed_at": completed_at,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object"),
    }
}

/// A task with its steps, as `GET /tasks/:id` shows it.
pub fn task(t: &TaskSnapshot, template: Option<&TaskTemplate>) -> Value {
    let mut m = head(
        t.id,
        &t.namespace,
        &t.name,
        &t.version,
        t.status,
        &t.created_at,
        &t.completed_at,
    );
    let rest = json!({
        "context": t.context,
        "initiator": t.initiator,
        "source_system": t.source_system,
        "reason": t.reason,
        "tags": t.tags,
        "bypass_steps": t.bypass_steps,
        "idempotency_key": t.idempotency_key,
        "updated_at": t.updated_at,
        "workflow_steps": t.steps.iter().map(|s| step(t, s, template)).collect::<Vec<_>>(),
    });
    if let Value::Object(r) = rest {
        m.extend(r);
    }
    Value::Object(m)
}

/// A line of `GET /tasks`.
pub fn summary(t: &TaskSummary) -> Value {
    let mut m = head(
        t.id,
        &t.namespace,
        &t.name,
        &t.version,
        t.status,
        &t.created_at,
        &t.completed_at,
    );
    m.insert("steps_total".into(), t.steps_total.into());
    m.insert("steps_done".into(), t.steps_done.into());
    Value::Object(m)
}

/// A template as `GET /handlers/:namespace/:name` shows it.
pub fn handler(t: &TaskTemplate) -> Value {
    let levels = t.levels();
    let mut order: Vec<usize> = (0..t.steps.len()).collect();
    order.sort_by_key(|&i| (levels[i], i));
    let version = t.version.to_string();
    json!({
        "name": t.name,
        "namespace": t.namespace,
        "version": version,
        "full_name": full_name(&t.namespace, &t.name, &version),
        "description": t.description,
        "schema": t.schema,
        "step_templates": t.steps.iter().map(|s| json!({
            "name": s.name,
            "handler_class": s.handler,
            "handler_config": *s.handler_config,
            "depends_on_steps": s.depends_on,
            "default_retryable": s.retryable,
            "default_retry_limit": s.max_attempts,
            "skippable": s.skippable,
            "timeout_seconds": s.timeout_seconds,
        })).collect::<Vec<_>>(),
        "dependency_graph": {
            "nodes": t.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            "edges": t.steps.iter().flat_map(|s| s.depends_on.iter().map(move |d| json!({"from": d, "to": s.name}))).collect::<Vec<_>>(),
            "execution_order": order.iter().map(|&i| t.steps[i].name.as_str()).collect::<Vec<_>>(),
        },
    })
}
