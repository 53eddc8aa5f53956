//! W6 (Tasker's own, issue 26): signal latency. One task at a time whose first step waits for
//! signal `go`; once it waits, `Engine::signal` is called, and the figure is the time from
//! `signal()` returning to the next step's handler starting, in the same process (one engine,
//! one in-process worker: it does not measure a signal sent from another process).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tasker_core::{Registry, StepState, TaskRequest, TaskState, Wait};

use super::{fresh_db, worker, Args, Metrics};

const GATED: &str =
    "name: gated\nsteps:\n  - {name: gate}\n  - {name: after, dependencies: [gate]}\n";

pub async fn signal_latency(a: &Args) -> Metrics {
    let db = fresh_db(a);
    let engine = db.open(a.durability).await;
    engine.register_template_yaml(GATED).await.unwrap();
    let started: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut reg = Registry::new();
    reg.register_fn("gate", |_| async { Ok(Wait::signal("go").into_value()) });
    let s = started.clone();
    reg.register_fn("after", move |_| {
        *s.lock().unwrap() = Some(Instant::now());
        async { Ok(json!({"ok": true})) }
    });
    let w = Arc::new(worker(&engine, reg));
    let stop = w.shutdown_handle();
    let w2 = w.clone();
    let run = tokio::spawn(async move { w2.run().await });
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
        *started.lock().unwrap() = None;
        let t0 = Instant::now();
        assert_eq!(engine.signal(id, "go", json!(null)).await.unwrap(), 1);
        let t1 = Instant::now();
        let t = engine
            .wait_for_task(id, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(t.status, TaskState::Complete);
        let at = started.lock().unwrap().expect("after ran");
        if i >= 10 {
            lat.push(at.saturating_duration_since(t1).as_secs_f64() * 1000.0);
            signal_ms.push((t1 - t0).as_secs_f64() * 1000.0);
        }
    }
    stop.shutdown();
    run.await.unwrap().unwrap();
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
