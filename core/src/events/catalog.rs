//! The event catalogue: every event name the original engine has (`lib/tasker/constants.rb`),
//! whether this engine emits it, what it means, and the keys of its payload; and the events
//! derived from transitions (`workflow.*`, `observability.step.*`), whose rule is here once
//! ([`derived`]).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::Event;

/// One event of the catalogue ([`crate::Engine::event_catalog`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogEntry {
    pub name: String,
    /// `task`, `step`, `workflow`, `observability`, or a definition's category (`custom`).
    pub category: String,
    pub description: String,
    /// The keys a subscriber finds: the event's own (`task_id`, `step_name`, ...) and its
    /// `metadata.*`.
    pub payload_keys: Vec<String>,
    /// False for the original's events that have no meaning here (`note` says why).
    pub emitted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fired_by: Vec<String>,
    /// Where a custom event comes from: a template key or a definition file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

const TASK_KEYS: &[&str] = &["task_id", "from_state", "to_state", "at_ms"];
const STEP_KEYS: &[&str] = &[
    "task_id",
    "step_id",
    "step_name",
    "from_state",
    "to_state",
    "attempt",
    "at_ms",
];

/// (name, description, metadata keys) of the lifecycle events: one per state transition.
const LIFECYCLE: &[(&str, &str, &[&str])] = &[
    (
        "task.initialize_requested",
        "A task was created, or an operator put it back to work",
        &["reason"],
    ),
    (
        "task.start_requested",
        "A task's first step was claimed",
        &["reason"],
    ),
    (
        "task.completed",
        "Every step of a task is complete or resolved",
        &["steps_total"],
    ),
    (
        "task.failed",
        "A task stopped: a step is out of attempts (or failed permanently)",
        &["error_message", "failed_steps_count"],
    ),
    (
        "task.retry_requested",
        "An operator retried a failed task's step",
        &["reason"],
    ),
    ("task.cancelled", "A task was cancelled", &["reason"]),
    (
        "task.rerun_requested",
        "An operator reran a finished task from one of its steps (rerun_from)",
        &["reason", "step"],
    ),
    (
        "task.resolved_manually",
        "An operator resolved a failed task",
        &["reason"],
    ),
    (
        "step.initialize_requested",
        "A step was created (or bypassed at creation)",
        &["reason"],
    ),
    (
        "step.execution_requested",
        "A worker claimed a step to run its handler",
        &["attempt", "worker"],
    ),
    (
        "step.completed",
        "A step's handler returned its results",
        &["attempt"],
    ),
    (
        "step.failed",
        "A step's attempt failed; it is retried later unless out of attempts",
        &[
            "attempt",
            "error",
            "kind",
            "attempts_exhausted",
            "next_attempt_at",
        ],
    ),
    (
        "step.retry_requested",
        "A failed step becomes pending again (its next attempt, or an operator's retry)",
        &["attempt", "reason", "previous_attempts"],
    ),
    (
        "step.cancelled",
        "A step was cancelled with its task, or because a parent was",
        &["reason", "cancelled_step"],
    ),
    (
        "step.resolved_manually",
        "An operator resolved a step with results",
        &["reason"],
    ),
    (
        "step.rerun_requested",
        "A finished step becomes pending again with fresh attempts: it or a step above it was rerun (rerun_from)",
        &["reason", "from_step", "previous_attempts"],
    ),
    (
        "step.waiting",
        "A step's attempt ended and it waits for something outside it: the child task it created, or a Wait's signal, correlation id or completion from outside",
        &["attempt", "child_task", "wait"],
    ),
];

/// (name, category, description, metadata keys) of the events derived from others
/// ([`derived`]) or emitted by the worker, with the original's payload keys.
const DERIVED: &[(&str, &str, &str, &[&str])] = &[
    (
        "task.paused",
        "task",
        "An operator paused a task: no new step of it starts, running ones finish",
        &["reason"],
    ),
    (
        "task.resumed",
        "task",
        "An operator resumed a paused task: its steps are claimable again",
        &["reason"],
    ),
    (
        "task.deadline_exceeded",
        "task",
        "An unfinished task reached its deadline (deadline_seconds): it is failed, its unfinished steps cancelled (after its task.failed)",
        &["deadline_at"],
    ),
    (
        "step.before_handle",
        "step",
        "A step's handler is about to be called",
        &["handler"],
    ),
    (
        "observability.step.handle",
        "observability",
        "A step's handler is about to be called",
        &["handler"],
    ),
    (
        "workflow.task_started",
        "workflow",
        "A task started (after task.start_requested)",
        &[],
    ),
    (
        "workflow.task_completed",
        "workflow",
        "A task completed (after task.completed)",
        &["total_steps"],
    ),
    (
        "workflow.task_failed",
        "workflow",
        "A task failed (after task.failed)",
        &["error_message", "failed_steps_count"],
    ),
    (
        "workflow.step_completed",
        "workflow",
        "A step completed (after step.completed)",
        &["attempt_number"],
    ),
    (
        "workflow.step_failed",
        "workflow",
        "A step's attempt failed (after step.failed)",
        &[
            "error_message",
            "error_class",
            "attempt_number",
            "attempts_exhausted",
        ],
    ),
    (
        "observability.step.backoff",
        "observability",
        "A failed step waits for its next attempt (after step.failed)",
        &["attempt_number", "next_attempt_at"],
    ),
    (
        "observability.step.max_retries_reached",
        "observability",
        "A step is out of attempts (after step.failed)",
        &["attempt_number", "error_message"],
    ),
];

