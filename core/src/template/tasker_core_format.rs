//! The newer tasker-core template shape (`steps`, `handler.callable`, `dependencies`,
//! `retry`).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::*;
use crate::backoff::Backoff;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRaw {
    name: String,
    #[serde(default, alias = "namespace")]
    namespace_name: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, alias = "input_schema")]
    schema: Option<Value>,
    steps: Vec<NewStep>,
    #[serde(default)]
    custom_events: Option<Vec<CustomEvent>>,
    #[serde(default)]
    schedules: Option<Vec<TemplateSchedule>>,
    #[serde(default)]
    deadline_seconds: Option<f64>,
    // Overrides are merged before parsing (`apply_environment`).
    #[serde(default)]
    #[allow(dead_code)]
    environments: Option<Map<String, Value>>,
    // Descriptive: stored and shown (`compat`), no effect.
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    task_handler: Option<Value>,
    #[serde(default)]
    system_dependencies: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewStep {
    name: String,
    /// `standard` (default), `decision`, `deferred_convergence`, `batchable`, `batch_worker`.
    #[serde(default, rename = "type")]
    step_type: Option<StepKind>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    handler: Option<NewHandler>,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default)]
    retry: Option<NewRetry>,
    #[serde(default)]
    timeout_seconds: Option<f64>,
    #[serde(default)]
    max_reschedules: Option<u32>,
    #[serde(default)]
    skippable: Option<bool>,
    #[serde(default)]
    backoff: Option<Backoff>,
    #[serde(default)]
    custom_events: Option<Vec<CustomEvent>>,
    #[serde(default)]
    batch_config: Option<BatchConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHandler {
    callable: String,
    #[serde(default)]
    initialization: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRetry {
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    max_attempts: Option<i64>,
    #[serde(default)]
    backoff_base_ms: Option<f64>,
    #[serde(default)]
    max_backoff_ms: Option<f64>,
}

impl NewRaw {
    pub(super) fn into_definition(mut self) -> Result<Definition, TemplateError> {
        let mut compat = Map::new();
        for (k, v) in [
            ("metadata", self.metadata.take()),
            ("task_handler", self.task_handler.take()),
            ("system_dependencies", self.system_dependencies.take()),
        ] {
            if let Some(v) = v {
                compat.insert(k.to_owned(), v);
            }
        }
        let mut custom_events = Vec::new();
        for e in self.custom_events.take().into_iter().flatten().chain(
            self.steps
                .iter_mut()
                .flat_map(|s| s.custom_events.take().into_iter().flatten()),
        ) {
            merge_event(&mut custom_events, e);
        }
        Ok(Definition {
            custom_events,
            compat,
            schedules: self.schedules.take().unwrap_or_default(),
            deadline_seconds: self.deadline_seconds,
            namespace: self
                .namespace_name
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            version: self.version.unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
            description: self.description,
            schema: self.schema,
            steps: self
                .steps
                .into_iter()
                .map(|s| {
                    let retry = s.retry.unwrap_or(NewRetry {
                        retryable: None,
                        max_attempts: None,
                        backoff_base_ms: None,
                        max_backoff_ms: None,
                    });
                    let mut backoff = s.backoff.unwrap_or_default();
                    if let Some(b) = retry.backoff_base_ms {
                        backoff.base_seconds = b / 1000.0;
                    }
                    if let Some(m) = retry.max_backoff_ms {
                        backoff.max_seconds = m / 1000.0;
                    }
                    let (handler, config) = match s.handler {
                        Some(h) => (h.callable, h.initialization),
                        None => (s.name.clone(), None),
                    };
                    StepDefinition {
                        name: s.name,
                        description: s.description,
                        handler,
                        handler_config: config.unwrap_or(Value::Object(Map::new())),
                        depends_on: s.dependencies,
                        retryable: retry.retryable.unwrap_or(true),
                        retry_limit: retry.max_attempts.unwrap_or(DEFAULT_RETRY_LIMIT as i64),
                        skippable: s.skippable.unwrap_or(false),
                        backoff,
                        timeout_seconds: s.timeout_seconds,
                        max_reschedules: s.max_reschedules,
                        kind: s.step_type.unwrap_or_default(),
                        batch_config: s.batch_config,
                    }
                })
                .collect(),
            name: self.name,
        })
    }
}
