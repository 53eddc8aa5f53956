//! The original tasker-engine 1.0 template shape (`step_templates`).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::*;
use crate::backoff::Backoff;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LegacyRaw {
    name: String,
    #[serde(default)]
    namespace_name: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    schema: Option<Value>,
    step_templates: Vec<LegacyStep>,
    #[serde(default)]
    named_steps: Option<Vec<String>>,
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
    // Kept for the original's Ruby classes; no effect here, stored and shown (`compat`).
    #[serde(default)]
    module_namespace: Option<Value>,
    #[serde(default)]
    task_handler_class: Option<Value>,
    /// The earliest files' name for `task_handler_class`.
    #[serde(default)]
    class_name: Option<Value>,
    /// The TaskHandler's own configuration (not a step's).
    #[serde(default)]
    handler_config: Option<Value>,
    #[serde(default)]
    concurrent: Option<bool>,
    #[serde(default)]
    default_dependent_system: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyStep {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    handler_class: Option<String>,
    #[serde(default)]
    handler_config: Option<Value>,
    #[serde(default)]
    depends_on_step: Option<String>,
    #[serde(default)]
    depends_on_steps: Option<Vec<String>>,
    #[serde(default)]
    default_retryable: Option<bool>,
    #[serde(default)]
    default_retry_limit: Option<i64>,
    #[serde(default)]
    skippable: Option<bool>,
    #[serde(default)]
    backoff: Option<Backoff>,
    #[serde(default)]
    timeout_seconds: Option<f64>,
    #[serde(default)]
    max_reschedules: Option<u32>,
    #[serde(default)]
    dependent_system: Option<Value>,
    #[serde(default)]
    custom_events: Option<Vec<CustomEvent>>,
    /// The native format uses tasker-core's step `type` names.
    #[serde(default, rename = "type")]
    kind: Option<StepKind>,
    #[serde(default)]
    batch_config: Option<BatchConfig>,
}

impl LegacyRaw {
    pub(super) fn into_definition(mut self) -> Result<Definition, TemplateError> {
        if let Some(named) = &self.named_steps {
            for (i, s) in self.step_templates.iter().enumerate() {
                let deps = s
                    .depends_on_step
                    .iter()
                    .chain(s.depends_on_steps.iter().flatten());
                for n in std::iter::once(&s.name).chain(deps) {
                    if !named.contains(n) {
                        return Err(TemplateError::Shape {
                            template: self.name.clone(),
                            path: format!("step_templates[{i}]"),
                            message: format!("step {n:?} is not listed in named_steps"),
                        });
                    }
                }
            }
        }
        let mut compat = Map::new();
        let mut keep = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                compat.insert(k.to_owned(), v);
            }
        };
        keep("named_steps", self.named_steps.clone().map(Value::from));
        keep("module_namespace", self.module_namespace);
        keep("task_handler_class", self.task_handler_class);
        keep("class_name", self.class_name);
        keep("handler_config", self.handler_config);
        keep("concurrent", self.concurrent.map(Value::from));
        keep("default_dependent_system", self.default_dependent_system);
        let mut custom_events = Vec::new();
        let dependent: Map<String, Value> = self
            .step_templates
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.dependent_system.clone()?)))
            .collect();
        if !dependent.is_empty() {
            compat.insert("dependent_systems".into(), Value::Object(dependent));
        }
        for e in self.custom_events.into_iter().flatten().chain(
            self.step_templates
                .iter_mut()
                .flat_map(|s| s.custom_events.take().into_iter().flatten()),
        ) {
            merge_event(&mut custom_events, e);
        }
        Ok(Definition {
            namespace: self
                .namespace_name
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            version: self.version.unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
            description: self.description,
            schema: self.schema,
            custom_events,
            compat,
            schedules: self.schedules.take().unwrap_or_default(),
            deadline_seconds: self.deadline_seconds,
            steps: self
                .step_templates
                .into_iter()
                .map(|s| {
                    let mut deps: Vec<String> = Vec::new();
                    for d in s
                        .depends_on_step
                        .into_iter()
                        .chain(s.depends_on_steps.into_iter().flatten())
                    {
                        if !deps.contains(&d) {
                            deps.push(d);
                        }
                    }
                    StepDefinition {
                        handler: s.handler_class.unwrap_or_else(|| s.name.clone()),
                        name: s.name,
                        description: s.description,
                        handler_config: s.handler_config.unwrap_or(Value::Object(Map::new())),
                        depends_on: deps,
                        retryable: s.default_retryable.unwrap_or(true),
                        retry_limit: s.default_retry_limit.unwrap_or(DEFAULT_RETRY_LIMIT as i64),
                        skippable: s.skippable.unwrap_or(false),
                        backoff: s.backoff.unwrap_or_default(),
                        timeout_seconds: s.timeout_seconds,
                        max_reschedules: s.max_reschedules,
                        kind: s.kind.unwrap_or_default(),
                        batch_config: s.batch_config,
                    }
                })
                .collect(),
            name: self.name,
        })
    }
}
