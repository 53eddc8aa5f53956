//! Mermaid flowcharts of a template, or of a task with its steps coloured by state.

use std::fmt::Write;

use crate::engine::{count_by_state, StepSnapshot, TaskSnapshot};
use crate::state::StepState;
use crate::template::{StepKind, StepTemplate, TaskTemplate};

/// A step never created in a task (a branch not taken, or below a decision or fan-out not yet
/// decided): drawn dashed and faded.
const ABSENT_STYLE: &str = "fill:#fafafa,stroke:#bdbdbd,stroke-dasharray:4 3,color:#9e9e9e";

/// What a template step is in a task: its one row, a fan-out's instances, or nothing.
enum Drawn<'a> {
    One(&'a StepSnapshot),
    /// A batch worker's instances (at least one), in item order.
    Instances(Vec<&'a StepSnapshot>),
    Absent,
}

impl<'a> Drawn<'a> {
    fn of(s: &StepTemplate, task: &'a TaskSnapshot) -> Drawn<'a> {
        if let Some(step) = task.step(&s.name) {
            return Drawn::One(step);
        }
        if s.kind == StepKind::BatchWorker {
            let rows: Vec<&StepSnapshot> = task.instances_of(&s.name).collect();
            if !rows.is_empty() {
                return Drawn::Instances(rows);
            }
        }
        Drawn::Absent
    }

    /// The state a group is drawn in: the one that needs attention first.
    fn status(&self) -> Option<StepState> {
        match self {
            Drawn::One(x) => Some(x.status),
            Drawn::Instances(rows) => [
                StepState::Error,
                StepState::InProgress,
                StepState::Pending,
                StepState::ResolvedManually,
                StepState::Cancelled,
                StepState::Complete,
            ]
            .into_iter()
            .find(|st| rows.iter().any(|x| x.status == *st)),
            Drawn::Absent => None,
        }
    }

    fn style(&self) -> &'static str {
        self.status().map_or(ABSENT_STYLE, style)
    }

    /// `×12<br/>10 complete · 2 error`: the counts by state ([`count_by_state`]).
    fn counts(rows: &[&StepSnapshot]) -> String {
        let parts: Vec<String> = count_by_state(rows.iter().copied())
            .into_iter()
            .map(|(st, n)| format!("{n} {st}"))
            .collect();
        format!("×{}<br/>{}", rows.len(), parts.join(" · "))
    }
}

fn style(state: StepState) -> &'static str {
    match state {
        StepState::Pending => "fill:#add8e6,stroke:#4682b4,color:#000",
        StepState::InProgress => "fill:#90ee90,stroke:#2e8b57,color:#000",
        StepState::Complete => "fill:#2e7d32,stroke:#1b5e20,color:#fff",
        StepState::Error => "fill:#c62828,stroke:#8e0000,color:#fff",
        StepState::Cancelled => "fill:#9e9e9e,stroke:#616161,color:#000",
        StepState::ResolvedManually => "fill:#7e57c2,stroke:#4527a0,color:#fff",
        StepState::Waiting => "fill:#ffe082,stroke:#ff8f00,color:#000",
    }
}

