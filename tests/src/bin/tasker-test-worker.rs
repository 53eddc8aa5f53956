//! A worker process for the multi-process tests: diamond handlers A, B, C, D and fan-out
//! handlers plan, work, total that record every run (start and end, with pid and time) in an
//! append-only log, so the tests can prove that no step ran twice at the same time and that
//! attempts match runs. `work` runs four chunks, saving a checkpoint after each, and resumes
//! from the last one saved. `spawn` (a fan-out instance) runs a `leaf_task` child task per
//! item, whose `leaf` steps double it; `gather` checks the children's results. `gate` waits
//! for signal `open` (after sleeping, so a signal may come before or after it waits); `after`
//! records what it got.
//!
//! tasker-test-worker --db URL [--schema S] --log FILE [--worker-id ID] [--lease-ms N]
//!                    [--concurrency N] [--sleep-ms N] [--prefetch N]
//!
//! Runs until nothing is left to do anywhere, or until SIGTERM/SIGINT (graceful: in-flight
//! steps finish). Exits 0.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tasker_core::{
    Batches, ChildTask, Engine, EngineOptions, HandlerError, Registry, Worker, WorkerOptions,
};

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

struct Log(std::fs::File);

impl Log {
    fn line(&self, what: &str, step: &tasker_core::StepContext) {
        let line = format!(
            "{what} {} {} {} {} {}\n",
            step.task_id(),
            step.step_name,
            step.attempt(),
            std::process::id(),
            now_us()
        );
        // One write(2) per line on an O_APPEND file: lines from many processes never interleave.
        (&self.0).write_all(line.as_bytes()).expect("log write");
    }

