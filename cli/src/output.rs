//! What the CLI prints: live progress of a run, tables, summaries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Instant;

use tasker_core::template::TemplateSummary;
use tasker_core::{Event, TaskSnapshot, TaskSummary};
use tokio::sync::broadcast;

/// Prints step events of one task as they happen: one line per event, and on a terminal a
/// status line kept at the bottom (done/total, running steps, retries and when they are due).
pub struct Progress {
    handle: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

struct State {
    task_id: i64,
    total: usize,
    max_attempts: HashMap<String, u32>,
    done: BTreeSet<String>,
    running: BTreeSet<String>,
    retrying: BTreeMap<String, String>,
    started: Instant,
    tty: bool,
}

impl Progress {
    pub fn start(
        task_id: i64,
        total: usize,
        max_attempts: HashMap<String, u32>,
        mut events: broadcast::Receiver<Arc<Event>>,
    ) -> Progress {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let mut st = State {
            task_id,
            total,
            max_attempts,
            done: BTreeSet::new(),
            running: BTreeSet::new(),
            retrying: BTreeMap::new(),
            started: Instant::now(),
            tty: std::io::stdout().is_terminal(),
        };
        let handle = tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(e) => st.on(&e),
                        Err(broadcast::error::RecvError::Lagged(n)) => st.line(&format!("({n} events not shown)")),
                        Err(_) => break,
                    },
                    _ = &mut stopped => {
                        while let Ok(e) = events.try_recv() {
                            st.on(&e);
                        }
                        break;
                    }
                }
            }
            if st.tty {
                print!("\r\x1b[2K");
                let _ = std::io::stdout().flush();
            }
        });
        Progress { handle, stop }
    }

    /// Prints what is left and stops.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

