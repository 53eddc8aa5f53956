//! Event definitions ([`crate::events::EventDefinition`]): registered from files or text,
//! stored, and known to every process opened after (and to the registering one at once).

use std::sync::Arc;

use super::Engine;
use crate::error::{Error, Result};
use crate::events::{
    parse_event_definitions, read_event_definitions, CatalogEntry, EventDefinition,
};
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

impl Engine {
    /// Every event a subscriber may hear, with its category, description and payload keys:
    /// the engine's own ([`crate::events::system_catalog`], the original's events it does not
    /// emit included, `emitted: false`), the defined ones, and those registered templates
    /// declare.
    pub async fn event_catalog(&self) -> Result<Vec<CatalogEntry>> {
        let mut out = crate::events::system_catalog();
        let custom_keys = |payload: &mut dyn Iterator<Item = String>| -> Vec<String> {
            [
                "task_id",
                "step_id",
                "step_name",
                "attempt",
                "at_ms",
                "metadata.event_type",
            ]
            .into_iter()
            .map(str::to_owned)
            .chain(payload)
            .collect()
        };
        for d in self.event_definitions().await? {
            let mut payload = d
                .payload_schema
                .iter()
                .map(|f| format!("metadata.payload.{}", f.key));
            out.push(CatalogEntry {
                payload_keys: custom_keys(&mut payload),
                name: d.name,
                category: d.category,
                description: d.description.unwrap_or_default(),
                emitted: true,
                note: None,
                fired_by: d.fired_by,
                source: d.source,
            });
        }
        for t in self.templates().await?.into_iter().filter(|t| t.current) {
            let key = format!("{}.{}@{}", t.namespace, t.name, t.version);
            for e in t.custom_events {
                if let Some(known) = out.iter_mut().find(|c| c.name == e.name) {
                    if known.category != "custom" || known.source.as_deref() == Some(&key) {
                        continue;
                    }
                    let from = known.source.take().unwrap_or_default();
                    known.source = Some(if from.is_empty() {
                        key.clone()
                    } else {
                        format!("{from}, {key}")
                    });
                    continue;
                }
                out.push(CatalogEntry {
                    name: e.name,
                    category: "custom".into(),
                    description: e.description.unwrap_or_default(),
                    payload_keys: custom_keys(&mut std::iter::once("metadata.payload".to_owned())),
                    emitted: true,
                    note: None,
                    fired_by: Vec::new(),
                    source: Some(key.clone()),
                });
            }
        }
        Ok(out)
    }
}
