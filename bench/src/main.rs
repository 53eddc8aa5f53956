//! Throughput harness: workloads W1-W4 of `shared/bench/README.md`, and W5 (a fan-out of 1,000
//! instances into one convergence), on Tasker with Rust no-op handlers, worker concurrency 10.
//!
//! ```text
//! tasker-bench [--backend sqlite|postgres] [--pg-url URL] [--workload W1,W2,W3,W4,W5,W6,RSS]
//!              [--workers N] [--reps 3] [--durability full|normal|off] [--scale F]
//! ```
//!
//! Each repetition runs on a fresh database (SQLite: a new file; PostgreSQL: a new schema,
//! dropped afterwards). Every figure printed is the median over the repetitions. A baseline is
//! measured in the same run, through the driver the engine uses (rusqlite on SQLite, sqlx on
//! PostgreSQL): single-row durable commits per second on the same database, so figures can be
//! read as ratios on a noisy machine. The conditions (SQLite `synchronous`; PostgreSQL
//! `fsync`, `synchronous_commit`, `full_page_writes`; prefetch, including `TASKER_PREFETCH`)
//! are printed, and figures from a non-durable set-up are refused unless `--allow-unsafe`.
//!
//! With `--workers 1` (default) the worker runs in the benchmark process and the clock runs from
//! the first handler start to the moment the worker finds nothing left. With `--workers N > 1`
//! (PostgreSQL) N worker processes are spawned (this binary in worker mode) and the time is
//! taken from the database: first `last_attempted_at` to last `processed_at`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use tasker_core::{
    Durability, Engine, EngineOptions, Registry, TaskRequest, TaskState, Worker, WorkerOptions,
};

mod signal;
mod workloads;
use workloads::{fan_out_steps, handlers, submit, templates, CHAIN_LEN};

const CONCURRENCY: usize = 10;

#[derive(Clone)]
struct Args {
    backend: String,
    pg_url: Option<String>,
    workloads: Vec<String>,
    reps: usize,
    workers: usize,
    durability: Durability,
    scale: f64,
    /// Report figures measured without durable commits (marked NOT DURABLE).
    allow_unsafe: bool,
}

fn arg_value(it: &mut impl Iterator<Item = String>, flag: &str) -> String {
    it.next()
        .unwrap_or_else(|| die(&format!("{flag} needs a value")))
}

