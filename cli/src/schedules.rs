//! `tasker schedule create|list|pause|resume|delete`: templates run on a cron pattern. Every
//! `tasker worker` and `tasker serve` fires them.

use std::process::ExitCode;

use clap::Subcommand;
use tasker_core::schedule::ScheduleSpec;

use crate::{open, optional_json, Cli, Failure, Outcome};

#[derive(Subcommand)]
pub(crate) enum ScheduleCmd {
    /// Create a schedule: a task of TEMPLATE at each tick of CRON (5 fields, or 6 with
    /// seconds first), in --timezone.
    Create {
        name: String,
        template: String,
        cron: String,
        /// The tasks' context: JSON text or @file.json (default {}).
        #[arg(long)]
        context: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// Default: the latest registered version at each tick.
        #[arg(long)]
        version: Option<String>,
        /// An IANA zone name (default UTC).
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// skip (no new task while the previous is unfinished), allow, or cancel_previous.
        #[arg(long, default_value = "skip")]
        overlap: String,
        /// After every process was down: none, latest (one task) or all (one per missed tick).
        #[arg(long, default_value = "latest")]
        catch_up: String,
    },
    /// List the schedules with their next run times.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Pause a schedule (its ticks make no task until resumed, and are not caught up).
    Pause { name: String },
    /// Resume a paused schedule from its next tick.
    Resume { name: String },
    /// Delete a schedule (its tasks stay).
    Delete { name: String },
}

pub(crate) async fn schedule(cli: &Cli, cmd: &ScheduleCmd) -> Outcome {
    let engine = open(cli).await?;
    let info = match cmd {
        ScheduleCmd::Create {
            name,
            template,
            cron,
            context,
            namespace,
            version,
            timezone,
            overlap,
            catch_up,
        } => {
            let spec = ScheduleSpec {
                context: optional_json("--context", context.as_deref())?,
                namespace: namespace.clone(),
                version: version.clone(),
                timezone: timezone.clone(),
                overlap: overlap
                    .parse()
                    .map_err(|e| Failure::input(format!("--overlap: {e}")))?,
                catch_up: catch_up
                    .parse()
                    .map_err(|e| Failure::input(format!("--catch-up: {e}")))?,
                ..ScheduleSpec::new(name, template, cron)
            };
            engine.create_schedule(spec).await?
        }
        ScheduleCmd::List { json } => {
            let all = engine.list_schedules().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&all).expect("json"));
            } else if all.is_empty() {
                println!("no schedules");
            } else {
                println!(
                    "{:<24} {:<28} {:<18} {:<16} {:<24} {:>6} {:>7}",
                    "NAME", "TEMPLATE", "CRON", "TIMEZONE", "NEXT RUN", "FIRED", "SKIPPED"
                );
                for s in all {
                    let next = if s.paused {
                        "paused".to_owned()
                    } else {
                        s.next_run_at.unwrap_or_else(|| "-".into())
                    };
                    println!(
                        "{:<24} {:<28} {:<18} {:<16} {:<24} {:>6} {:>7}",
                        s.name,
                        format!("{}.{}", s.namespace, s.template),
                        s.cron,
                        s.timezone,
                        next,
                        s.fired,
                        s.skipped
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCmd::Pause { name } => engine.pause_schedule(name).await?,
        ScheduleCmd::Resume { name } => engine.resume_schedule(name).await?,
        ScheduleCmd::Delete { name } => {
            engine.delete_schedule(name).await?;
            println!("schedule {name} deleted");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let state = if info.paused {
        "paused".to_owned()
    } else {
        format!(
            "next run {}",
            info.next_run_at.as_deref().unwrap_or("never")
        )
    };
    println!(
        "schedule {} ({}.{} at {:?} {}): {state}",
        info.name, info.namespace, info.template, info.cron, info.timezone
    );
    Ok(ExitCode::SUCCESS)
}