    /// `ckpt task step attempt pid chunks`: a checkpoint saved (written after the save).
    fn checkpoint(&self, step: &tasker_core::StepContext, chunks: i64) {
        let line = format!(
            "ckpt {} {} {} {} {chunks}\n",
            step.task_id(),
            step.step_name,
            step.attempt(),
            std::process::id(),
        );
        (&self.0).write_all(line.as_bytes()).expect("log write");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let db = arg("--db").expect("--db URL");
    let log_path = arg("--log").expect("--log FILE");
    let lease_ms: u64 = arg("--lease-ms")
        .map(|v| v.parse().unwrap())
        .unwrap_or(30_000);
    let sleep_ms: u64 = arg("--sleep-ms").map(|v| v.parse().unwrap()).unwrap_or(0);
    let concurrency: usize = arg("--concurrency")
        .map(|v| v.parse().unwrap())
        .unwrap_or(8);
    let prefetch: Option<usize> = arg("--prefetch").map(|v| v.parse().unwrap());
    let mut opts = EngineOptions::default()
        .url(db)
        .lease(Duration::from_millis(lease_ms));
    if let Some(s) = arg("--schema") {
        opts = opts.schema(s);
    }
    let engine = Engine::open_with(opts).await.expect("open engine");
    let log = Arc::new(Log(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open log")));
    let mut reg = Registry::new();
    for name in ["A", "B", "C", "D"] {
        let log = log.clone();
        reg.register_fn(name, move |step| {
            let log = log.clone();
            async move {
                log.line("start", &step);
                if sleep_ms > 0 {
                    let jitter =
                        (step.key.step_id as u64 * 7919 + step.attempt() as u64) % (sleep_ms + 1);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                let out = match step.step_name.as_str() {
                    "A" => json!({"wf": step.context["wf"], "a": 1}),
                    "B" => json!({"b": step.results["A"]["a"].as_i64().unwrap() + 1}),
                    "C" => json!({"c": step.results["A"]["a"].as_i64().unwrap() + 2}),
                    _ => {
                        let (b, c) = (&step.results["B"]["b"], &step.results["C"]["c"]);
                        if *b != 2 || *c != 3 {
                            return Err(HandlerError::permanent(format!("D saw b={b} c={c}")));
                        }
                        json!({"d": 5})
                    }
                };
                log.line("end", &step);
                Ok(out)
            }
        });
    }
    fan_out_handlers(&mut reg, &engine, &log, sleep_ms);
    child_task_handlers(&mut reg, &log, sleep_ms);
    wait_handlers(&mut reg, &log, sleep_ms);
    let worker = Arc::new(Worker::new(
        engine,
        reg,
        WorkerOptions {
            concurrency,
            prefetch,
            worker_id: arg("--worker-id").unwrap_or_else(Engine::new_worker_id),
            ..Default::default()
        },
    ));
    let stop = worker.shutdown_handle();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.shutdown();
    });
    // `--forever`: until SIGTERM/SIGINT (or kill -9), firing schedules meanwhile.
    let stats = if std::env::args().any(|a| a == "--forever") {
        worker.run().await
    } else {
        worker.run_until_idle().await
    }
    .expect("worker run");
    eprintln!("worker {} done: {stats:?}", std::process::id());
}

/// `gate` sleeps up to `sleep_ms`, then waits for signal `open`; `after` echoes its results.
fn wait_handlers(reg: &mut Registry, log: &Arc<Log>, sleep_ms: u64) {
    let l = log.clone();
    reg.register_fn("gate", move |step| {
        let l = l.clone();
        async move {
            l.line("start", &step);
            let jitter = (step.key.task_id as u64 * 7919) % (sleep_ms + 1);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
            l.line("end", &step);
            Ok(tasker_core::Wait::signal("open").into_value())
        }
    });
    let l = log.clone();
    reg.register_fn("after", move |step| {
        let l = l.clone();
        async move {
            l.line("start", &step);
            l.line("end", &step);
            Ok(json!({"got": step.results["gate"]}))
        }
    });
}

/// `spawn` asks for a `leaf_task` child with its item; the child's `leaf` and `leaf2` double
/// it and add one; `gather` checks every entry (one child per item, in order).
fn child_task_handlers(reg: &mut Registry, log: &Arc<Log>, sleep_ms: u64) {
    let l = log.clone();
    reg.register_fn("spawn", move |step| {
        let l = l.clone();
        async move {
            l.line("start", &step);
            let n = step.batch.as_ref().unwrap()["item"].clone();
            l.line("end", &step);
            Ok(ChildTask::new("leaf_task", json!({"n": n})).into_value())
        }
    });
    for name in ["leaf", "leaf2"] {
        let l = log.clone();
        reg.register_fn(name, move |step| {
            let l = l.clone();
            async move {
                l.line("start", &step);
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
                let n = step.context["n"].as_i64().unwrap();
                let out = match step.step_name.as_str() {
                    "leaf" => json!({"doubled": n * 2}),
                    _ => json!({"plus_one": step.results["leaf"]["doubled"].as_i64().unwrap() + 1}),
                };
                l.line("end", &step);
                Ok(out)
            }
        });
    }
    reg.register_fn("gather", |step| async move {
        let list = step.results["spawn"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, e) in list.iter().enumerate() {
            let got = &e["results"]["leaf2"]["plus_one"];
            if e["status"] != "complete" || *got != json!(i as i64 * 2 + 1) {
                return Err(HandlerError::permanent(format!("entry {i} is wrong: {e}")));
            }
        }
        Ok(json!({"entries": list.len()}))
    });
}

/// The chunks each fan-out instance runs.
const CHUNKS: i64 = 4;

/// `plan` fans out `context.items` items; `work` runs [`CHUNKS`] chunks from its checkpoint,
/// saving one after each; `total` checks the list it gathers (one entry per item, in order).
fn fan_out_handlers(reg: &mut Registry, engine: &Engine, log: &Arc<Log>, sleep_ms: u64) {
    reg.register_fn("plan", |step| async move {
        let n = step.context["items"].as_i64().unwrap();
        Ok(Batches::new((0..n).map(|i| json!({"item": i}))).into_value())
    });
    let (engine, log) = (engine.clone(), log.clone());
    reg.register_fn("work", move |step| {
        let (engine, log) = (engine.clone(), log.clone());
        async move {
            log.line("start", &step);
            let from = step
                .checkpoint
                .as_ref()
                .map_or(0, |c| c["chunks"].as_i64().unwrap());
            for done in from + 1..=CHUNKS {
                tokio::time::sleep(Duration::from_millis(sleep_ms / CHUNKS as u64)).await;
                engine
                    .save_checkpoint(&step.key, &json!({"chunks": done}))
                    .await
                    .map_err(|e| HandlerError::retryable(e.to_string()))?;
                log.checkpoint(&step, done);
            }
            log.line("end", &step);
            Ok(json!({
                "item": step.batch.as_ref().unwrap()["item"],
                "resumed_from": from,
                "ran": CHUNKS - from,
            }))
        }
    });
    reg.register_fn("total", |step| async move {
        let list = step.results["work"].as_array().cloned().unwrap_or_default();
        for (i, e) in list.iter().enumerate() {
            if e["item"] != json!(i)
                || e["resumed_from"].as_i64().unwrap() + e["ran"].as_i64().unwrap() != CHUNKS
            {
                return Err(HandlerError::permanent(format!("entry {i} is wrong: {e}")));
            }
        }
        let resumed = list
            .iter()
            .filter(|e| e["resumed_from"].as_i64().unwrap() > 0)
            .count();
        Ok(json!({"entries": list.len(), "resumed": resumed}))
    });
}