fn parse_args() -> Args {
    let mut a = Args {
        backend: "sqlite".into(),
        pg_url: std::env::var("DATABASE_URL").ok(),
        workloads: vec!["W1".into(), "W2".into(), "W3".into(), "W4".into()],
        reps: 3,
        workers: 1,
        durability: Durability::Full,
        scale: 1.0,
        allow_unsafe: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backend" => a.backend = arg_value(&mut it, &arg),
            "--pg-url" => a.pg_url = Some(arg_value(&mut it, &arg)),
            "--workload" | "-w" => {
                a.workloads = arg_value(&mut it, &arg)
                    .split(',')
                    .map(|s| s.trim().to_uppercase())
                    .collect()
            }
            "--reps" => {
                a.reps = arg_value(&mut it, &arg)
                    .parse()
                    .unwrap_or_else(|_| die("--reps takes a number"))
            }
            "--workers" => {
                a.workers = arg_value(&mut it, &arg)
                    .parse()
                    .unwrap_or_else(|_| die("--workers takes a number"))
            }
            "--durability" => {
                a.durability = arg_value(&mut it, &arg)
                    .parse()
                    .unwrap_or_else(|e: String| die(&e))
            }
            "--scale" => {
                a.scale = arg_value(&mut it, &arg)
                    .parse()
                    .unwrap_or_else(|_| die("--scale takes a number"))
            }
            "--allow-unsafe" => a.allow_unsafe = true,
            "-h" | "--help" => {
                println!("usage: tasker-bench [--backend sqlite|postgres] [--pg-url URL] [--workload W1,W2,W3,W4,W5,W6,RSS] [--workers N] [--reps N] [--durability full|normal|off] [--scale F] [--allow-unsafe]");
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other:?} (try --help)")),
        }
    }
    if !["sqlite", "postgres"].contains(&a.backend.as_str()) {
        die("--backend is sqlite or postgres");
    }
    if a.backend == "postgres" && a.pg_url.is_none() {
        die("--backend postgres needs --pg-url or DATABASE_URL");
    }
    if a.workers > 1 && a.backend != "postgres" {
        die("--workers > 1 needs --backend postgres (SQLite is one process)");
    }
    for w in &a.workloads {
        if !["W1", "W2", "W3", "W4", "W5", "W6", "RSS"].contains(&w.as_str()) {
            die(&format!(
                "unknown workload {w:?}: expected W1, W2, W3, W4, W5, W6, RSS"
            ));
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("tasker-bench: {msg}");
    std::process::exit(2)
}

type Metrics = BTreeMap<&'static str, f64>;

/// A fresh database for one repetition.
struct Db {
    _dir: Option<tempfile::TempDir>,
    url: String,
    schema: Option<String>,
}

fn fresh_db(a: &Args) -> Db {
    if a.backend == "postgres" {
        let schema = format!("bench_{}_{:08x}", std::process::id(), rand_u32());
        return Db {
            _dir: None,
            url: a.pg_url.clone().unwrap(),
            schema: Some(schema),
        };
    }
    let base = std::env::var("TASKER_BENCH_DIR")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let dir = tempfile::Builder::new()
        .prefix("tasker-bench")
        .tempdir_in(base)
        .expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    Db {
        _dir: Some(dir),
        url,
        schema: None,
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

impl Db {
    async fn open(&self, d: Durability) -> Engine {
        let mut o = EngineOptions::default()
            .url(&self.url)
            .durability(d)
            .planned_cycles(planned_cycles());
        if let Some(s) = &self.schema {
            o = o.schema(s);
        }
        Engine::open_with(o).await.expect("open")
    }

    async fn drop(self) {
        if let Some(s) = &self.schema {
            let mut c = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connect");
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {s} CASCADE")))
                .execute(&mut c)
                .await
                .expect("drop schema");
        }
    }

    /// (first attempt start, last completion) in epoch ms, from the database.
    async fn span_ms(&self) -> (i64, i64) {
        let s = self.schema.as_deref().expect("postgres");
        let mut c = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect");
        let row: (Option<i64>, Option<i64>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT MIN(last_attempted_at), MAX(processed_at) FROM {s}.steps"
        )))
        .fetch_one(&mut c)
        .await
        .expect("span");
        (row.0.expect("steps ran"), row.1.expect("steps completed"))
    }
}

/// Records the first handler start.
#[derive(Clone, Default)]
pub(crate) struct FirstStart(Arc<Mutex<Option<Instant>>>, Arc<AtomicBool>);

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
    let prefetch = std::env::var("TASKER_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok());
    Worker::new(
        engine.clone(),
        reg,
        WorkerOptions {
            concurrency: CONCURRENCY,
            prefetch,
            lanes: lanes(),
            ..Default::default()
        },
    )
}

/// W1, W2, W4: submit everything, then drain with the worker(s).
async fn throughput(a: &Args, w: &str) -> Metrics {
    let db = fresh_db(a);
    let engine = db.open(a.durability).await;
    let (steps, submit_s) = submit(w, &engine, a.scale).await;
    let mut m = Metrics::new();
    if a.workers <= 1 {
        let first = FirstStart::default();
        let statements0 = engine.database_statements();
        let wk = worker(&engine, handlers(w, &first));
        let stats = wk.run_until_idle().await.unwrap();
        let end = Instant::now();
        assert_eq!((stats.completed as usize, stats.failed), (steps, 0));
        let secs = (end - first.get()).as_secs_f64();
        m.insert("steps_per_s", steps as f64 / secs);
        m.insert("steps_per_transaction", steps as f64 / stats.cycles as f64);

        if a.backend == "postgres" {
            let statements = (engine.database_statements() - statements0) as f64;
            m.insert("round_trips_per_step", statements / steps as f64);
            m.insert(
                "round_trips_per_transaction",
                statements / stats.cycles.max(1) as f64,
            );
            let (planned, refused) = engine.planned_cycles();
            m.insert("planned_share", planned as f64 / stats.cycles.max(1) as f64);
            m.insert("plans_refused", refused as f64);
        }
    } else {
        let mut children = Vec::new();
        for i in 0..a.workers {
            children.push(spawn_worker(a, &db, w, i, None));
        }
        let mut statements = 0u64;
        for c in children {
            let out = c.wait_with_output().expect("worker");
            assert!(
                out.status.success(),
                "worker failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            statements += parse_field(&out.stdout, "statements") as u64;
        }
        let (t0, t1) = db.span_ms().await;
        m.insert(
            "steps_per_s",
            steps as f64 * 1000.0 / (t1 - t0).max(1) as f64,
        );
        m.insert("round_trips_per_step", statements as f64 / steps as f64);
    }
    let done = engine
        .list_tasks(&tasker_core::TaskFilter {
            oldest_first: false,
            state: Some(TaskState::Complete),
            limit: Some(1_000_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    let expected = match w {
        "W2" => steps / 4,
        "W4" => steps / CHAIN_LEN,
        "W5" => steps / fan_out_steps(),
        _ => steps,
    };
    assert_eq!(done, expected, "every task complete");
    m.insert("submit_per_s", expected as f64 / submit_s);
    if w == "W5" && a.workers <= 1 {
        m.insert(
            "fan_out_ms",
            workloads::one_fan_out_ms(
                &engine,
                worker(&engine, handlers(w, &FirstStart::default())),
            )
            .await,
        );
    }
    drop(engine);
    db.drop().await;
    m
}

pub(crate) fn spawn_worker(
    a: &Args,
    db: &Db,
    w: &str,
    i: usize,
    for_ms: Option<u64>,
) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--worker-mode", w, "--db", &db.url, "--id", &i.to_string()]);
    if let Some(s) = &db.schema {
        cmd.args(["--schema", s]);
    }
    if let Some(ms) = for_ms {
        cmd.args(["--for-ms", &ms.to_string()]);
    }
    let _ = a;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

fn parse_field(stdout: &[u8], key: &str) -> f64 {
    let text = String::from_utf8_lossy(stdout);
    text.split_whitespace()
        .find_map(|kv| {
            kv.strip_prefix(&format!("{key}="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("worker printed no {key}: {text}"))
}

/// W3: one task at a time, submit -> durable completion observed.
async fn latency(a: &Args) -> Metrics {
    let db = fresh_db(a);
    let engine = db.open(a.durability).await;
    for t in templates("W3") {
        engine.register_template_yaml(&t).await.unwrap();
    }
    let n = ((300.0 * a.scale) as usize).max(10);
    let mut children = Vec::new();
    let mut local = None;
    if a.workers <= 1 {
        let w = Arc::new(worker(&engine, handlers("W3", &FirstStart::default())));
        let stop = w.shutdown_handle();
        let w2 = w.clone();
        local = Some((stop, tokio::spawn(async move { w2.run().await })));
    } else {
        for i in 0..a.workers {
            children.push(spawn_worker(a, &db, "W3", i, Some(600_000)));
        }
    }
    let mut lat = Vec::with_capacity(n);
    // How long the creation itself took (the rest is the step and the waiter's wake-up).
    let mut created = Vec::with_capacity(n);
    for i in 0..(n + 10) {
        let t0 = Instant::now();
        let id = engine
            .create_task(TaskRequest::new("job", json!({"i": i})))
            .await
            .unwrap();
        if i >= 10 {
            created.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        let t = engine
            .wait_for_task(id, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        let dt = t0.elapsed();
        assert_eq!(t.status, TaskState::Complete);
        if i >= 10 {
            lat.push(dt.as_secs_f64() * 1000.0);
        }
    }
    if let Some((stop, run)) = local {
        stop.shutdown();
        run.await.unwrap().unwrap();
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct =
        |p: f64| lat[((p / 100.0 * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    let m = BTreeMap::from([
        ("p50_ms", pct(50.0)),
        ("p95_ms", pct(95.0)),
        ("p99_ms", pct(99.0)),
        ("mean_ms", lat.iter().sum::<f64>() / lat.len() as f64),
        ("create_p50_ms", {
            created.sort_by(|a, b| a.partial_cmp(b).unwrap());
            created[created.len() / 2]
        }),
        // Tasks whose step the creation claimed for the idle local worker (hand-off).
        (
            "handoffs_per_task",
            engine.handoffs() as f64 / (n + 10) as f64,
        ),
        // Waits answered by the cycle that finished the task, without a read of their own.
        (
            "handed_over_per_task",
            engine.waits_handed_over() as f64 / (n + 10) as f64,
        ),
    ]);
    drop(engine);
    db.drop().await;
    m
}

/// RSS: a worker process's peak memory while 100,000 one-step tasks wait (it runs 3 s).
async fn rss(a: &Args) -> Metrics {
    let db = fresh_db(a);
    let engine = db.open(a.durability).await;
    submit("RSS", &engine, 1.0).await;
    let out = spawn_worker(a, &db, "RSS", 0, Some(3000))
        .wait_with_output()
        .expect("worker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = BTreeMap::from([
        (
            "worker_peak_rss_mb",
            parse_field(&out.stdout, "vmhwm_kb") / 1024.0,
        ),
        ("steps_done_in_3s", parse_field(&out.stdout, "completed")),
    ]);
    drop(engine);
    db.drop().await;
    m
}

/// Single-row durable commits per second on a fresh database of the same kind.
async fn baseline(a: &Args) -> Metrics {
    let db = fresh_db(a);
    let n = 2000;
    let t0;
    if let Some(s) = &db.schema {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {s}")))
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {s}.t (id BIGSERIAL PRIMARY KEY, v TEXT)"
        )))
        .execute(&mut c)
        .await
        .unwrap();
        t0 = Instant::now();
        for i in 0..n {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {s}.t (v) VALUES ($1)"
            )))
            .bind(format!("{{\"i\":{i}}}"))
            .execute(&mut c)
            .await
            .unwrap();
        }
    } else {
        let sync = match a.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        };
        let path = db.url.trim_start_matches("sqlite://").to_owned();
        let (start, _) = tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(path).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.pragma_update(None, "synchronous", sync).unwrap();
            c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", [])
                .unwrap();
            let t0 = Instant::now();
            let mut stmt = c.prepare("INSERT INTO t (v) VALUES (?1)").unwrap();
            for i in 0..n {
                stmt.execute([format!("{{\"i\":{i}}}")]).unwrap();
            }
            (t0, ())
        })
        .await
        .unwrap();
        t0 = start;
    }
    let m = BTreeMap::from([("commits_per_s", n as f64 / t0.elapsed().as_secs_f64())]);
    db.drop().await;
    m
}

/// `--worker-mode W --db URL [--schema S] [--for-ms N]`: a worker process for one workload.
async fn worker_mode(args: Vec<String>) {
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .map(|i| args[i + 1].clone())
    };
    let w = get("--worker-mode").unwrap();
    let mut o = EngineOptions::default().url(get("--db").unwrap());
    if let Some(s) = get("--schema") {
        o = o.schema(s);
    }
    let engine = Engine::open_with(o).await.expect("open");
    let wk = Arc::new(worker(&engine, handlers(&w, &FirstStart::default())));
    let stats = match get("--for-ms") {
        None => wk.run_until_idle().await.unwrap(),
        Some(ms) => {
            let stop = wk.shutdown_handle();
            let w2 = wk.clone();
            let run = tokio::spawn(async move { w2.run().await });
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            stop.shutdown();
            run.await.unwrap().unwrap()
        }
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("0");
    println!(
        "statements={} completed={} vmhwm_kb={hwm}",
        engine.database_statements(),
        stats.completed
    );
}

/// PostgreSQL: worker cycles as one planned statement (default), or every cycle reading
/// first (`TASKER_PLANNED_CYCLES=0`, for comparison).
fn planned_cycles() -> bool {
    std::env::var("TASKER_PLANNED_CYCLES").as_deref() != Ok("0")
}

/// Lanes per worker (`TASKER_LANES`; unset: the engine's default, 2 on PostgreSQL, 1 on SQLite).
fn lanes() -> Option<usize> {
    std::env::var("TASKER_LANES")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// What the figures were measured with, and whether every commit was durable.
async fn conditions(a: &Args) -> (String, bool) {
    let prefetch = std::env::var("TASKER_PREFETCH").ok();
    let mut out = format!(
        "worker concurrency {CONCURRENCY}, prefetch {}, batch window 1 ms{}",
        match &prefetch {
            Some(p) => format!("{p} (TASKER_PREFETCH)"),
            None => "adaptive (default: 2-10x concurrency by handler pace)".into(),
        },
        if a.backend == "postgres" {
            if planned_cycles() {
                ", planned cycles on (default)"
            } else {
                ", planned cycles off (TASKER_PLANNED_CYCLES=0)"
            }
        } else {
            ""
        }
    );
    out += &match lanes() {
        Some(n) => format!(", {n} lanes (TASKER_LANES)"),
        None if a.backend == "postgres" => ", 2 lanes (default)".into(),
        None => ", 1 lane (default)".into(),
    };
    // Read from a fresh database by the engine itself: the conditions the figures get.
    let db = fresh_db(a);
    let engine = db.open(a.durability).await;
    let report = engine.durability().await.unwrap();
    drop(engine);
    db.drop().await;
    let durable = report.durable;
    out = format!("{}; {out}", report.description);
    (out, durable)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let raw: Vec<String> = std::env::args().collect();
    if raw.iter().any(|a| a == "--worker-mode") {
        worker_mode(raw).await;
        return;
    }
    let args = parse_args();
    let (conds, durable) = conditions(&args).await;
    eprintln!("# conditions: {conds}");
    if !durable && !args.allow_unsafe {
        die(&format!(
            "refusing to report figures measured without durable commits ({conds}); pass --allow-unsafe to measure anyway (they are then marked NOT DURABLE)"
        ));
    }
    let mut cells: Vec<String> = vec!["BASELINE".into()];
    cells.extend(args.workloads.iter().cloned());
    let mut results: BTreeMap<String, Vec<Metrics>> = BTreeMap::new();
    // Repetitions interleaved across cells, as the peers' harness does.
    for rep in 0..args.reps {
        for cell in &cells {
            let m = match cell.as_str() {
                "BASELINE" => baseline(&args).await,
                "W3" => latency(&args).await,
                "W6" => signal::signal_latency(&args).await,
                "RSS" => rss(&args).await,
                w => throughput(&args, w).await,
            };
            eprintln!("rep {} {cell}: {}", rep + 1, fmt(&m));
            results.entry(cell.clone()).or_default().push(m);
        }
    }
    let base = median(
        results["BASELINE"]
            .iter()
            .map(|m| m["commits_per_s"])
            .collect(),
    );
    println!(
        "# tasker-bench: {}, Rust no-op handlers, {} worker(s), medians of {} reps{}",
        args.backend,
        args.workers,
        args.reps,
        if durable { "" } else { " -- NOT DURABLE" }
    );
    println!("# conditions: {conds}");
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
            println!(
                "{cell} {k} {} [reps: {}]{ratio}",
                num(med),
                vals.iter().map(|v| num(*v)).collect::<Vec<_>>().join(", ")
            );
        }
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt(m: &Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", num(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}
