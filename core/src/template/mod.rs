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

//!
//! Files: this one holds the model and the loading; `graph.rs` the validation of a definition
//! and its DAG, `legacy.rs` and `tasker_core_format.rs` the two YAML shapes, `env.rs` the
//! `environments` overrides, `context.rs` the task context against the template's schema,
//! `unknown.rs` the keys a shape does not know (kept and warned about, or errors when ignoring
//! them would change what runs).

mod context;
mod env;
mod graph;
pub use graph::instance_name;
mod legacy;
mod tasker_core_format;
mod unknown;

use std::collections::BTreeMap;
use std::sync::Arc;

use petgraph::graph::DiGraph;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backoff::Backoff;
use crate::error::TemplateError;
use env::apply_environment;
use legacy::LegacyRaw;
use tasker_core_format::NewRaw;

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
    /// Seconds from creation after which an unfinished task is failed (a request's own
    /// `deadline_seconds` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_seconds: Option<f64>,
    /// Schedules of this template (`schedules:`): created or updated at registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<TemplateSchedule>,
}

/// A schedule a template declares (`schedules:`): its template, namespace and version are the
/// template's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSchedule {
    pub name: String,
    pub cron: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<crate::schedule::Overlap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<crate::schedule::CatchUp>,
}

/// The longest deadline a task may have: a year.
pub const MAX_DEADLINE_SECONDS: f64 = 31_536_000.0;

fn schedule_spec(def: &Definition, s: &TemplateSchedule) -> crate::schedule::ScheduleSpec {
    crate::schedule::ScheduleSpec {
        name: s.name.clone(),
        template: def.name.clone(),
        cron: s.cron.clone(),
        context: s.context.clone().unwrap_or(Value::Null),
        namespace: Some(def.namespace.clone()),
        version: Some(def.version.clone()),
        timezone: s.timezone.clone().unwrap_or_else(|| "UTC".into()),
        overlap: s.overlap.unwrap_or_default(),
        catch_up: s.catch_up.unwrap_or_default(),
    }
}

/// Each schedule's pattern, zone and context checked, names unique.
pub(super) fn check_schedules(template: &str, def: &Definition) -> Result<(), TemplateError> {
    let mut seen = std::collections::HashSet::new();
    for (i, s) in def.schedules.iter().enumerate() {
        let shape = |message: String| TemplateError::Shape {
            template: template.to_owned(),
            path: format!("schedules[{i}]"),
            message,
        };
        if !seen.insert(s.name.trim()) {
            return Err(shape(format!("schedule name {:?} is given twice", s.name)));
        }
        schedule_spec(def, s).check().map_err(shape)?;
    }
    Ok(())
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
    /// How many times the handler may return `Reschedule` before the step fails (unset:
    /// unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reschedules: Option<u32>,
    /// What the step's handler decides at run time (`type:` in both formats); a standard
    /// step is not written, so the definitions (and hashes) of templates without these kinds
    /// are what they were.
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "StepKind::is_standard"
    )]
    pub kind: StepKind,
    /// A `batch_worker` step's fan-out settings (tasker-core's `batch_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_config: Option<BatchConfig>,
}

/// The fan-out settings of a `batch_worker` step (tasker-core's `batch_config`).
/// `max_instances` and `failure_strategy` take effect; `batch_size`, `parallelism`,
/// `cursor_field` and `worker_template` describe how the `batchable` handler splits its work
/// (tasker-core's handlers read them) and are kept as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The most instances one fan-out may create (default [`DEFAULT_MAX_INSTANCES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<i64>,
    #[serde(default, skip_serializing_if = "FailureStrategy::is_fail_fast")]
    pub failure_strategy: FailureStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_field: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_template: Option<Value>,
}

/// The most instances one fan-out may create unless `batch_config.max_instances` says otherwise.
pub const DEFAULT_MAX_INSTANCES: usize = 10_000;

/// What a failed fan-out instance does to its task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureStrategy {
    /// An instance out of attempts blocks the task like any exhausted step.
    #[default]
    FailFast,
    /// An instance out of attempts counts as finished: the convergence runs, and its entry in
    /// the list is `{"$failed": <the instance's stored error>}`.
    ContinueOnFailure,
}

impl FailureStrategy {
    pub fn is_fail_fast(&self) -> bool {
        *self == FailureStrategy::FailFast
    }
}