/// Text safe inside a quoted Mermaid label.
fn label(s: &str) -> String {
    s.replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

/// A `flowchart TD` of the template's steps (edges run from a step to the steps that depend
/// on it). With a task, each step shows its state and attempts and is coloured by state.
pub fn mermaid(template: &TaskTemplate, task: Option<&TaskSnapshot>) -> String {
    let mut out = String::from("flowchart TD\n");
    let title = match task {
        Some(t) => format!("Task {}: {} ({})", t.id, template.key(), t.status),
        None => template.key(),
    };
    let _ = writeln!(out, "  %% {}", title);
    for (i, s) in template.steps.iter().enumerate() {
        let mut text = label(&s.name);
        match task.map(|t| Drawn::of(s, t)) {
            Some(Drawn::One(step)) => {
                let _ = write!(
                    text,
                    "<br/>{} · attempts {}/{}",
                    step.status, step.attempts, step.max_attempts
                );
                if let Some(msg) = step
                    .error
                    .as_ref()
                    .and_then(|e| e.get("message"))
                    .and_then(|m| m.as_str())
                {
                    if step.status == StepState::Error {
                        let short: String = msg.chars().take(60).collect();
                        let _ = write!(text, "<br/>{}", label(&short));
                    }
                }
                if let Some(c) = step.child_task_id {
                    let _ = write!(text, "<br/>child task {c}");
                }
            }
            Some(Drawn::Instances(rows)) => {
                let _ = write!(text, " {}", Drawn::counts(&rows));
            }
            Some(Drawn::Absent) => text.push_str("<br/>not created"),
            None if s.handler != s.name => {
                let _ = write!(text, "<br/>{}", label(&s.handler));
            }
            None => {}
        }
        let _ = writeln!(out, "  s{i}[\"{text}\"]");
    }
    for (i, s) in template.steps.iter().enumerate() {
        for &c in &s.children {
            let _ = writeln!(out, "  s{i} --> s{c}");
        }
    }
    if let Some(t) = task {
        for (i, s) in template.steps.iter().enumerate() {
            let _ = writeln!(out, "  style s{i} {}", Drawn::of(s, t).style());
        }
    }
    out
}

/// A node of [`graph`]: one step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Node {
    /// `s<position>`, as in the Mermaid text.
    pub id: String,
    pub name: String,
    pub handler: String,
    /// With a task: the step's state, attempts and id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StepState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<i64>,
    /// The Mermaid style of its state (`fill:...`), with a task; dashed for a step never
    /// created. A fan-out's group takes the state that needs attention first (error, running,
    /// pending, ..., complete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<&'static str>,
    /// With a task: whether the step exists in it (false: a branch not taken, or not yet
    /// decided).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// A batch worker's instances in the task, in item order (the node stands for them all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<Instance>,
}

/// One fan-out instance of a [`Node`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Instance {
    pub name: String,
    pub step_id: i64,
    pub status: StepState,
    pub attempts: i64,
}

/// An edge of [`graph`]: `from` provides for `to` (which depends on it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub label: &'static str,
}

/// The diagram of [`mermaid`] as data: `{nodes, edges, direction, title}`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub direction: &'static str,
    pub title: String,
}

/// The same diagram as [`mermaid`], as data (the HTTP API's `task_diagrams.json`).
pub fn graph(template: &TaskTemplate, task: Option<&TaskSnapshot>) -> Graph {
    let nodes = template
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let drawn = task.map(|t| Drawn::of(s, t));
            let one = match &drawn {
                Some(Drawn::One(x)) => Some(*x),
                _ => None,
            };
            Node {
                id: format!("s{i}"),
                name: s.name.clone(),
                handler: s.handler.clone(),
                status: drawn.as_ref().and_then(Drawn::status),
                attempts: one.map(|x| x.attempts),
                step_id: one.map(|x| x.id),
                style: drawn.as_ref().map(Drawn::style),
                created: drawn.as_ref().map(|d| !matches!(d, Drawn::Absent)),
                instances: match &drawn {
                    Some(Drawn::Instances(rows)) => rows
                        .iter()
                        .map(|x| Instance {
                            name: x.name.clone(),
                            step_id: x.id,
                            status: x.status,
                            attempts: x.attempts,
                        })
                        .collect(),
                    _ => Vec::new(),
                },
            }
        })
        .collect();
    let edges = template
        .steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.children.iter().map(move |&c| Edge {
                from: format!("s{i}"),
                to: format!("s{c}"),
                label: "provides",
            })
        })
        .collect();
    Graph {
        nodes,
        edges,
        direction: "TD",
        title: match task {
            Some(t) => format!("Task {}: {} ({})", t.id, template.key(), t.status),
            None => template.key(),
        },
    }
}
