//! A definition validated into a [`TaskTemplate`]: names, versions, limits, dependencies (no
//! cycle: the error names one), custom event names, the context schema; and the step DAG.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use super::{
    Definition, FailureStrategy, StepDefinition, StepKind, StepTemplate, TaskTemplate,
    DEFAULT_MAX_INSTANCES,
};
use crate::error::TemplateError;

impl TaskTemplate {
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
        let index = step_index(&template, &def.steps)?;
        let mut graph = DiGraph::<usize, ()>::with_capacity(def.steps.len(), def.steps.len());
        for i in 0..def.steps.len() {
            graph.add_node(i);
        }
        let mut steps = Vec::with_capacity(def.steps.len());
        for (i, s) in def.steps.iter().enumerate() {
            steps.push(step_template(&template, &index, &mut graph, i, s)?);
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
        run_time_shapes(&template, &graph, &mut steps)?;
        for (i, e) in def.custom_events.iter().enumerate() {
            crate::events::check_declared_event_name(&e.name).map_err(|message| {
                TemplateError::Shape {
                    template: template.clone(),
                    path: format!("custom_events[{i}].name"),
                    message,
                }
            })?;
        }
        super::check_schedules(&template, &def)?;
        if let Some(d) = def.deadline_seconds {
            if !(d.is_finite() && d > 0.0 && d <= super::MAX_DEADLINE_SECONDS) {
                return Err(TemplateError::Shape {
                    template: template.clone(),
                    path: "deadline_seconds".into(),
                    message: format!("must be a positive number of seconds up to a year, got {d}"),
                });
            }
        }
        let validator = context_validator(&template, def.schema.as_ref())?;
        Ok(TaskTemplate {
            name: def.name.clone(),
            namespace: def.namespace.clone(),
            version,
            description: def.description.clone(),
            deadline_seconds: def.deadline_seconds,
            schema: def.schema.clone(),
            steps,
            graph,
            validator,
            custom_event_names: Arc::new(
                def.custom_events.iter().map(|e| e.name.clone()).collect(),
            ),
            warnings: Vec::new(),
            definition: def,
        })
    }
}

/// Step name -> position; every name given once and not empty.
fn step_index<'a>(
    template: &str,
    steps: &'a [StepDefinition],
) -> Result<HashMap<&'a str, usize>, TemplateError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        if s.name.trim().is_empty() {
            return Err(TemplateError::Shape {
                template: template.to_owned(),
                path: format!("step_templates[{i}].name"),
                message: "must not be empty".into(),
            });
        }
        if let Some(&first) = index.get(s.name.as_str()) {
            return Err(TemplateError::DuplicateStep {
                template: template.to_owned(),
                step: s.name.clone(),
                first,
                second: i,
            });
        }
        index.insert(&s.name, i);
    }
    Ok(index)
}

/// Step `i` validated, its dependencies added to the graph as edges parent -> child.
fn step_template(
    template: &str,
    index: &HashMap<&str, usize>,
    graph: &mut DiGraph<usize, ()>,
    i: usize,
    s: &StepDefinition,
) -> Result<StepTemplate, TemplateError> {
    if s.retry_limit < 1 {
        return Err(TemplateError::RetryLimit {
            template: template.to_owned(),
            step: s.name.clone(),
            limit: s.retry_limit,
        });
    }
    let step_err = |message: String| TemplateError::Step {
        template: template.to_owned(),
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
                template: template.to_owned(),
                step: s.name.clone(),
                dependency: dep.clone(),
            });
        };
        if !parents.contains(&p) {
            parents.push(p);
            graph.add_edge(NodeIndex::new(p), NodeIndex::new(i), ());
        }
    }
    Ok(StepTemplate {
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
        max_reschedules: s.max_reschedules,
        kind: s.kind,
        created_at_start: true,
        max_instances: fan_out_limit(s).map_err(step_err)?,
        continue_on_failure: s
            .batch_config
            .as_ref()
            .is_some_and(|c| c.failure_strategy == FailureStrategy::ContinueOnFailure),
    })
}

