//! Task templates: parsing, validation, and the step DAG.
//!
//! Two YAML shapes are accepted and mapped onto one model, [`TaskTemplate`]:
//!
//! * the original tasker-engine shape: `name`, `namespace_name`, `version`, `description`,
//!   `schema`, `step_templates[]` (`name`, `description`, `handler_class`, `handler_config`,
//!   `depends_on_step`, `depends_on_steps`, `default_retryable`, `default_retry_limit`,
//!   `skippable`, plus Tasker's `backoff` and `timeout_seconds`) and
//!   `environments.<env>.step_templates[]` overrides merged by step name;
//! * the newer tasker-core shape: `steps[]` with `name`, `handler.callable`
//!   (`handler.initialization` becomes the handler config), `dependencies`,
//!   `retry {retryable, max_attempts}`, `timeout_seconds`.
//!
//! A template is immutable once registered: its normalized [`Definition`] is stored, and the same
//! name + namespace + version may only be registered again with an identical definition.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backoff::Backoff;
use crate::error::TemplateError;

pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_VERSION: &str = "0.1.0";
pub const DEFAULT_RETRY_LIMIT: u32 = 3;

/// The normalized, storable form of a template: what registration compares and persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub namespace: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    pub steps: Vec<StepDefinition>,
    /// Events the template declares and its handlers may publish (reference §7.3): the
    /// template's own list and its steps' lists, merged by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_events: Vec<CustomEvent>,
    /// Fields of the original format kept for its Ruby classes (`task_handler_class`,
    /// `module_namespace`, `named_steps`, `concurrent`, `default_dependent_system`) and
    /// descriptive fields of the newer one (`metadata`, ...): no effect here, but stored and
    /// shown so nothing is silently lost.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub compat: Map<String, Value>,
}

/// A custom event a template declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomEvent {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One step of a [`Definition`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The handler name workers register; defaults to the step name.
    pub handler: String,
    #[serde(default)]
    pub handler_config: Value,
    #[serde(default)]
    pub depends_on: Vec<String>,
    pub retryable: bool,
    /// Maximum attempts including the first (>= 1).
    pub retry_limit: i64,
    #[serde(default)]
    pub skippable: bool,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
}

/// A validated template with its DAG.
#[derive(Debug, Clone)]
pub struct TaskTemplate {
    pub name: String,
    pub namespace: String,
    pub version: semver::Version,
    pub description: Option<String>,
    pub schema: Option<Value>,
    pub steps: Vec<StepTemplate>,
    /// Edges run parent -> child; node `i` is `steps[i]`.
    pub graph: DiGraph<usize, ()>,
    validator: Option<Arc<jsonschema::Validator>>,
    /// Names of the declared custom events (shared with every job of this template).
    pub custom_event_names: Arc<Vec<String>>,
    definition: Definition,
}

/// A validated step of a [`TaskTemplate`].
#[derive(Debug, Clone)]
pub struct StepTemplate {
    pub name: String,
    pub description: Option<String>,
    pub handler: String,
    pub handler_config: Arc<Value>,
    pub depends_on: Vec<String>,
    /// Indexes into [`TaskTemplate::steps`].
    pub parents: Vec<usize>,
    pub children: Vec<usize>,
    pub retryable: bool,
    /// Maximum attempts including the first: 1 when not retryable.
    pub max_attempts: u32,
    pub skippable: bool,
    pub backoff: Backoff,
    pub timeout_seconds: Option<f64>,
}