/// The original's events with no meaning in this engine, and why.
const NOT_EMITTED: &[(&str, &str, &str)] = &[
    ("task.before_transition", "task", "transitions are decided and written in one statement; subscribers hear them after the commit"),
    ("step.before_transition", "step", "transitions are decided and written in one statement; subscribers hear them after the commit"),
    ("step.handle", "step", "the worker announces a handler call once, as step.before_handle"),
    ("workflow.viable_steps_discovered", "workflow", "no discovery pass: a step becomes claimable by a counter in the same write that finished its last parent"),
    ("workflow.no_viable_steps", "workflow", "no discovery pass: a step becomes claimable by a counter"),
    ("workflow.viable_steps_batch_ready", "workflow", "no discovery pass: workers claim steps, not batches of a task"),
    ("workflow.orchestration_requested", "workflow", "no orchestration job: workers claim steps directly"),
    ("workflow.steps_execution_started", "workflow", "no per-task execution batch: each step is claimed on its own"),
    ("workflow.steps_execution_completed", "workflow", "no per-task execution batch: each step is claimed on its own"),
    ("workflow.step_execution_failed", "workflow", "a handler's failure is step.failed (and workflow.step_failed)"),
    ("workflow.task_finalization_started", "workflow", "a task is finished by the write that finished its last step, not by a finalizer"),
    ("workflow.task_finalization_completed", "workflow", "a task is finished by the write that finished its last step, not by a finalizer"),
    ("workflow.task_reenqueue_started", "workflow", "tasks are never re-enqueued: workers claim their steps when ready"),
    ("workflow.task_reenqueue_requested", "workflow", "tasks are never re-enqueued: workers claim their steps when ready"),
    ("workflow.task_reenqueue_failed", "workflow", "tasks are never re-enqueued: workers claim their steps when ready"),
    ("workflow.task_reenqueue_delayed", "workflow", "tasks are never re-enqueued: a step's backoff is its ready time"),
    ("workflow.task_state_unclear", "workflow", "a task's state follows from its counters, in the same write"),
    ("observability.task.handle", "observability", "no task handler runs: workers run steps"),
    ("observability.task.enqueue", "observability", "no task job queue: workers claim steps"),
    ("observability.task.finalize", "observability", "no finalizer: see workflow.task_finalization_started"),
    ("observability.step.find_viable", "observability", "no discovery pass: see workflow.viable_steps_discovered"),
    ("observability.step.skip", "observability", "a bypassed step is step.initialize_requested with reason \"bypassed\", then resolved"),
];

fn keys(own: &[&str], metadata: &[&str]) -> Vec<String> {
    own.iter()
        .map(|k| (*k).to_owned())
        .chain(metadata.iter().map(|k| format!("metadata.{k}")))
        .collect()
}

impl CatalogEntry {
    /// An entry of the engine's own events (no `fired_by`, no `source`).
    fn system(name: &str, category: &str, description: &str, payload_keys: Vec<String>) -> Self {
        CatalogEntry {
            name: name.to_owned(),
            category: category.to_owned(),
            description: description.to_owned(),
            payload_keys,
            emitted: true,
            note: None,
            fired_by: Vec::new(),
            source: None,
        }
    }
}

/// The engine's own events: every lifecycle event, the derived and worker events, and the
/// original's events this engine does not emit (`emitted: false`, with why).
pub fn system_catalog() -> Vec<CatalogEntry> {
    let own = |name: &str| {
        if name.starts_with("task") || name.starts_with("workflow.task") {
            TASK_KEYS
        } else {
            STEP_KEYS
        }
    };
    let lifecycle = LIFECYCLE.iter().map(|(name, description, meta)| {
        let category = name.split('.').next().unwrap_or("");
        CatalogEntry::system(name, category, description, keys(own(name), meta))
    });
    let derived = DERIVED.iter().map(|(name, category, description, meta)| {
        CatalogEntry::system(name, category, description, keys(own(name), meta))
    });
    let not_emitted = NOT_EMITTED
        .iter()
        .map(|(name, category, why)| CatalogEntry {
            emitted: false,
            note: Some(format!("not emitted: {why}")),
            ..CatalogEntry::system(
                name,
                category,
                "An event of the original engine",
                Vec::new(),
            )
        });
    lifecycle.chain(derived).chain(not_emitted).collect()
}

/// True for a lifecycle event's name: one per state transition.
pub fn is_lifecycle_event(name: &str) -> bool {
    LIFECYCLE.iter().any(|(n, ..)| *n == name)
}

