//! Steering tasks from the command line: `tasker pause|resume TASK_ID` (or `--template NAME`),
//! `tasker rerun TASK_ID STEP`, `tasker retry` and `tasker cancel` of one task or of every task
//! a filter matches, and `tasker prune --older-than 30d`.

use std::process::ExitCode;

use clap::Args;
use tasker_core::host::surface::{parse_age, BulkQuery};
use tasker_core::{Engine, TaskState};

use crate::{open, Cli, Failure, Outcome};

/// `tasker pause` / `tasker resume`: one task, or every task of a template.
#[derive(Args)]
pub(crate) struct PauseArgs {
    #[arg(required_unless_present = "template", conflicts_with = "template")]
    task_id: Option<i64>,
    /// Every unfinished task of this template (any version) instead.
    #[arg(long)]
    template: Option<String>,
    /// The template's namespace.
    #[arg(long, default_value = "default", requires = "template")]
    namespace: String,
}

/// A filter of tasks for `tasker retry` and `tasker cancel` without a task id.
#[derive(Args)]
pub(crate) struct Filter {
    /// Tasks in this state (retry: error, the default).
    #[arg(long)]
    status: Option<String>,
    /// Tasks of the template of this name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// Tasks created since: an RFC 3339 time or an age (24h, 7d).
    #[arg(long)]
    since: Option<String>,
}

impl Filter {
    fn given(&self) -> bool {
        self.status.is_some()
            || self.name.is_some()
            || self.namespace.is_some()
            || self.since.is_some()
    }

    fn query(&self) -> BulkQuery {
        BulkQuery {
            status: self.status.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            since: self.since.clone(),
        }
    }
}

/// `tasker retry`: a failed step of a task, every failed step of a task, or every failed task
/// a filter matches.
#[derive(Args)]
pub(crate) struct RetryArgs {
    task_id: Option<i64>,
    /// The step to retry (default: every step of the task out of attempts).
    step: Option<String>,
    #[command(flatten)]
    filter: Filter,
}

/// `tasker cancel`: a task, or every unfinished task a filter matches.
#[derive(Args)]
pub(crate) struct CancelArgs {
    task_id: Option<i64>,
    #[command(flatten)]
    filter: Filter,
}

/// `tasker prune`.
#[derive(Args)]
pub(crate) struct PruneArgs {
    /// Tasks that ended longer ago than this: seconds or an age (30d, 12h).
    #[arg(long)]
    older_than: String,
    /// In these states (repeatable; default complete, cancelled and resolved_manually).
    #[arg(long = "status")]
    statuses: Vec<String>,
}