/// A step's `type`: what its handler may decide at run time (see [`crate::engine::shape`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Runs its handler; its results go to its children.
    #[default]
    Standard,
    /// Its handler returns a `Decision` naming which of its direct children are created.
    Decision,
    /// Runs once every decision above it has decided and every created dependency is done;
    /// dependencies never created are left out of its results.
    DeferredConvergence,
    /// Its handler returns `Batches(items)`: its `batch_worker` children get one instance per
    /// item.
    Batchable,
    /// Created once per item of its `batchable` parent (its only dependency), each instance
    /// with its own attempts, backoff, timeout and lease.
    BatchWorker,
}

impl StepKind {
    pub fn is_standard(&self) -> bool {
        *self == StepKind::Standard
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Standard => "standard",
            StepKind::Decision => "decision",
            StepKind::DeferredConvergence => "deferred_convergence",
            StepKind::Batchable => "batchable",
            StepKind::BatchWorker => "batch_worker",
        }
    }
}

/// A validated template with its DAG.
#[derive(Debug, Clone)]
pub struct TaskTemplate {
    pub name: String,
    pub namespace: String,
    pub version: semver::Version,
    pub description: Option<String>,
    /// See [`Definition::deadline_seconds`].
    pub deadline_seconds: Option<f64>,
    pub schema: Option<Value>,
    pub steps: Vec<StepTemplate>,
    /// Edges run parent -> child; node `i` is `steps[i]`.
    pub graph: DiGraph<usize, ()>,
    validator: Option<Arc<jsonschema::Validator>>,
    /// Names of the declared custom events (shared with every job of this template).
    pub custom_event_names: Arc<Vec<String>>,
    /// What parsing took out and only warns about (unknown keys, each named with its place);
    /// an error at registration with strict templates. Empty for a template read back from the
    /// database.
    pub warnings: Vec<String>,
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
    /// See [`StepDefinition::max_reschedules`].
    pub max_reschedules: Option<u32>,
    pub kind: StepKind,
    /// Created with the task: no decision lies above it and it is not a fan-out's
    /// instance (otherwise it is created, or never is, once the steps above it have decided).
    pub created_at_start: bool,
    /// A `batch_worker`'s limit of instances per fan-out.
    pub max_instances: usize,
    /// A `batch_worker` with `failure_strategy: continue_on_failure`: an instance out of
    /// attempts counts as finished (its convergence gets a marked entry) instead of blocking.
    pub continue_on_failure: bool,
}

impl StepTemplate {
    /// An instance of this step that is out of attempts is a *tolerated* failure: it stays
    /// `error` and is final, counts as finished for its task, and lets its children run.
    pub fn tolerates_failure(&self) -> bool {
        self.kind == StepKind::BatchWorker && self.continue_on_failure
    }
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
        let shape_err = |(path, message): (String, String)| TemplateError::Shape {
            template: label.clone(),
            path,
            message,
        };
        let mut unknown = unknown::Unknown::default();
        let mut def = if new_shape {
            let raw: NewRaw =
                unknown::deserialize_lenient(value, &mut unknown).map_err(shape_err)?;
            raw.into_definition()?
        } else {
            let raw: LegacyRaw =
                unknown::deserialize_lenient(value, &mut unknown).map_err(shape_err)?;
            raw.into_definition()?
        };
        if !unknown.kept.is_empty() {
            def.compat
                .insert("unknown_keys".into(), Value::Object(unknown.kept));
        }
        let mut template = Self::from_definition(def)?;
        template.warnings = unknown.warnings;
        Ok(template)
    }

    /// `namespace.name@version`, the template's unique key.
    pub fn key(&self) -> String {
        format!("{}.{}@{}", self.namespace, self.name, self.version)
    }

    pub fn definition(&self) -> &Definition {
        &self.definition
    }

    /// The schedules the template declares, as specs of this template's version.
    pub fn schedule_specs(&self) -> Vec<crate::schedule::ScheduleSpec> {
        self.definition
            .schedules
            .iter()
            .map(|s| schedule_spec(&self.definition, s))
            .collect()
    }

    /// The definition as canonical JSON (stable key order), as stored and compared.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(&self.definition).expect("definition serializes")
    }

    /// True when some step's existence is decided at run time (a decision lies above it).
    pub fn has_run_time_shape(&self) -> bool {
        self.steps.iter().any(|s| !s.created_at_start)
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
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
