//! `tasker`: define a workflow in YAML and run it, with no code of your own.
//!
//! Exit codes: 0 success (for `run`: the task completed), 1 the task ended in `error` or
//! `cancelled` (or an internal failure), 2 bad input (template, context, URL, arguments),
//! 130 interrupted.

mod events;
mod flow;
mod output;
mod schedules;
mod telemetry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use tasker_core::{
    builtin, diagram, Engine, EngineOptions, Error, Registration, Registry, TaskFilter,
    TaskRequest, TaskState, TaskTemplate, TemplateError, Worker, WorkerOptions,
};

#[derive(Parser)]
#[command(
    name = "tasker",
    version,
    about = "Run workflows defined in YAML: DAGs of steps with retries, persisted in SQLite or PostgreSQL."
)]
struct Cli {
    /// Database URL: sqlite://PATH (embedded, one process) or postgres://USER@HOST:PORT/DB
    /// (many worker processes).
    #[arg(
        long,
        global = true,
        env = "TASKER_DATABASE_URL",
        default_value = "sqlite://tasker.db",
        hide_env_values = true
    )]
    db: String,
    /// PostgreSQL: use (and create) this schema.
    #[arg(long, global = true, env = "TASKER_SCHEMA")]
    schema: Option<String>,
    /// PostgreSQL: don't LISTEN for new work (behind a pooler that cannot); poll instead.
    #[arg(long, global = true)]
    poll_only: bool,
    /// How long a claimed step is held before another worker may take it over.
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECONDS")]
    lease_seconds: f64,
    /// Template environment: applies `environments.<NAME>` overrides.
    #[arg(long = "env", global = true, value_name = "NAME")]
    environment: Option<String>,
    /// Refuse a changed template body under an already registered version (by default it
    /// becomes a new revision that new tasks use), and unknown template keys (by default kept
    /// and warned about).
    #[arg(long, global = true, env = "TASKER_STRICT_TEMPLATES")]
    strict_templates: bool,
    /// Log lines on stderr: text or json (one JSON object per line). Which ones: TASKER_LOG
    /// (for example `info` or `tasker_server=debug`; default `warn`).
    #[arg(long, global = true, env = "TASKER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register a template, create a task and run it here until it finishes.
    Run(RunArgs),
    /// Run built-in command/http steps of every task in the database until stopped.
    Worker(flow::WorkerArgs),
    /// Register or list templates.
    #[command(subcommand)]
    Templates(TemplatesCmd),
    /// Register or list event definition files (`config/tasker/events/*.yml`).
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Create, list, pause, resume or delete schedules (templates run on a cron pattern).
    #[command(subcommand)]
    Schedule(schedules::ScheduleCmd),
    /// Create a task from a registered template; prints its id.
    Create {
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        input: TaskInput,
    },
    /// Show a task and its steps.
    Status {
        task_id: i64,
        /// Print the task snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tasks, newest first.
    List {
        /// pending, in_progress, complete, error, cancelled or resolved_manually.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task (steps not started are cancelled, running steps finish), or every
    /// unfinished task the filters match.
    Cancel(flow::CancelArgs),
    /// Give a failed step fresh attempts and put its task back to work: one step, every failed
    /// step of a task, or every failed task the filters match (`--status error --name N`).
    Retry(flow::RetryArgs),
    /// Pause a task (no new step of it starts; running steps finish), or every unfinished
    /// task of a template (--template).
    Pause(flow::PauseArgs),
    /// Resume a paused task, or every paused task of a template (--template).
    Resume(flow::PauseArgs),
    /// Rerun a complete, resolved or failed task from a step: it and every step below it
    /// run again with fresh attempts.
    Rerun { task_id: i64, step: String },
    /// Remove tasks that ended long ago, with their steps and history.
    Prune(flow::PruneArgs),
    /// Mark a pending or failed step resolved, with results; its children may run.
    Resolve {
        task_id: i64,
        step: String,
        /// The step's results: JSON text or @file.json (default null).
        #[arg(long)]
        results: Option<String>,
    },
    /// Send a signal to a task: completes its steps waiting for it (or keeps it for the first
    /// step that waits for it).
    Signal {
        task_id: i64,
        name: String,
        /// The payload, the steps' results: JSON text or @file.json (default null: the wait's
        /// own results).
        #[arg(long)]
        payload: Option<String>,
    },
    /// Complete a waiting step, with results.
    Complete {
        task_id: i64,
        step: String,
        /// JSON text or @file.json (default null: the wait's own results).
        #[arg(long)]
        results: Option<String>,
    },
    /// Fail a waiting step: retried (its handler runs again) unless --permanent.
    Fail {
        task_id: i64,
        step: String,
        #[arg(long)]
        message: String,
        #[arg(long)]
        permanent: bool,
    },
    /// Print a Mermaid flowchart of a task (steps coloured by state) or of a template file.
    Diagram {
        /// A task id or a template file.
        target: String,
    },
    /// Create or upgrade the database schema.
    Migrate,
    /// Serve the REST API, health probes and Prometheus metrics over HTTP until SIGINT or
    /// SIGTERM, then let in-flight requests finish.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// Mount the API under this path (for example /tasker).
    #[arg(long, default_value = "")]
    base_path: String,
    /// Require `Authorization: Bearer TOKEN` on every route but /health/live and /health/ready.
    #[arg(long, env = "TASKER_API_TOKEN", hide_env_values = true, conflicts_with_all = ["jwt_secret", "jwt_public_key"])]
    auth_token: Option<String>,
    /// Require HS256 JWTs signed with this secret; their `permissions` claim lists the
    /// `resource:action` strings each route needs.
    #[arg(
        long,
        env = "TASKER_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    jwt_secret: Option<String>,
    /// Require RS256 JWTs verified with this RSA public key (a PEM file, or PEM text).
    #[arg(long, value_name = "PEM")]
    jwt_public_key: Option<String>,
    /// Allow serving without auth on an address other than loopback.
    #[arg(long)]
    insecure: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The template file (YAML).
    template: PathBuf,
    #[command(flatten)]
    input: TaskInput,
    /// Print the final task snapshot as JSON instead of progress and a summary.
    #[arg(long)]
    json: bool,
    /// Steps run at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[derive(Args)]
struct TaskInput {
    /// The task context: JSON text or @file.json.
    #[arg(long)]
    context: Option<String>,
    /// A second run with the same key returns the first task.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Its steps are claimed before those of tasks with a lower priority (default 0).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Unfinished after this many seconds, the task is failed and its unfinished steps
    /// cancelled (default: the template's deadline_seconds).
    #[arg(long)]
    deadline_seconds: Option<f64>,
}

#[derive(Subcommand)]
enum TemplatesCmd {
    /// Register template files.
    Register {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List registered templates.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn input(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match e {
            Error::Template(_)
            | Error::Validation(_)
            | Error::NotFound(_)
            | Error::Conflict(_)
            | Error::UnsupportedUrl(_) => 2,
            Error::IllegalTaskTransition { .. } | Error::IllegalStepTransition { .. } => 2,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

type Outcome = Result<ExitCode, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match telemetry::init(&cli.log_format) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tasker: error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(dispatch(cli));
    drop(rt);
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(f) => {
            let msg = f.message.replace('\n', "\n  ");
            eprintln!("tasker: error: {msg}");
            ExitCode::from(f.code)
        }
    }
}

async fn open(cli: &Cli) -> Result<Engine, Failure> {
    open_with(cli, false, None).await
}

/// [`open`], recording metrics when `metrics` is set, pruning by `retention` in workers.
async fn open_with(
    cli: &Cli,
    metrics: bool,
    retention: Option<tasker_core::Retention>,
) -> Result<Engine, Failure> {
    if !(cli.lease_seconds.is_finite() && cli.lease_seconds >= 0.1) {
        return Err(Failure::input(format!(
            "--lease-seconds must be at least 0.1, got {}",
            cli.lease_seconds
        )));
    }
    let mut opts = EngineOptions::default()
        .url(&cli.db)
        .listen(!cli.poll_only)
        .strict_templates(cli.strict_templates)
        .lease(Duration::from_secs_f64(cli.lease_seconds))
        .metrics(metrics)
        .retention(retention);
    if let Some(env) = &cli.environment {
        opts = opts.environment(env);
    }
    if let Some(schema) = &cli.schema {
        opts = opts.schema(schema);
    }
    Engine::open_with(opts).await.map_err(|e| match e {
        Error::UnsupportedUrl(_) | Error::Validation(_) => Failure::input(format!("--db: {e}")),
        // Names the server and the driver's reason already.
        e @ Error::Connect { .. } => Failure::from(e),
        other => Failure::from(other).with_prefix(&format!("cannot open database {}", cli.db)),
    })
}

impl Failure {
    fn with_prefix(mut self, p: &str) -> Failure {
        self.message = format!("{p}: {}", self.message);
        self
    }
}

/// JSON text or `@file`.
/// An optional JSON flag: null when absent.
fn optional_json(flag: &str, raw: Option<&str>) -> Result<Value, Failure> {
    raw.map_or(Ok(Value::Null), |r| json_arg(flag, r))
}

fn json_arg(flag: &str, raw: &str) -> Result<Value, Failure> {
    let (text, source) = match raw.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Failure::input(format!("{flag}: cannot read {path}: {e}")))?,
            path.to_owned(),
        ),
        None => (raw.to_owned(), flag.to_owned()),
    };
    serde_json::from_str(&text).map_err(|e| Failure::input(format!("{source}: invalid JSON: {e}")))
}

fn load_template(path: &Path, env: Option<&str>) -> Result<TaskTemplate, Failure> {
    let t = TaskTemplate::from_path(path, env).map_err(|e| match e {
        TemplateError::Io { .. } => Failure::input(e.to_string()),
        other => Failure::input(format!("{}: {other}", path.display())),
    })?;
    builtin::check_template(&t).map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    Ok(t)
}

/// Registers a template, saying on stderr when a changed body became a new revision.
async fn register(engine: &Engine, t: TaskTemplate) -> Result<Registration, Failure> {
    let r = engine.register_template_revision(t).await?;
    for w in &r.warnings {
        eprintln!(
            "tasker: template {}: {w} (--strict-templates refuses this)",
            r.key
        );
    }
    if let Some(prev) = r.replaced_revision {
        eprintln!(
            "tasker: template {} changed without a version bump: registered as revision {}; new tasks use it, tasks created before keep revision {prev} (--strict-templates refuses this)",
            r.key, r.revision
        );
    }
    Ok(r)
}

async fn dispatch(cli: Cli) -> Outcome {
    match &cli.command {
        Command::Run(args) => run(&cli, args).await,
        Command::Worker(a) => worker(&cli, a).await,
        Command::Templates(cmd) => templates(&cli, cmd).await,
        Command::Events(cmd) => events::events(&cli, cmd).await,
        Command::Schedule(cmd) => schedules::schedule(&cli, cmd).await,
        Command::Create {
            name,
            version,
            namespace,
            input,
        } => {
            let engine = open(&cli).await?;
            let id = engine
                .create_task(request(name, namespace.clone(), version.clone(), input)?)
                .await?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { task_id, json } => {
            let engine = open(&cli).await?;
            let t = engine.get_task(*task_id).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&t).expect("json"));
            } else {
                output::task_summary(&t);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            status,
            name,
            namespace,
            limit,
            json,
        } => list(&cli, status.as_deref(), name, namespace, *limit, *json).await,
        Command::Cancel(a) => flow::cancel(&cli, a).await,
        Command::Retry(a) => flow::retry(&cli, a).await,
        Command::Pause(a) => flow::pause(&cli, a, true).await,
        Command::Resume(a) => flow::pause(&cli, a, false).await,
        Command::Rerun { task_id, step } => flow::rerun(&cli, *task_id, step).await,
        Command::Prune(a) => flow::prune(&cli, a).await,
        Command::Resolve {
            task_id,
            step,
            results,
        } => {
            let results = optional_json("--results", results.as_deref())?;
            let engine = open(&cli).await?;
            engine
                .resolve_step_manually(*task_id, step, results)
                .await?;
            println!("step {step} of task {task_id} resolved manually");
            Ok(ExitCode::SUCCESS)
        }
        Command::Signal {
            task_id,
            name,
            payload,
        } => {
            let payload = optional_json("--payload", payload.as_deref())?;
            let n = open(&cli).await?.signal(*task_id, name, payload).await?;
            match n {
                0 => println!("signal {name} kept for task {task_id}: no step waits for it yet"),
                n => println!("signal {name} completed {n} step(s) of task {task_id}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Complete {
            task_id,
            step,
            results,
        } => {
            let results = optional_json("--results", results.as_deref())?;
            open(&cli)
                .await?
                .complete_step(*task_id, step, results)
                .await?;
            println!("step {step} of task {task_id} completed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Fail {
            task_id,
            step,
            message,
            permanent,
        } => {
            open(&cli)
                .await?
                .fail_step(*task_id, step, message, *permanent)
                .await?;
            println!("step {step} of task {task_id} failed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Diagram { target } => {
            print!("{}", diagram_text(&cli, target).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(&cli, args).await,
        Command::Migrate => {
            open(&cli).await?;
            println!("database {} is migrated", cli.db);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tasker templates register|list`.
async fn templates(cli: &Cli, cmd: &TemplatesCmd) -> Outcome {
    match cmd {
        TemplatesCmd::Register { files } => {
            let mut parsed = Vec::new();
            for f in files {
                parsed.push(load_template(f, cli.environment.as_deref())?);
            }
            let engine = open(cli).await?;
            for t in parsed {
                let r = register(&engine, t).await?;
                println!("registered {} (revision {})", r.key, r.revision);
            }
        }
        TemplatesCmd::List { json } => {
            let engine = open(cli).await?;
            let list = engine.templates().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list).expect("json"));
            } else {
                output::templates_table(&list);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasker list`.
async fn list(
    cli: &Cli,
    status: Option<&str>,
    name: &Option<String>,
    namespace: &Option<String>,
    limit: i64,
    json: bool,
) -> Outcome {
    let state = status
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|e| Failure::input(format!("--status: {e}")))
        })
        .transpose()?;
    if limit < 0 {
        return Err(Failure::input(format!("--limit must be >= 0, got {limit}")));
    }
    let engine = open(cli).await?;
    let tasks = engine
        .list_tasks(&TaskFilter {
            oldest_first: false,
            state,
            name: name.clone(),
            namespace: namespace.clone(),
            limit: Some(limit),
            offset: None,
            ..Default::default()
        })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&tasks).expect("json"));
    } else {
        output::tasks_table(&tasks);
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasker diagram TASK_ID|FILE`: a task's diagram (its steps' states), or a template file's.
async fn diagram_text(cli: &Cli, target: &str) -> Result<String, Failure> {
    Ok(match target.parse::<i64>() {
        Ok(id) => {
            let engine = open(cli).await?;
            let task = engine.get_task(id).await?;
            let t = engine
                .template(Some(&task.namespace), &task.name, Some(&task.version))
                .await?;
            diagram::mermaid(&t, Some(&task))
        }
        Err(_) => diagram::mermaid(
            &load_template(Path::new(target), cli.environment.as_deref())?,
            None,
        ),
    })
}

fn request(
    name: &str,
    namespace: Option<String>,
    version: Option<String>,
    input: &TaskInput,
) -> Result<TaskRequest, Failure> {
    let context = match &input.context {
        Some(c) => json_arg("--context", c)?,
        None => Value::Object(Default::default()),
    };
    Ok(TaskRequest {
        name: name.to_owned(),
        namespace,
        version,
        context,
        idempotency_key: input.idempotency_key.clone(),
        deadline_seconds: input.deadline_seconds,
        priority: input.priority,
        initiator: Some(std::env::var("USER").unwrap_or_else(|_| "tasker-cli".into())),
        source_system: Some("tasker-cli".into()),
        ..Default::default()
    })
}

fn builtin_registry() -> Registry {
    Registry::with_builtins()
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: &Cli, args: &RunArgs) -> Outcome {
    let template = load_template(&args.template, cli.environment.as_deref())?;
    let foreign: Vec<String> = template
        .steps
        .iter()
        .filter(|s| !builtin::NAMES.contains(&s.handler.as_str()))
        .map(|s| format!("{} (handler {:?})", s.name, s.handler))
        .collect();
    if !foreign.is_empty() {
        return Err(Failure::input(format!(
            "{}: `tasker run` runs only the built-in command and http handlers; these steps need a worker of their own: {}",
            args.template.display(),
            foreign.join(", ")
        )));
    }
    let engine = open(cli).await?;
    let req = request(
        &template.name,
        Some(template.namespace.clone()),
        Some(template.version.to_string()),
        &args.input,
    )?;
    let max_attempts: std::collections::HashMap<String, u32> = template
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.max_attempts))
        .collect();
    let total = template.steps.len();
    register(&engine, template).await?;
    let events = engine.subscribe();
    let task_id = engine.create_task(req).await?;
    let worker = Worker::new(
        engine.clone(),
        builtin_registry(),
        WorkerOptions {
            concurrency: args.concurrency.max(1),
            ..Default::default()
        },
    );
    let progress =
        (!args.json).then(|| output::Progress::start(task_id, total, max_attempts, events));
    let stop = worker.shutdown_handle();
    let interrupted = tokio::spawn(async move {
        stop_signal().await;
        stop.shutdown();
    });
    let result = worker.run_until_complete(task_id, None).await;
    interrupted.abort();
    let task = result?;
    if let Some(p) = progress {
        p.finish().await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&task).expect("json"));
    } else {
        output::task_summary(&task);
    }
    Ok(match task.status {
        TaskState::Complete => ExitCode::SUCCESS,
        TaskState::Error | TaskState::Cancelled | TaskState::ResolvedManually => ExitCode::from(1),
        _ => {
            eprintln!(
                "tasker: interrupted; task {task_id} is {} (continue it with `tasker worker`)",
                task.status
            );
            ExitCode::from(130)
        }
    })
}

async fn worker(cli: &Cli, a: &flow::WorkerArgs) -> Outcome {
    let (concurrency, until_idle, metrics_bind) = (a.concurrency, a.until_idle, a.metrics_bind);
    let retention = a.retention.retention()?;
    let engine = open_with(cli, metrics_bind.is_some(), retention).await?;
    let _metrics = match metrics_bind {
        Some(bind) => {
            let (addr, task) = tasker_server::metrics::serve_metrics(bind)
                .await
                .map_err(Failure::input)?;
            // Tests and scripts read this line to find the port of --metrics-bind 127.0.0.1:0.
            println!("tasker: metrics on http://{addr}/metrics");
            Some(task)
        }
        None => None,
    };
    let worker = std::sync::Arc::new(Worker::new(
        engine,
        builtin_registry(),
        WorkerOptions {
            concurrency: concurrency.max(1),
            ..Default::default()
        },
    ));
    let stop = worker.shutdown_handle();
    let signals = tokio::spawn(async move {
        stop_signal().await;
        eprintln!("tasker: stopping: finishing the steps in flight");
        stop.shutdown();
    });
    let w = worker.clone();
    let stats = if until_idle {
        w.run_until_idle().await?
    } else {
        w.run().await?
    };
    signals.abort();
    eprintln!(
        "tasker: worker stopped: {} steps completed, {} attempts failed",
        stats.completed, stats.failed
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(cli: &Cli, args: &ServeArgs) -> Outcome {
    let base_path = tasker_server::normalize_base_path(&args.base_path).map_err(Failure::input)?;
    let auth = match (&args.auth_token, &args.jwt_secret, &args.jwt_public_key) {
        (Some(t), _, _) if t.len() < 16 => {
            return Err(Failure::input(
                "--auth-token: use at least 16 characters (a random token, such as `openssl rand -hex 32`)",
            ))
        }
        (Some(t), _, _) => tasker_server::Auth::Token(t.clone()),
        (_, Some(s), _) if s.len() < 16 => {
            return Err(Failure::input("--jwt-secret: use at least 16 characters"))
        }
        (_, Some(s), _) => tasker_server::Auth::jwt_secret(s),
        (_, _, Some(pem)) => {
            let text = if pem.trim_start().starts_with("-----BEGIN") {
                pem.clone()
            } else {
                std::fs::read_to_string(pem)
                    .map_err(|e| Failure::input(format!("--jwt-public-key: cannot read {pem}: {e}")))?
            };
            tasker_server::Auth::jwt_public_key(&text).map_err(Failure::input)?
        }
        _ => tasker_server::Auth::Off,
    };
    let engine = open_with(cli, true, None).await?;
    let opts = tasker_server::ServeOptions {
        bind: args.bind,
        base_path,
        auth,
        insecure: args.insecure,
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("tasker: stopping: finishing requests in flight");
    };
    tasker_server::serve(engine, opts, shutdown)
        .await
        .map_err(|m| Failure {
            code: 1,
            message: m,
        })?;
    Ok(ExitCode::SUCCESS)
}
