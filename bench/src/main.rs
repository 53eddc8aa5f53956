//! Throughput harness: workloads W1-W4 of `shared/bench/README.md` on Tasker with Rust no-op
//! handlers, one process, worker concurrency 10.
//!
//! ```text
//! cargo run --release -p tasker-bench -- [--workload W1,W2,W3,W4] [--reps 3] [--durability full]
//! ```
//!
//! Each repetition runs on a fresh database. Every figure is the median over the repetitions.
//! A baseline is measured in the same run: the rate of single-row durable commits on the same
//! kind of database file, so figures can be read as ratios on a noisy machine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tasker_core::{
    Durability, Engine, EngineOptions, HandlerError, Registry, TaskRequest, TaskState, Worker,
    WorkerOptions,
};

const CONCURRENCY: usize = 10;

struct Args {
    workloads: Vec<String>,
    reps: usize,
    durability: Durability,
    scale: f64,
}

fn parse_args() -> Args {
    let mut a = Args {
        workloads: vec!["W1".into(), "W2".into(), "W3".into(), "W4".into()],
        reps: 3,
        durability: Durability::Full,
        scale: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| die(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--workload" | "-w" => a.workloads = val().split(',').map(|s| s.trim().to_uppercase()).collect(),
            "--reps" => a.reps = val().parse().unwrap_or_else(|_| die("--reps takes a number")),
            "--durability" => a.durability = val().parse().unwrap_or_else(|e: String| die(&e)),
            "--scale" => a.scale = val().parse().unwrap_or_else(|_| die("--scale takes a number")),
            "-h" | "--help" => {
                println!("usage: tasker-bench [--workload W1,W2,W3,W4] [--reps N] [--durability full|normal|off] [--scale F]");
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other:?} (try --help)")),
        }
    }
    for w in &a.workloads {
        if !["W1", "W2", "W3", "W4", "BASELINE"].contains(&w.as_str()) {
            die(&format!("unknown workload {w:?}: expected W1, W2, W3, W4"));
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("tasker-bench: {msg}");
    std::process::exit(2)
}

type Metrics = BTreeMap<&'static str, f64>;

struct Db {
    _dir: tempfile::TempDir,
    url: String,
}

fn fresh_db() -> Db {
    let dir = tempfile::Builder::new().prefix("tasker-bench").tempdir_in(std::env::var("TASKER_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string())).expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    Db { _dir: dir, url }
}

async fn open(db: &Db, durability: Durability) -> Engine {
    Engine::open_with(EngineOptions::default().url(&db.url).durability(durability)).await.expect("open")
}

/// Records the first handler start.
#[derive(Clone, Default)]
struct FirstStart(Arc<Mutex<Option<Instant>>>, Arc<AtomicBool>);

impl FirstStart {
    fn mark(&self) {
        if !self.1.load(Ordering::Relaxed) {
            let mut g = self.0.lock().unwrap();
            if g.is_none() {
                *g = Some(Instant::now());
            }
            self.1.store(true, Ordering::Relaxed);
        }
    }
    fn get(&self) -> Instant {
        self.0.lock().unwrap().expect("a handler ran")
    }
}

fn worker(engine: &Engine, reg: Registry) -> Worker {
    let prefetch = std::env::var("TASKER_PREFETCH").ok().and_then(|v| v.parse().ok());
    Worker::new(engine.clone(), reg, WorkerOptions { concurrency: CONCURRENCY, prefetch, ..Default::default() })
}

async fn w1(d: Durability, scale: f64) -> Metrics {
    let n = (20_000.0 * scale) as usize;
    let db = fresh_db();
    let engine = open(&db, d).await;
    engine.register_template_yaml("name: job\nstep_templates:\n  - {name: noop}\n").await.unwrap();
    let t0 = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let reqs = chunk.iter().map(|i| TaskRequest::new("job", json!({"i": i}))).collect();
        engine.create_tasks(reqs).await.unwrap();
    }
    let submitted = t0.elapsed();
    let first = FirstStart::default();
    let mut reg = Registry::new();
    let f = first.clone();
    reg.register_fn("noop", move |_| {
        f.mark();
        async { Ok(json!({"ok": true})) }
    });
    let w_start = Instant::now();
    let stats = worker(&engine, reg).run_until_idle().await.unwrap();
    let end = Instant::now();
    assert_eq!(stats.completed as usize, n);
    let done = engine
        .list_tasks(&tasker_core::TaskFilter { state: Some(TaskState::Complete), limit: Some(n as i64 + 1), ..Default::default() })
        .await
        .unwrap()
        .len();
    assert_eq!(done, n, "every task complete");
    let drain = end - first.get();
    BTreeMap::from([
        ("steps_per_cycle", n as f64 / stats.cycles as f64),
        ("steps_per_s", n as f64 / drain.as_secs_f64()),
        ("submit_per_s", n as f64 / submitted.as_secs_f64()),
        ("drain_s", drain.as_secs_f64()),
        ("total_wall_s", (end - t0).as_secs_f64()),
        ("worker_start_to_first_s", (first.get() - w_start).as_secs_f64()),
    ])
}

async fn w2(d: Durability, scale: f64) -> Metrics {
    let n = (2_000.0 * scale) as usize;
    let db = fresh_db();
    let engine = open(&db, d).await;
    engine
        .register_template_yaml(
            "name: diamond\nstep_templates:\n  - {name: A}\n  - {name: B, depends_on_step: A}\n  - {name: C, depends_on_step: A}\n  - {name: D, depends_on_steps: [B, C]}\n",
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        engine.create_task(TaskRequest::new("diamond", json!({"wf": i}))).await.unwrap();
    }
    let submitted = t0.elapsed();
    let first = FirstStart::default();
    let mut reg = Registry::new();
    let f = first.clone();
    reg.register_fn("A", move |s| {
        f.mark();
        async move { Ok(json!({"wf": s.context["wf"], "a": 1})) }
    });
    reg.register_fn("B", |s| async move { Ok(json!({"wf": s.results["A"]["wf"], "b": 2})) });
    reg.register_fn("C", |s| async move { Ok(json!({"wf": s.results["A"]["wf"], "c": 3})) });
    reg.register_fn("D", |s| async move {
        if s.results["B"]["b"] != 2 || s.results["C"]["c"] != 3 || s.results["B"]["wf"] != s.context["wf"] {
            return Err(HandlerError::permanent(format!("D saw wrong inputs: {:?}", s.results)));
        }
        Ok(json!({"wf": s.context["wf"], "d": 4}))
    });
    let stats = worker(&engine, reg).run_until_idle().await.unwrap();
    let end = Instant::now();
    assert_eq!((stats.completed as usize, stats.failed), (4 * n, 0));
    let wall = end - first.get();
    BTreeMap::from([
        ("steps_per_s", 4.0 * n as f64 / wall.as_secs_f64()),
        ("workflows_per_s", n as f64 / wall.as_secs_f64()),
        ("submit_per_s", n as f64 / submitted.as_secs_f64()),
        ("total_wall_s", (end - t0).as_secs_f64()),
    ])
}

async fn w3(d: Durability, scale: f64) -> Metrics {
    let n = ((300.0 * scale) as usize).max(10);
    let db = fresh_db();
    let engine = open(&db, d).await;
    engine.register_template_yaml("name: job\nstep_templates:\n  - {name: noop}\n").await.unwrap();
    let mut reg = Registry::new();
    reg.register_fn("noop", |_| async { Ok(json!({"ok": true})) });
    let w = Arc::new(worker(&engine, reg));
    let stop = w.shutdown_handle();
    let w2 = w.clone();
    let run = tokio::spawn(async move { w2.run().await });
    let mut lat = Vec::with_capacity(n);
    let mut create = Vec::with_capacity(n);
    for i in 0..(n + 10) {
        let t0 = Instant::now();
        let id = engine.create_task(TaskRequest::new("job", json!({"i": i}))).await.unwrap();
        create.push(t0.elapsed().as_secs_f64() * 1000.0);
        let t = engine.wait_for_task(id, Some(Duration::from_secs(10))).await.unwrap();
        let dt = t0.elapsed();
        assert_eq!(t.status, TaskState::Complete);
        if i >= 10 {
            lat.push(dt.as_secs_f64() * 1000.0);
        }
    }
    stop.shutdown();
    run.await.unwrap().unwrap();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((p / 100.0 * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    BTreeMap::from([
        ("p50_ms", pct(50.0)),
        ("p95_ms", pct(95.0)),
        ("p99_ms", pct(99.0)),
        ("mean_ms", lat.iter().sum::<f64>() / lat.len() as f64),
        ("create_p50_ms", median(create)),
    ])
}

async fn w4(d: Durability, scale: f64) -> Metrics {
    let n = ((20.0 * scale) as usize).max(1);
    let len = 100;
    let db = fresh_db();
    let engine = open(&db, d).await;
    let mut yaml = String::from("name: chain\nstep_templates:\n  - {name: s1, handler_class: step}\n");
    for k in 2..=len {
        yaml.push_str(&format!("  - {{name: s{k}, handler_class: step, depends_on_step: s{}}}\n", k - 1));
    }
    engine.register_template_yaml(&yaml).await.unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        engine.create_task(TaskRequest::new("chain", json!({"wf": i}))).await.unwrap();
    }
    let first = FirstStart::default();
    let mut reg = Registry::new();
    let f = first.clone();
    reg.register_fn("step", move |s| {
        f.mark();
        async move {
            let x = s.results.values().next().map(|v| v["x"].as_i64().unwrap()).unwrap_or(0) + 1;
            if s.step_name == format!("s{len}") && x != len as i64 {
                return Err(HandlerError::permanent(format!("chain ended at x = {x}")));
            }
            Ok(json!({"x": x}))
        }
    });
    let stats = worker(&engine, reg).run_until_idle().await.unwrap();
    let end = Instant::now();
    assert_eq!((stats.completed as usize, stats.failed), (n * len, 0));
    let wall = end - first.get();
    BTreeMap::from([
        ("steps_per_s", (n * len) as f64 / wall.as_secs_f64()),
        ("workflows_per_s", n as f64 / wall.as_secs_f64()),
        ("total_wall_s", (end - t0).as_secs_f64()),
    ])
}

/// Single-row durable commits per second on a fresh database with the same settings: the
/// machine's cost of one commit, measured in the same run.
async fn baseline(d: Durability) -> Metrics {
    use sqlx::Connection;
    let db = fresh_db();
    let sync = match d {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
        Durability::Off => "OFF",
    };
    let mut c = sqlx::SqliteConnection::connect(&format!("{}?mode=rwc", db.url)).await.unwrap();
    sqlx::query("PRAGMA journal_mode=WAL").execute(&mut c).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA synchronous={sync}"))).execute(&mut c).await.unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").execute(&mut c).await.unwrap();
    let n = 2000;
    let t0 = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(format!("{{\"i\":{i}}}")).execute(&mut c).await.unwrap();
    }
    BTreeMap::from([("commits_per_s", n as f64 / t0.elapsed().as_secs_f64())])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let mut cells: Vec<String> = vec!["BASELINE".into()];
    cells.extend(args.workloads.iter().filter(|w| *w != "BASELINE").cloned());
    let mut results: BTreeMap<String, Vec<Metrics>> = BTreeMap::new();
    // Repetitions interleaved across cells, as the peers' harness does.
    for rep in 0..args.reps {
        for cell in &cells {
            let m = match cell.as_str() {
                "BASELINE" => baseline(args.durability).await,
                "W1" => w1(args.durability, args.scale).await,
                "W2" => w2(args.durability, args.scale).await,
                "W3" => w3(args.durability, args.scale).await,
                "W4" => w4(args.durability, args.scale).await,
                _ => unreachable!(),
            };
            eprintln!("rep {} {cell}: {}", rep + 1, fmt(&m));
            results.entry(cell.clone()).or_default().push(m);
        }
    }
    let base = median(results["BASELINE"].iter().map(|m| m["commits_per_s"]).collect());
    println!("# tasker-bench: SQLite ({:?} durability), Rust no-op handlers, concurrency {CONCURRENCY}, medians of {} reps", args.durability, args.reps);
    for (cell, reps) in &results {
        let keys: Vec<&str> = reps[0].keys().copied().collect();
        for k in keys {
            let vals: Vec<f64> = reps.iter().map(|m| m[k]).collect();
            let med = median(vals.clone());
            let ratio = if k == "steps_per_s" {
                format!("  ({:.1}x baseline commits/s)", med / base)
            } else {
                String::new()
            };
            println!("{cell} {k} {} [reps: {}]{ratio}", num(med), vals.iter().map(|v| num(*v)).collect::<Vec<_>>().join(", "));
        }
    }
    let _ = Value::Null;
}

fn num(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.3}") }
}

fn fmt(m: &Metrics) -> String {
    m.iter().map(|(k, v)| format!("{k}={}", num(*v))).collect::<Vec<_>>().join(" ")
}
