//! W6 (Tasker's own, issue 26): signal latency. One task at a time whose first step waits for
//! signal `go`; once it waits, `Engine::signal` is called, and the figure is the time from
//! `signal()` returning to the next step's handler starting. With `--workers 1` the worker runs
//! in the measuring process (one engine); with more, in that many other processes (the signal
//! then reaches them through the database: on PostgreSQL LISTEN/NOTIFY). Both ends read the
//! wall clock of this one machine: the handler returns when it started.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tasker_core::{Registry, StepState, TaskRequest, TaskState, Wait};

use super::{fresh_db, spawn_worker, worker, Args, Metrics};

const GATED: &str =
    "name: gated\nsteps:\n  - {name: gate}\n  - {name: after, dependencies: [gate]}\n";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64
}

/// `gate` waits for signal `go`; `after` returns when it started (epoch microseconds).
pub fn handlers(reg: &mut Registry) {
    reg.register_fn("gate", |_| async { Ok(Wait::signal("go").into_value()) });
    reg.register_fn("after", |_| {
        let at = now_us();
        async move { Ok(json!({"started_us": at})) }
    });
}

pub async fn signal_latency(a: &Args) -> Metrics {
    let db = fresh_db(a);
    let engine = db.open(a.durability).await;
    engine.register_template_yaml(GATED).await.unwrap();
    let mut children = Vec::new();
    let mut local = None;
    if a.workers <= 1 {
        let mut reg = Registry::new();
        handlers(&mut reg);
        let w = Arc::new(worker(&engine, reg));
        let stop = w.shutdown_handle();
        let w2 = w.clone();
        local = Some((stop, tokio::spawn(async move { w2.run().await })));
    } else {
        for i in 0..a.workers {
            children.push(spawn_worker(a, &db, "W6", i, Some(600_000)));
        }
    }
    let n = ((200.0 * a.scale) as usize).max(10);
    let mut lat = Vec::with_capacity(n);
    let mut signal_ms = Vec::with_capacity(n);
    for i in 0..(n + 10) {
        let id = engine
            .create_task(TaskRequest::new("gated", json!({"i": i})))
            .await
            .unwrap();
        // Until its gate waits (polled: not part of the figure).
        loop {
            let t = engine.get_task(id).await.unwrap();
            if t.step("gate").unwrap().status == StepState::Waiting {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let t0 = now_us();
        assert_eq!(engine.signal(id, "go", json!(null)).await.unwrap(), 1);
        let t1 = now_us();
        let t = engine
            .wait_for_task(id, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(t.status, TaskState::Complete);
        let at = t.step("after").unwrap().results["started_us"]
            .as_u64()
            .expect("after ran");
        if i >= 10 {
            lat.push((at as f64 - t1 as f64) / 1000.0);
            signal_ms.push((t1 - t0) as f64 / 1000.0);
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
    signal_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct =
        |v: &[f64], p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let m = Metrics::from([
        ("signal_to_next_step_p50_ms", pct(&lat, 50.0)),
        ("signal_to_next_step_p99_ms", pct(&lat, 99.0)),
        ("signal_call_p50_ms", pct(&signal_ms, 50.0)),
    ]);
    drop(engine);
    db.drop().await;
    m
}