/// A `batch_worker`'s limit of instances per fan-out; `batch_config` on any other step, a limit
/// and a limit below 1 are refused.
fn fan_out_limit(s: &StepDefinition) -> Result<usize, String> {
    let Some(c) = &s.batch_config else {
        return Ok(DEFAULT_MAX_INSTANCES);
    };
    if s.kind != StepKind::BatchWorker {
        return Err(format!(
            "batch_config is read on batch_worker steps only; this step is {}",
            s.kind.as_str()
        ));
    }
    match c.max_instances {
        None => Ok(DEFAULT_MAX_INSTANCES),
        Some(n) if n >= 1 => Ok(n as usize),
        Some(n) => Err(format!(
            "batch_config.max_instances must be at least 1 (a fan-out limit below 1 allows no instance), got {n}"
        )),
    }
}

/// Checks the step kinds that shape a task at run time and marks the steps created with the
/// task: those with no decision above them.
fn run_time_shapes(
    template: &str,
    graph: &DiGraph<usize, ()>,
    steps: &mut [StepTemplate],
) -> Result<(), TemplateError> {
    for s in steps.iter() {
        let err = |message: String| TemplateError::Step {
            template: template.to_owned(),
            step: s.name.clone(),
            message,
        };
        match s.kind {
            StepKind::BatchWorker
                if s.parents.len() != 1 || steps[s.parents[0]].kind != StepKind::Batchable =>
            {
                let deps: Vec<&str> = s.parents.iter().map(|&p| steps[p].name.as_str()).collect();
                return Err(err(format!(
                    "a batch_worker step needs exactly one dependency, the batchable step whose items it runs once each; it has: {}",
                    if deps.is_empty() { "none".to_owned() } else { deps.join(", ") }
                )));
            }
            StepKind::Batchable
                if !s.children.iter().any(|&c| steps[c].kind == StepKind::BatchWorker) =>
            {
                return Err(err(
                    "a batchable step needs a batch_worker step that depends on it (the step it fans out to); none does"
                        .into(),
                ))
            }
            StepKind::BatchWorker => {
                // Instances are named NAME_001, NAME_002, ...: no other step may be.
                if let Some(other) = steps.iter().find(|o| is_instance_name(&o.name, &s.name)) {
                    return Err(err(format!(
                        "its instances are named {0}_001, {0}_002, ...: step {1:?} has such a name; rename one of them",
                        s.name, other.name
                    )));
                }
            }
            StepKind::Decision if s.children.is_empty() => {
                return Err(err(
                    "a decision step needs steps that depend on it (the steps it may choose); none does"
                        .into(),
                ))
            }
            StepKind::DeferredConvergence if s.parents.is_empty() => {
                return Err(err(
                    "a deferred_convergence step has no possible input: it needs dependencies (the steps whose results it gathers)"
                        .into(),
                ))
            }
            _ => {}
        }
    }
    for n in petgraph::algo::toposort(graph, None).expect("validated acyclic") {
        let i = n.index();
        let start = steps[i].kind != StepKind::BatchWorker
            && steps[i]
                .parents
                .iter()
                .all(|&p| steps[p].created_at_start && steps[p].kind != StepKind::Decision);
        steps[i].created_at_start = start;
    }
    Ok(())
}

/// Whether `name` is the name of an instance of batch worker `worker` (`worker_` + digits).
pub(crate) fn is_instance_name(name: &str, worker: &str) -> bool {
    name.strip_prefix(worker)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The name of instance `index` (0-based) of batch worker `worker`: `worker_001` for the first
/// (three digits at least, tasker-core's naming).
pub fn instance_name(worker: &str, index: usize) -> String {
    format!("{worker}_{:03}", index + 1)
}

/// The context schema compiled (standard formats checked), if the template has one.
fn context_validator(
    template: &str,
    schema: Option<&Value>,
) -> Result<Option<Arc<jsonschema::Validator>>, TemplateError> {
    match schema {
        None | Some(Value::Null) => Ok(None),
        Some(schema) => Ok(Some(Arc::new(
            jsonschema::options()
                .should_validate_formats(true)
                .build(schema)
                .map_err(|e| TemplateError::Schema {
                    template: template.to_owned(),
                    message: e.to_string(),
                })?,
        ))),
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