impl State {
    fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[2K");
        }
        let _ = writeln!(
            out,
            "[{:>7.3}s] {text}",
            self.started.elapsed().as_secs_f64()
        );
        if self.tty {
            let mut status = format!("{}/{} steps done", self.done.len(), self.total);
            if !self.running.is_empty() {
                status.push_str(&format!(
                    " | running: {}",
                    self.running.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if !self.retrying.is_empty() {
                let r: Vec<String> = self
                    .retrying
                    .iter()
                    .map(|(s, at)| format!("{s} at {at}"))
                    .collect();
                status.push_str(&format!(" | retrying: {}", r.join(", ")));
            }
            let _ = write!(out, "{status}");
        }
        let _ = out.flush();
    }

    fn on(&mut self, e: &Event) {
        if e.task_id != self.task_id {
            return;
        }
        let Some(step) = e.step_name.clone() else {
            match e.name.as_ref() {
                "task.completed" => self.line("task complete"),
                "task.failed" => self.line("task failed: a step ran out of attempts"),
                "task.cancelled" => self.line("task cancelled"),
                _ => {}
            }
            return;
        };
        let max = self.max_attempts.get(&step).copied().unwrap_or(1);
        let attempt = e.attempt.unwrap_or(0);
        match e.name.as_ref() {
            "step.execution_requested" => {
                self.retrying.remove(&step);
                self.running.insert(step.clone());
                self.line(&format!("{step}: started (attempt {attempt}/{max})"));
            }
            "step.completed" => {
                self.running.remove(&step);
                self.done.insert(step.clone());
                self.line(&format!("{step}: complete"));
            }
            "step.resolved_manually" => {
                self.done.insert(step.clone());
                self.line(&format!(
                    "{step}: resolved ({})",
                    e.metadata["reason"].as_str().unwrap_or("manually")
                ));
            }
            "step.failed" => {
                self.running.remove(&step);
                let msg = e.metadata["error"]
                    .as_str()
                    .unwrap_or("failed")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let next = e.metadata["next_attempt_at"].as_str().map(local_time);
                match next {
                    Some(at) => {
                        self.retrying.insert(step.clone(), at.clone());
                        self.line(&format!(
                            "{step}: attempt {attempt}/{max} failed: {msg}; next attempt at {at}"
                        ));
                    }
                    None => self.line(&format!(
                        "{step}: attempt {attempt}/{max} failed: {msg}; no attempts left"
                    )),
                }
            }
            "step.cancelled" => {
                self.running.remove(&step);
                self.line(&format!("{step}: cancelled"));
            }
            _ => {}
        }
    }
}

fn local_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_owned())
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let fmt = |cells: Vec<String>| {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = width[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "{}",
        fmt(header.iter().map(|h| h.to_string()).collect()).trim_end()
    );
    for r in rows {
        println!("{}", fmt(r).trim_end());
    }
}

/// The task's state and a table of its steps.
pub fn task_summary(t: &TaskSnapshot) {
    println!(
        "task {} {}.{}@{}: {}",
        t.id, t.namespace, t.name, t.version, t.status
    );
    if let (Some(parent), Some(step)) = (t.parent_task_id, &t.parent_step) {
        println!("child task of task {parent} (its step {step})");
    }
    let mut rows = Vec::new();
    let mut seen_groups = Vec::new();
    for s in &t.steps {
        match &s.instance_of {
            None => rows.push(step_row(s.name.clone(), s)),
            Some(w) if !seen_groups.contains(w) => {
                seen_groups.push(w.clone());
                rows.extend(fan_out_rows(t, w));
            }
            Some(_) => {}
        }
    }
    table(
        &["STEP", "STATUS", "ATTEMPTS", "DURATION", "ERROR / NOTE"],
        rows,
    );
}

/// One line of `tasker status`.
fn step_row(name: String, s: &tasker_core::StepSnapshot) -> Vec<String> {
    vec![
        name,
        s.status.to_string(),
        format!("{}/{}", s.attempts, s.max_attempts),
        s.duration_ms
            .map(|d| format!("{:.3}s", d as f64 / 1000.0))
            .unwrap_or_else(|| "-".into()),
        s.error
            .as_ref()
            .and_then(|e| e["message"].as_str())
            .map(|m| {
                let first = m.lines().next().unwrap_or_default();
                first.chars().take(100).collect()
            })
            .or_else(|| {
                s.child_task_id.map(|c| match s.status {
                    tasker_core::StepState::Waiting => format!("waits for child task {c}"),
                    _ => format!("child task {c}"),
                })
            })
            .unwrap_or_default(),
    ]
}

/// A fan-out as `tasker status` shows it: one line for the group (`work ×12`, the counts by
/// state), then the instances that are not complete (the first 10; `--json` has them all).
fn fan_out_rows(t: &TaskSnapshot, worker: &str) -> Vec<Vec<String>> {
    let all: Vec<&tasker_core::StepSnapshot> = t.instances_of(worker).collect();
    let summary = tasker_core::count_by_state(all.iter().copied())
        .into_iter()
        .map(|(st, n)| format!("{n} {st}"))
        .collect::<Vec<_>>()
        .join(", ");
    let dash = || "-".to_string();
    let mut rows = vec![vec![
        format!("{worker} ×{}", all.len()),
        summary,
        dash(),
        dash(),
        String::new(),
    ]];
    let open: Vec<_> = all
        .iter()
        .filter(|s| s.status != tasker_core::StepState::Complete)
        .collect();
    for s in open.iter().take(10) {
        rows.push(step_row(format!("  {}", s.name), s));
    }
    if open.len() > 10 {
        rows.push(vec![
            format!("  ... {} more", open.len() - 10),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    rows
}

pub fn tasks_table(tasks: &[TaskSummary]) {
    table(
        &["ID", "TEMPLATE", "STATUS", "STEPS", "CREATED"],
        tasks
            .iter()
            .map(|t| {
                vec![
                    t.id.to_string(),
                    format!("{}.{}@{}", t.namespace, t.name, t.version),
                    t.status.to_string(),
                    format!("{}/{}", t.steps_done, t.steps_total),
                    t.created_at.clone(),
                ]
            })
            .collect(),
    );
}

pub fn templates_table(list: &[TemplateSummary]) {
    table(
        &["TEMPLATE", "REVISION", "STEPS", "REGISTERED", "DESCRIPTION"],
        list.iter()
            .map(|t| {
                vec![
                    format!("{}.{}@{}", t.namespace, t.name, t.version),
                    format!(
                        "{}{}",
                        t.revision,
                        if t.current { " (current)" } else { "" }
                    ),
                    t.steps.to_string(),
                    t.registered_at.clone(),
                    t.description.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    );
}