/// True for a name the catalogue lists as emitted (a subscription may use it).
pub fn is_emitted_system_event(name: &str) -> bool {
    LIFECYCLE.iter().any(|(n, ..)| *n == name) || DERIVED.iter().any(|(n, ..)| *n == name)
}

/// The events that follow a lifecycle event, with the original's payload keys in their
/// metadata: `workflow.*` for task start, completion and failure and step completion and
/// failure; `observability.step.backoff` for a failure with a next attempt,
/// `observability.step.max_retries_reached` for one without.
pub fn derived(e: &Event) -> Vec<Event> {
    let m = &e.metadata;
    let attempt = e.attempt.map(Value::from).unwrap_or(Value::Null);
    let mut out = Vec::new();
    let mut push = |name: &'static str, metadata: Value| {
        out.push(Event {
            name: Cow::Borrowed(name),
            metadata,
            ..e.clone()
        });
    };
    match e.name.as_ref() {
        "task.start_requested" => push("workflow.task_started", json!({})),
        "task.completed" => push(
            "workflow.task_completed",
            json!({"total_steps": m.get("steps_total")}),
        ),
        "task.failed" => {
            push(
                "workflow.task_failed",
                pick(m, &["error_message", "failed_steps_count"]),
            );
            if m.get("reason").and_then(Value::as_str) == Some("deadline_exceeded") {
                push("task.deadline_exceeded", pick(m, &["deadline_at"]));
            }
        }
        "step.completed" => push(
            "workflow.step_completed",
            json!({"attempt_number": attempt}),
        ),
        "step.failed" => {
            let exhausted = m
                .get("attempts_exhausted")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            push(
                "workflow.step_failed",
                json!({"error_message": m.get("error"), "error_class": m.get("kind"),
                       "attempt_number": attempt, "attempts_exhausted": exhausted}),
            );
            if let Some(next) = m.get("next_attempt_at") {
                push(
                    "observability.step.backoff",
                    json!({"attempt_number": attempt, "next_attempt_at": next}),
                );
            } else if exhausted {
                push(
                    "observability.step.max_retries_reached",
                    json!({"attempt_number": attempt, "error_message": m.get("error")}),
                );
            }
        }
        _ => {}
    }
    out
}

fn pick(m: &Value, keys: &[&str]) -> Value {
    let mut out = Map::new();
    for k in keys {
        if let Some(v) = m.get(*k) {
            out.insert((*k).to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lifecycle_event_is_in_the_catalogue_and_every_original_name_too() {
        let cat = system_catalog();
        for name in crate::state::all_event_names() {
            let e = cat
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name}"));
            assert!(e.emitted, "{name}");
        }
        // The original's constants.rb, every group but registry and test events.
        for name in [
            "task.before_transition",
            "step.before_handle",
            "step.handle",
            "workflow.task_started",
            "workflow.task_completed",
            "workflow.task_failed",
            "workflow.step_completed",
            "workflow.step_failed",
            "workflow.viable_steps_discovered",
            "workflow.no_viable_steps",
            "workflow.orchestration_requested",
            "workflow.task_finalization_started",
            "workflow.task_finalization_completed",
            "workflow.task_reenqueue_started",
            "workflow.task_reenqueue_requested",
            "workflow.task_reenqueue_failed",
            "workflow.task_reenqueue_delayed",
            "workflow.task_state_unclear",
            "workflow.step_execution_failed",
            "workflow.viable_steps_batch_ready",
            "workflow.steps_execution_started",
            "workflow.steps_execution_completed",
            "observability.task.handle",
            "observability.task.enqueue",
            "observability.task.finalize",
            "observability.step.handle",
            "observability.step.find_viable",
            "observability.step.backoff",
            "observability.step.skip",
            "observability.step.max_retries_reached",
        ] {
            let e = cat
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name}"));
            assert!(
                e.emitted
                    || e.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with("not emitted: ")),
                "{name}"
            );
        }
        let mut names: Vec<&str> = cat.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "a name listed twice");
    }

    #[test]
    fn a_failure_derives_the_originals_events_with_its_keys() {
        let failed = Event {
            name: Cow::Borrowed("step.failed"),
            task_id: 1,
            step_id: Some(2),
            step_name: Some("charge".into()),
            from_state: Some("in_progress"),
            to_state: Some("error"),
            attempt: Some(3),
            metadata: json!({"attempt": 3, "error": "declined", "kind": "permanent", "attempts_exhausted": true}),
            at_ms: 5,
        };
        let d = derived(&failed);
        assert_eq!(
            d.iter().map(|e| e.name.as_ref()).collect::<Vec<_>>(),
            [
                "workflow.step_failed",
                "observability.step.max_retries_reached"
            ]
        );
        assert_eq!(
            d[0].metadata,
            json!({"error_message": "declined", "error_class": "permanent", "attempt_number": 3, "attempts_exhausted": true})
        );
        assert_eq!(
            (d[0].task_id, d[0].step_name.as_deref()),
            (1, Some("charge"))
        );
        assert!(derived(&Event {
            name: Cow::Borrowed("step.cancelled"),
            ..failed
        })
        .is_empty());
    }
}
