//! Lifecycle events: exactly one per state transition, delivered to in-process subscribers
//! after the transaction that made the transition has committed.
//!
//! Subscribers receive [`Event`]s from a [`tokio::sync::broadcast`] channel
//! ([`crate::Engine::subscribe`]): plain data, pulled by the subscriber, so a binding can forward
//! them to its host language from the host's own thread. A subscriber that falls behind by more
//! than the channel capacity loses the oldest events and is told how many (`Lagged`); the
//! transition rows in the database remain the complete record.

mod catalog;
mod definitions;

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

pub use catalog::{
    derived, is_emitted_system_event, is_lifecycle_event, system_catalog, CatalogEntry,
};
pub use definitions::{
    parse_event_definitions, read_event_definitions, EventDefinition, PayloadField,
};

/// One lifecycle event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// e.g. `step.completed`, `task.failed` (reference §2.2 / §2.3), or a custom event a
    /// template declared (`order.fulfilled`).
    pub name: Cow<'static, str>,
    pub task_id: i64,
    /// Set for step events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    /// `None` for the initial transition (and for custom events).
    pub from_state: Option<&'static str>,
    /// `None` for custom events.
    pub to_state: Option<&'static str>,
    /// The step's attempt number (step events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The transition row's metadata (error message, reason, retry time, ...).
    pub metadata: Value,
    /// Epoch milliseconds.
    pub at_ms: i64,
}

/// The name of the marker a slow subscriber receives in place of the events it missed.
pub const LAGGED: &str = "events.lagged";

impl Event {
    /// The marker for `missed` events dropped because the subscriber fell behind.
    pub fn lagged(missed: u64) -> Event {
        Event {
            name: Cow::Borrowed(LAGGED),
            task_id: 0,
            step_id: None,
            step_name: None,
            from_state: None,
            to_state: None,
            attempt: None,
            metadata: serde_json::json!({"missed": missed}),
            at_ms: 0,
        }
    }

    pub fn is_task_event(&self) -> bool {
        self.step_id.is_none()
    }

    /// True for a state transition's own event (one per transition row), not one derived
    /// from it (`workflow.*`), a worker's (`step.before_handle`) or a custom one.
    pub fn is_transition(&self) -> bool {
        is_lifecycle_event(&self.name)
    }

    /// True for an event a handler published (not a state transition).
    pub fn is_custom(&self) -> bool {
        self.to_state.is_none()
            && self.metadata.get("event_type").and_then(Value::as_str) == Some("custom")
    }
}

/// Namespaces a custom event may not use (the reference's rule): they belong to the engine.
pub const RESERVED_EVENT_NAMESPACES: [&str; 5] =
    ["task", "step", "workflow", "observability", "test"];

/// Checks the name of a custom event (reference §7.3): it contains a `.`, is not a lifecycle
/// event, and its namespace (before the first `.`) is not one of
/// [`RESERVED_EVENT_NAMESPACES`]. The error says which rule it breaks.
pub fn check_custom_event_name(name: &str) -> Result<(), String> {
    let Some((ns, _)) = name.split_once('.') else {
        return Err(format!(
            "{name:?} must contain a '.' (a namespace, then the event: \"order.fulfilled\")"
        ));
    };
    if crate::state::all_event_names().contains(&name) {
        return Err(format!("{name:?} is a lifecycle event of the engine"));
    }
    if RESERVED_EVENT_NAMESPACES.contains(&ns) {
        return Err(format!(
            "{name:?}: the namespace {ns:?} is reserved for the engine ({})",
            RESERVED_EVENT_NAMESPACES.join(", ")
        ));
    }
    Ok(())
}

/// Checks the name of a custom event a *template* declares (`custom_events`): a dotted name
/// as [`check_custom_event_name`] says, or a plain one (`data_extraction_started`: letters,
/// digits, `_`, `-`), which the original engine accepts in templates (it ignores that list;
/// only its Ruby `register_custom_event` asks for a dot). A plain name is used as written: a
/// handler publishes it and a subscriber subscribes to it by that name.
pub fn check_declared_event_name(name: &str) -> Result<(), String> {
    if name.contains('.') {
        return check_custom_event_name(name);
    }
    check_plain_event_name(name)
}

fn check_plain_event_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{name:?} is not an event name: a plain name has only letters, digits, '_' and '-' \
             (\"data_extraction_started\"), a namespaced one a '.' (\"order.fulfilled\")"
        ));
    }
    // `task_completed` for `task.completed` would subscribe to nothing, quietly.
    if let Some(lifecycle) = crate::state::all_event_names()
        .iter()
        .find(|e| e.replace('.', "_") == name)
    {
        return Err(format!(
            "{name:?} is not an event; the lifecycle event is {lifecycle:?}"
        ));
    }
    Ok(())
}

/// Checks a subscription pattern: `*`, a lifecycle event, or a valid custom event name
/// (dotted, or plain as a template may declare it).
pub fn check_subscription(name: &str) -> Result<(), String> {
    if name == "*"
        || crate::state::all_event_names().contains(&name)
        || is_emitted_system_event(name)
    {
        return Ok(());
    }
    check_declared_event_name(name).map_err(|why| {
        format!("unknown event {name:?}: not a lifecycle event, and not a custom event name: {why}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_event_names_follow_the_reference_rules() {
        for ok in [
            "order.fulfilled",
            "analytics.report.ready",
            "payments.charge_declined",
        ] {
            assert_eq!(check_custom_event_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("fulfilled", "must contain a '.'"),
            ("step.completed", "lifecycle event"),
            ("task.custom_thing", "reserved"),
            ("workflow.x", "reserved"),
            ("observability.x", "reserved"),
            ("test.x", "reserved"),
        ] {
            let e = check_custom_event_name(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_subscription("*").is_ok());
        assert!(check_subscription("step.failed").is_ok());
        assert!(check_subscription("order.fulfilled").is_ok());
        assert!(check_subscription("step.exploded")
            .unwrap_err()
            .contains("unknown event"));
        // Plain names, as a template may declare them; not a lifecycle name misspelt.
        assert_eq!(check_declared_event_name("data_extraction_started"), Ok(()));
        assert!(check_subscription("service_call_failed").is_ok());
        assert!(check_subscription("task_completed")
            .unwrap_err()
            .contains("\"task.completed\""));
        assert!(check_declared_event_name("two words")
            .unwrap_err()
            .contains("not an event name"));
    }
}
