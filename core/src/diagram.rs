//! Mermaid flowcharts of a template, or of a task with its steps coloured by state.

use std::fmt::Write;

use crate::engine::TaskSnapshot;
use crate::state::StepState;
use crate::template::TaskTemplate;

fn style(state: StepState) -> &'static str {
    match state {
        StepState::Pending => "fill:#add8e6,stroke:#4682b4,color:#000",
        StepState::InProgress => "fill:#90ee90,stroke:#2e8b57,color:#000",
        StepState::Complete => "fill:#2e7d32,stroke:#1b5e20,color:#fff",
        StepState::Error => "fill:#c62828,stroke:#8e0000,color:#fff",
        StepState::Cancelled => "fill:#9e9e9e,stroke:#616161,color:#000",
        StepState::ResolvedManually => "fill:#7e57c2,stroke:#4527a0,color:#fff",
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
        if let Some(step) = task.and_then(|t| t.step(&s.name)) {
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
        } else if s.handler != s.name {
            let _ = write!(text, "<br/>{}", label(&s.handler));
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
            if let Some(step) = t.step(&s.name) {
                let _ = writeln!(out, "  style s{i} {}", style(step.status));
            }
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
    /// The Mermaid style of its state (`fill:...`), with a task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<&'static str>,
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
            let step = task.and_then(|t| t.step(&s.name));
            Node {
                id: format!("s{i}"),
                name: s.name.clone(),
                handler: s.handler.clone(),
                status: step.map(|x| x.status),
                attempts: step.map(|x| x.attempts),
                step_id: step.map(|x| x.id),
                style: step.map(|x| style(x.status)),
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