impl TaskTemplate {
    /// Parses YAML text (either shape). `environment` selects `environments.<env>` overrides.
    pub fn from_yaml(src: &str, environment: Option<&str>) -> Result<TaskTemplate, TemplateError> {
        let value: Value = serde_norway::from_str(src).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            TemplateError::Syntax {
                line,
                column,
                message: strip_location(&e.to_string()),
            }
        })?;
        Self::from_value(value, environment)
    }

    /// Reads and parses a YAML (or JSON) file.
    pub fn from_path(
        path: &std::path::Path,
        environment: Option<&str>,
    ) -> Result<TaskTemplate, TemplateError> {
        let src = std::fs::read_to_string(path).map_err(|e| TemplateError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_yaml(&src, environment).map_err(|e| match e {
            TemplateError::Syntax {
                line,
                column,
                message,
            } => TemplateError::Io {
                path: format!("{}:{line}:{column}", path.display()),
                message: format!("YAML syntax error: {message}"),
            },
            other => other,
        })
    }

    /// Builds a template from an already-parsed document (a dict from a host language).
    pub fn from_value(
        mut value: Value,
        environment: Option<&str>,
    ) -> Result<TaskTemplate, TemplateError> {
        let label = value
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| "<unnamed>".to_owned());
        let Value::Object(obj) = &value else {
            return Err(TemplateError::Shape {
                template: label,
                path: ".".into(),
                message: format!("expected a mapping at the top level, got {}", kind(&value)),
            });
        };
        let new_shape = obj.contains_key("steps") && !obj.contains_key("step_templates");
        if let Some(env) = environment {
            apply_environment(&mut value, env);
        }
        let shape_err = |err: serde_path_to_error::Error<serde_json::Error>| {
            let path = err.path().to_string();
            TemplateError::Shape {
                template: label.clone(),
                path,
                message: err.into_inner().to_string(),
            }
        };
        let def = if new_shape {
            let raw: NewRaw = serde_path_to_error::deserialize(value).map_err(shape_err)?;
            raw.into_definition()?
        } else {
            let raw: LegacyRaw = serde_path_to_error::deserialize(value).map_err(shape_err)?;
            raw.into_definition()?
        };
        Self::from_definition(def)
    }

    /// Validates a normalized definition and builds the DAG.
    pub fn from_definition(def: Definition) -> Result<TaskTemplate, TemplateError> {
        let template = format!("{}.{}@{}", def.namespace, def.name, def.version);
        if def.name.trim().is_empty() {
            return Err(TemplateError::Shape {
                template,
                path: "name".into(),
                message: "must not be empty".into(),
            });
        }
        let version = semver::Version::parse(&def.version).map_err(|e| TemplateError::Version {
            template: def.name.clone(),
            version: def.version.clone(),
            message: e.to_string(),
        })?;
        if def.steps.is_empty() {
            return Err(TemplateError::EmptySteps { template });
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, s) in def.steps.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(TemplateError::Shape {
                    template,
                    path: format!("step_templates[{i}].name"),
                    message: "must not be empty".into(),
                });
            }
            if let Some(&first) = index.get(s.name.as_str()) {
                return Err(TemplateError::DuplicateStep {
                    template,
                    step: s.name.clone(),
                    first,
                    second: i,
                });
            }
            index.insert(&s.name, i);
        }
        let mut graph = DiGraph::<usize, ()>::with_capacity(def.steps.len(), def.steps.len());
        for i in 0..def.steps.len() {
            graph.add_node(i);
        }
        let mut steps = Vec::with_capacity(def.steps.len());
        for (i, s) in def.steps.iter().enumerate() {
            if s.retry_limit < 1 {
                return Err(TemplateError::RetryLimit {
                    template,
                    step: s.name.clone(),
                    limit: s.retry_limit,
                });
            }
            let step_err = |message: String| TemplateError::Step {
                template: template.clone(),
                step: s.name.clone(),
                message,
            };
            s.backoff.validate().map_err(step_err)?;
            if let Some(t) = s.timeout_seconds {
                if !(t.is_finite() && t > 0.0) {
                    return Err(step_err(format!("timeout_seconds must be > 0, got {t}")));
                }
            }
            if s.handler.trim().is_empty() {
                return Err(step_err("handler must not be empty".into()));
            }
            let mut parents = Vec::with_capacity(s.depends_on.len());
            for dep in &s.depends_on {
                let Some(&p) = index.get(dep.as_str()) else {
                    return Err(TemplateError::UnknownDependency {
                        template,
                        step: s.name.clone(),
                        dependency: dep.clone(),
                    });
                };
                if !parents.contains(&p) {
                    parents.push(p);
                    graph.add_edge(NodeIndex::new(p), NodeIndex::new(i), ());
                }
            }
            steps.push(StepTemplate {
                name: s.name.clone(),
                description: s.description.clone(),
                handler: s.handler.clone(),
                handler_config: Arc::new(s.handler_config.clone()),
                depends_on: s.depends_on.clone(),
                parents,
                children: Vec::new(),
                retryable: s.retryable,
                max_attempts: if s.retryable {
                    s.retry_limit.min(u32::MAX as i64) as u32
                } else {
                    1
                },
                skippable: s.skippable,
                backoff: s.backoff,
                timeout_seconds: s.timeout_seconds,
            });
        }
        if let Some(cycle) = find_cycle(&graph) {
            return Err(TemplateError::Cycle {
                template,
                cycle: cycle.into_iter().map(|i| steps[i].name.clone()).collect(),
            });
        }
        for i in 0..steps.len() {
            for p in steps[i].parents.clone() {
                steps[p].children.push(i);
            }
        }
        for (i, e) in def.custom_events.iter().enumerate() {
            crate::events::check_custom_event_name(&e.name).map_err(|message| {
                TemplateError::Shape {
                    template: template.clone(),
                    path: format!("custom_events[{i}].name"),
                    message,
                }
            })?;
        }
        let validator = match &def.schema {
            None | Some(Value::Null) => None,
            Some(schema) => Some(Arc::new(
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(schema)
                    .map_err(|e| TemplateError::Schema {
                        template: template.clone(),
                        message: e.to_string(),
                    })?,
            )),
        };
        Ok(TaskTemplate {
            name: def.name.clone(),
            namespace: def.namespace.clone(),
            version,
            description: def.description.clone(),
            schema: def.schema.clone(),
            steps,
            graph,
            validator,
            custom_event_names: Arc::new(
                def.custom_events.iter().map(|e| e.name.clone()).collect(),
            ),
            definition: def,
        })
    }

    /// `namespace.name@version`, the template's unique key.
    pub fn key(&self) -> String {
        format!("{}.{}@{}", self.namespace, self.name, self.version)
    }

    pub fn definition(&self) -> &Definition {
        &self.definition
    }

    /// The definition as canonical JSON (stable key order), as stored and compared.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(&self.definition).expect("definition serializes")
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// Fills in the `default`s the template's schema declares for properties the context
    /// lacks, nested objects included (as the original engine's `insert_defaults`). A default
    /// is only inserted where the schema says `properties`, into an object.
    pub fn complete_context(&self, context: &mut Value) {
        if let Some(schema) = &self.schema {
            insert_defaults(schema, context);
        }
    }

    /// True when the template declares the custom event `name`.
    pub fn declares_event(&self, name: &str) -> bool {
        self.custom_event_names.iter().any(|n| n == name)
    }

    /// Validates a task context against the template's JSON Schema (standard `format`s
    /// included). The error lists every violation with its JSON path.
    pub fn validate_context(&self, context: &Value) -> Result<(), Vec<String>> {
        let Some(v) = &self.validator else {
            return Ok(());
        };
        let errors: Vec<String> = v
            .iter_errors(context)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("{path}: {e}")
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Dependency level of each step: roots are 0, a child is 1 + its deepest parent.
    pub fn levels(&self) -> Vec<usize> {
        let mut level = vec![0usize; self.steps.len()];
        for n in petgraph::algo::toposort(&self.graph, None).expect("validated acyclic") {
            let i = n.index();
            for &c in &self.steps[i].children {
                level[c] = level[c].max(level[i] + 1);
            }
        }
        level
    }
}

