//! Event definitions ([`crate::events::EventDefinition`]): registered from files or text,
//! stored, and known to every process opened after (and to the registering one at once).

use std::sync::Arc;

use super::Engine;
use crate::error::{Error, Result};
use crate::events::{parse_event_definitions, read_event_definitions, EventDefinition};
use crate::store::EventDefinitionRow;

/// Event definitions as a host hands them over ([`Engine::register_events`]).
#[derive(Debug, Clone, Copy)]
pub enum EventSource<'a> {
    /// The text of one event definition file.
    Yaml(&'a str),
    /// A file, or a directory: every `*.yml` / `*.yaml` file in it, by name.
    Path(&'a std::path::Path),
}

impl Engine {
    /// Registers event definitions (the original's `config/tasker/events/*.yml`): stored, one
    /// row per event name, replacing an earlier definition of the same name. Returns what was
    /// registered, in the files' order. Nothing is registered when any definition is invalid
    /// (the error names the file and the place).
    pub async fn register_events(&self, src: EventSource<'_>) -> Result<Vec<EventDefinition>> {
        let defs = match src {
            EventSource::Yaml(text) => parse_event_definitions(text, "event definitions"),
            EventSource::Path(p) => read_event_definitions(p),
        }
        .map_err(Error::Validation)?;
        let now = self.now();
        let mut tx = self.inner.store.begin(true).await?;
        for d in &defs {
            tx.upsert_event_definition(&EventDefinitionRow {
                name: d.name.clone(),
                definition: serde_json::to_string(d).expect("definition serializes"),
                registered_at: now,
            })
            .await?;
        }
        tx.commit().await?;
        let mut known = self.inner.event_definitions.write().unwrap();
        for d in &defs {
            known.insert(d.name.clone(), Arc::new(d.clone()));
        }
        Ok(defs)
    }

    /// Every stored event definition, by name; this process then knows them all (a process
    /// reads them when it opens, and again here).
    pub async fn event_definitions(&self) -> Result<Vec<EventDefinition>> {
        let rows = self.inner.store.event_definitions().await?;
        let mut defs = Vec::with_capacity(rows.len());
        for r in rows {
            let d: EventDefinition = serde_json::from_str(&r.definition).map_err(|e| {
                Error::Corrupt(format!(
                    "event definition {:?} is not readable: {e}",
                    r.name
                ))
            })?;
            defs.push(d);
        }
        let mut known = self.inner.event_definitions.write().unwrap();
        known.clear();
        for d in &defs {
            known.insert(d.name.clone(), Arc::new(d.clone()));
        }
        Ok(defs)
    }

    /// The definition of the custom event `name`, if this process knows one.
    pub fn event_definition(&self, name: &str) -> Option<Arc<EventDefinition>> {
        self.inner
            .event_definitions
            .read()
            .unwrap()
            .get(name)
            .cloned()
    }
}
