//! Custom events: published by a running job's handler, delivered at once to subscribers (not
//! a transition, nothing stored).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{decide, Engine};
use crate::error::{Error, Result};
use crate::protocol::{Job, JobKey};

impl Engine {
    /// Publishes the custom event `name` from a running job's handler: delivered at once to
    /// subscribers, like the lifecycle events, with `metadata = {event_type: "custom", payload}`.
    /// The template must declare the event (`custom_events`) or an event definition file
    /// define it ([`Engine::register_events`]); anything else is refused with the list of what
    /// the template declares. A defined event's payload must fit its `payload_schema`.
    pub fn publish_custom_event(&self, job: &Job, name: &str, payload: Value) -> Result<()> {
        self.publish_custom_event_for(job.key, &job.step_name, &job.custom_events, name, payload)
    }

    /// Announces that a job's handler is about to be called: `step.before_handle` and
    /// `observability.step.handle` (the original's names), `metadata = {handler}`. The worker
    /// calls it as it hands the job to the handler (in the driver or to the host language).
    pub fn announce_handle(&self, job: &Job) {
        let inner = &self.inner;
        if inner.events.receiver_count() == 0 {
            return;
        }
        for name in ["step.before_handle", "observability.step.handle"] {
            let _ = inner.events.send(Arc::new(crate::events::Event {
                name: std::borrow::Cow::Borrowed(name),
                task_id: job.key.task_id,
                step_id: Some(job.key.step_id),
                step_name: Some(job.step_name.clone()),
                from_state: None,
                to_state: None,
                attempt: Some(job.key.attempt),
                metadata: json!({"handler": job.handler}),
                at_ms: self.now(),
            }));
        }
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
        let defined = self.event_definition(name);
        if defined.is_none() && !declared.iter().any(|d| d == name) {
            return Err(Error::Validation(if declared.is_empty() {
                format!(
                    "step {step_name:?} cannot publish {name:?}: its template declares no custom_events and no event definition file defines it"
                )
            } else {
                format!(
                    "step {step_name:?} cannot publish {name:?}: its template declares only {}, and no event definition file defines it",
                    declared.join(", ")
                )
            }));
        }
        if let Some(d) = &defined {
            d.check_payload(&payload).map_err(Error::Validation)?;
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