/// Finds one cycle and returns its nodes in dependency order (each depends on the next), the
/// first repeated at the end; `None` when the graph is acyclic.
fn find_cycle(graph: &DiGraph<usize, ()>) -> Option<Vec<usize>> {
    if petgraph::algo::toposort(graph, None).is_ok() {
        return None;
    }
    let mut sccs = petgraph::algo::tarjan_scc(graph);
    for scc in &mut sccs {
        scc.sort();
    }
    sccs.sort();
    for scc in sccs {
        let start = scc[0];
        if scc.len() == 1 && graph.find_edge(start, start).is_none() {
            continue;
        }
        // Walk "depends on" edges (child -> parent) inside the component, breadth first, back
        // to the start: the shortest cycle through the lowest-indexed step.
        let members: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            for p in graph.neighbors_directed(n, petgraph::Direction::Incoming) {
                if !members.contains(&p) {
                    continue;
                }
                if p == start {
                    let mut path = vec![n];
                    let mut cur = n;
                    while cur != start {
                        cur = prev[&cur];
                        path.push(cur);
                    }
                    path.reverse();
                    path.push(start);
                    return Some(path.into_iter().map(|x| x.index()).collect());
                }
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(p) {
                    e.insert(n);
                    queue.push_back(p);
                }
            }
        }
    }
    None
}

