//! `tasker events register|list`: event definition files (the original's
//! `config/tasker/events/*.yml`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tasker_core::EventSource;

use crate::{open, Cli, Outcome};

#[derive(Subcommand)]
pub(crate) enum EventsCmd {
    /// Register event definition files (or directories of them): stored, so every process
    /// opened afterwards knows them; a name registered again is replaced.
    Register {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the registered event definitions.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn events(cli: &Cli, cmd: &EventsCmd) -> Outcome {
    let engine = open(cli).await?;
    match cmd {
        EventsCmd::Register { paths } => {
            for p in paths {
                for d in engine.register_events(EventSource::Path(p)).await? {
                    println!(
                        "registered {} ({})",
                        d.name,
                        d.source.as_deref().unwrap_or("?")
                    );
                }
            }
        }
        EventsCmd::List { json } => {
            let defs = engine.event_definitions().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&defs).expect("json"));
            } else {
                for d in &defs {
                    let keys: Vec<String> = d
                        .payload_schema
                        .iter()
                        .map(|f| format!("{}{}", f.key, if f.required { "" } else { "?" }))
                        .collect();
                    println!(
                        "{:<28} {:<48} payload: {}",
                        d.name,
                        d.description.as_deref().unwrap_or(""),
                        if keys.is_empty() {
                            "any".to_owned()
                        } else {
                            keys.join(", ")
                        }
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
