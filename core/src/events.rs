//! Lifecycle events: exactly one per state transition, delivered to in-process subscribers
//! after the transaction that made the transition has committed.
//!
//! Subscribers receive [`Event`]s from a [`tokio::sync::broadcast`] channel
//! ([`crate::Engine::subscribe`]): plain data, pulled by the subscriber, so a binding can forward
//! them to its host language from the host's own thread. A subscriber that falls behind by more
//! than the channel capacity loses the oldest events and is told how many (`Lagged`); the
//! transition rows in the database remain the complete record.

use serde::Serialize;
use serde_json::Value;

/// One lifecycle event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// e.g. `step.completed`, `task.failed` (reference §2.2 / §2.3).
    pub name: &'static str,
    pub task_id: i64,
    /// Set for step events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    /// `None` for the initial transition.
    pub from_state: Option<&'static str>,
    pub to_state: &'static str,
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
            name: LAGGED,
            task_id: 0,
            step_id: None,
            step_name: None,
            from_state: None,
            to_state: "",
            attempt: None,
            metadata: serde_json::json!({"missed": missed}),
            at_ms: 0,
        }
    }

    pub fn is_task_event(&self) -> bool {
        self.step_id.is_none()
    }
}