/// See [`TaskTemplate::complete_context`].
fn insert_defaults(schema: &Value, value: &mut Value) {
    if let (Some(props), Value::Object(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        &mut *value,
    ) {
        for (key, sub) in props {
            // As the original: an absent property with a default gets it; an absent one
            // without is not created (its nested defaults apply once it is given).
            if !obj.contains_key(key) {
                if let Some(d) = sub.get("default") {
                    obj.insert(key.clone(), d.clone());
                }
            }
            if let Some(v) = obj.get_mut(key) {
                insert_defaults(sub, v);
            }
        }
    }
    if let Some(Value::Array(subs)) = schema.get("allOf") {
        for sub in subs {
            insert_defaults(sub, value);
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// serde_norway appends " at line L column C" to messages; the location is reported separately.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Deep-merges `environments.<env>` into the document: its `step_templates` entries are merged
/// into the base steps with the same name (unknown names are ignored, as in the original), its
/// other keys into the top level.
fn apply_environment(doc: &mut Value, env: &str) {
    let Some(overrides) = doc.get("environments").and_then(|e| e.get(env)).cloned() else {
        return;
    };
    let Value::Object(overrides) = overrides else {
        return;
    };
    for (key, over) in overrides {
        if key == "step_templates" || key == "steps" {
            let list_key = if doc.get("step_templates").is_some() {
                "step_templates"
            } else {
                "steps"
            };
            let (Some(Value::Array(base)), Value::Array(over)) = (doc.get_mut(list_key), over)
            else {
                continue;
            };
            for o in over {
                let Some(name) = o.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if let Some(b) = base
                    .iter_mut()
                    .find(|b| b.get("name").and_then(Value::as_str) == Some(name))
                {
                    deep_merge(b, o.clone());
                }
            }
        } else if let Some(slot) = doc.get_mut(key.as_str()) {
            deep_merge(slot, over);
        } else if let Value::Object(m) = doc {
            m.insert(key, over);
        }
    }
}

fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

// ---- the original shape ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyRaw {
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
    // Overrides are merged before parsing (`apply_environment`).
    #[serde(default)]
    #[allow(dead_code)]
    environments: Option<Map<String, Value>>,
    // Kept for the original's Ruby classes; no effect here, stored and shown (`compat`).
    #[serde(default)]
    module_namespace: Option<Value>,
    #[serde(default)]
    task_handler_class: Option<Value>,
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
    dependent_system: Option<Value>,
    #[serde(default)]
    custom_events: Option<Vec<CustomEvent>>,
}

impl LegacyRaw {
    fn into_definition(mut self) -> Result<Definition, TemplateError> {
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
                    }
                })
                .collect(),
            name: self.name,
        })
    }
}

// ---- the newer tasker-core shape ---------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRaw {
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
    /// `standard` (default). The newer format's `decision` and `deferred_convergence` steps
    /// create branches at run time: refused until dynamic workflows exist, never run as
    /// plain steps.
    #[serde(default, rename = "type")]
    step_type: Option<String>,
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
    skippable: Option<bool>,
    #[serde(default)]
    backoff: Option<Backoff>,
    #[serde(default)]
    custom_events: Option<Vec<CustomEvent>>,
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

/// Adds `e` to `list` unless an event of that name is there (a description fills a missing one).
fn merge_event(list: &mut Vec<CustomEvent>, e: CustomEvent) {
    match list.iter_mut().find(|x| x.name == e.name) {
        Some(x) => {
            if x.description.is_none() {
                x.description = e.description;
            }
        }
        None => list.push(e),
    }
}

impl NewRaw {
    fn into_definition(mut self) -> Result<Definition, TemplateError> {
        for (i, s) in self.steps.iter().enumerate() {
            if let Some(t) = s.step_type.as_deref().filter(|t| *t != "standard") {
                return Err(TemplateError::Shape {
                    template: self.name.clone(),
                    path: format!("steps[{i}].type"),
                    message: format!(
                        "step {:?} is a {t:?} step; only \"standard\" steps are supported (decision and convergence steps of dynamic workflows are not, and will not be run as plain steps)",
                        s.name
                    ),
                });
            }
        }
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
                    }
                })
                .collect(),
            name: self.name,
        })
    }
}

/// Picks the highest semantic version among `versions` ("latest").
pub fn latest_version<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions
        .into_iter()
        .filter_map(|v| semver::Version::parse(v).ok().map(|p| (p, v)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v)
}

/// Summary of a registered template revision, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateSummary {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// 1, then one more each time a changed body was registered under this version.
    pub revision: i64,
    /// The revision new tasks of this version use.
    pub current: bool,
    pub description: Option<String>,
    pub steps: usize,
    pub custom_events: Vec<CustomEvent>,
    /// Fields kept from the template's format with no effect here (see [`Definition::compat`]).
    pub compat: Map<String, Value>,
    pub registered_at: String,
}

/// Lists step names per level, for diagrams and analysis.
pub fn steps_by_level(t: &TaskTemplate) -> BTreeMap<usize, Vec<String>> {
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, l) in t.levels().into_iter().enumerate() {
        out.entry(l).or_default().push(t.steps[i].name.clone());
    }
    out
}