/// Exactly one of a task id and a filter.
fn one_of(task_id: Option<i64>, filter: &Filter, what: &str) -> Result<(), Failure> {
    match (task_id.is_some(), filter.given()) {
        (true, true) => Err(Failure::input(format!(
            "{what}: give a task id or filters (--status, --name, --namespace, --since), not both"
        ))),
        (false, false) => Err(Failure::input(format!(
            "{what}: give a task id, or filters (--status, --name, --namespace, --since) for many tasks"
        ))),
        _ => Ok(()),
    }
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

pub(crate) async fn pause(cli: &Cli, a: &PauseArgs, paused: bool) -> Outcome {
    let engine = open(cli).await?;
    let verb = if paused { "paused" } else { "resumed" };
    if let Some(name) = &a.template {
        let n = if paused {
            engine.pause_template(name, &a.namespace).await?
        } else {
            engine.resume_template(name, &a.namespace).await?
        };
        println!("{} of {}.{name} {verb}", plural(n, "task"), a.namespace);
        return Ok(ExitCode::SUCCESS);
    }
    let id = a.task_id.expect("clap requires a task id or --template");
    let changed = if paused {
        engine.pause_task(id).await?
    } else {
        engine.resume_task(id).await?
    };
    if changed {
        println!("task {id} {verb}");
    } else {
        println!(
            "task {id} was already {}",
            if paused { "paused" } else { "not paused" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn rerun(cli: &Cli, task_id: i64, step: &str) -> Outcome {
    let engine = open(cli).await?;
    let n = engine.rerun_from(task_id, step).await?;
    println!(
        "task {task_id} reruns from step {step}: {} back to pending",
        plural(n as u64, "step")
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn retry(cli: &Cli, a: &RetryArgs) -> Outcome {
    one_of(a.task_id, &a.filter, "retry")?;
    let engine = open(cli).await?;
    match (a.task_id, &a.step) {
        (Some(id), Some(step)) => {
            engine.retry_step(id, step).await?;
            println!("step {step} of task {id} will be retried");
        }
        (Some(id), None) => {
            let n = engine.retry_task(id).await?;
            println!("task {id}: {} will be retried", plural(n as u64, "step"));
        }
        (None, _) => {
            let sel = bulk(&engine, &a.filter)?;
            println!(
                "{} will be retried",
                plural(engine.retry_tasks(&sel).await?, "task")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn cancel(cli: &Cli, a: &CancelArgs) -> Outcome {
    one_of(a.task_id, &a.filter, "cancel")?;
    let engine = open(cli).await?;
    if let Some(id) = a.task_id {
        engine.cancel_task(id).await?;
        println!("task {id} cancelled");
    } else {
        let sel = bulk(&engine, &a.filter)?;
        println!(
            "{} cancelled",
            plural(engine.cancel_tasks(&sel).await?, "task")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bulk(engine: &Engine, f: &Filter) -> Result<tasker_core::TaskSelection, Failure> {
    Ok(f.query().selection(engine.now_ms())?)
}

pub(crate) async fn prune(cli: &Cli, a: &PruneArgs) -> Outcome {
    let age = parse_age("--older-than", &a.older_than)?;
    let statuses = statuses("--status", &a.statuses)?;
    let engine = open(cli).await?;
    let n = engine.prune(age, &statuses).await?;
    println!("{} pruned", plural(n, "task"));
    Ok(ExitCode::SUCCESS)
}

/// The values of the flag `what` as task states.
fn statuses(what: &str, given: &[String]) -> Result<Vec<TaskState>, Failure> {
    given
        .iter()
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|m| Failure::input(format!("{what}: {m}")))
        })
        .collect()
}

/// A worker's retention setting (`tasker worker --prune-older-than 30d`).
#[derive(Args)]
pub(crate) struct RetentionArgs {
    /// Every minute, remove tasks that ended longer ago than this (seconds or an age: 30d).
    #[arg(long, value_name = "AGE")]
    prune_older_than: Option<String>,
    /// With --prune-older-than: in these states (repeatable; default complete, cancelled and
    /// resolved_manually).
    #[arg(long = "prune-status", requires = "prune_older_than")]
    prune_statuses: Vec<String>,
}

impl RetentionArgs {
    pub(crate) fn retention(&self) -> Result<Option<tasker_core::Retention>, Failure> {
        let Some(age) = &self.prune_older_than else {
            return Ok(None);
        };
        let statuses = statuses("--prune-status", &self.prune_statuses)?;
        if let Some(s) = statuses.iter().find(|s| !s.is_terminal()) {
            return Err(Failure::input(format!(
                "--prune-status: {s} is not a state a task ends in (complete, error, cancelled, resolved_manually)"
            )));
        }
        Ok(Some(tasker_core::Retention {
            older_than: parse_age("--prune-older-than", age)?,
            statuses,
        }))
    }
}

/// `tasker worker`'s flags.
#[derive(Args)]
pub(crate) struct WorkerArgs {
    /// Steps run at once.
    #[arg(long, default_value_t = 8)]
    pub(crate) concurrency: usize,
    /// Exit when nothing is left to do.
    #[arg(long)]
    pub(crate) until_idle: bool,
    /// Serve this worker's metrics (cycle latency, steps claimed, step durations and
    /// outcomes, lease expiries) as Prometheus text at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_bind: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) retention: RetentionArgs,
}
