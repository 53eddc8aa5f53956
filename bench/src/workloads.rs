//! The workloads of `shared/bench/README.md` (W1-W4, RSS) and Tasker's own W5 (a fan-out of
//! 1,000 instances into one convergence): their templates, Rust no-op handlers (the last step
//! of W2, W4 and W5 checks its inputs) and submission.

use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;
use tasker_core::{Batches, Engine, HandlerError, Registry, TaskRequest};

use crate::FirstStart;

pub const CHAIN_LEN: usize = 100;

/// W5: the items one fan-out creates: 1,000, or `TASKER_BENCH_FAN_OUT_ITEMS` (up to the
/// default limit of 10,000, for the memory check).
pub fn fan_out_items() -> usize {
    std::env::var("TASKER_BENCH_FAN_OUT_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// W5: steps per task (the batchable step, its instances, the convergence).
pub fn fan_out_steps() -> usize {
    fan_out_items() + 2
}

/// The workload's templates.
pub fn templates(w: &str) -> Vec<String> {
    match w {
        "W1" | "W3" | "RSS" => vec!["name: job\nstep_templates:\n  - {name: noop}\n".into()],
        "W2" => vec!["name: diamond\nstep_templates:\n  - {name: A}\n  - {name: B, depends_on_step: A}\n  - {name: C, depends_on_step: A}\n  - {name: D, depends_on_steps: [B, C]}\n".into()],
        "W4" => {
            let mut y = String::from("name: chain\nstep_templates:\n  - {name: s1, handler_class: step}\n");
            for k in 2..=CHAIN_LEN {
                y.push_str(&format!("  - {{name: s{k}, handler_class: step, depends_on_step: s{}}}\n", k - 1));
            }
            vec![y]
        }
        "W5" => vec!["name: fan\nsteps:\n  - {name: plan, type: batchable}\n  - {name: work, type: batch_worker, dependencies: [plan]}\n  - {name: total, type: deferred_convergence, dependencies: [work]}\n".into()],
        _ => unreachable!(),
    }
}

/// The workload's no-op handlers (W2's D and W4's last step check their inputs).
pub fn handlers(w: &str, first: &FirstStart) -> Registry {
    let mut reg = Registry::new();
    let f = first.clone();
    match w {
        "W1" | "W3" | "RSS" => {
            reg.register_fn("noop", move |_| {
                f.mark();
                async { Ok(json!({"ok": true})) }
            });
        }
        "W2" => {
            reg.register_fn("A", move |s| {
                f.mark();
                async move { Ok(json!({"wf": s.context["wf"], "a": 1})) }
            });
            reg.register_fn("B", |s| async move {
                Ok(json!({"wf": s.results["A"]["wf"], "b": 2}))
            });
            reg.register_fn("C", |s| async move {
                Ok(json!({"wf": s.results["A"]["wf"], "c": 3}))
            });
            reg.register_fn("D", |s| async move {
                if s.results["B"]["b"] != 2
                    || s.results["C"]["c"] != 3
                    || s.results["B"]["wf"] != s.context["wf"]
                {
                    return Err(HandlerError::permanent(format!(
                        "D saw wrong inputs: {:?}",
                        s.results
                    )));
                }
                Ok(json!({"wf": s.context["wf"], "d": 4}))
            });
        }
        "W4" => {
            reg.register_fn("step", move |s| {
                f.mark();
                async move {
                    let x = s
                        .results
                        .values()
                        .next()
                        .map(|v| v["x"].as_i64().unwrap())
                        .unwrap_or(0)
                        + 1;
                    if s.step_name == format!("s{CHAIN_LEN}") && x != CHAIN_LEN as i64 {
                        return Err(HandlerError::permanent(format!("chain ended at x = {x}")));
                    }
                    Ok(json!({"x": x}))
                }
            });
        }
        "W5" => fan_out_handlers(&mut reg, f),
        "W6" => crate::signal::handlers(&mut reg),
        _ => unreachable!(),
    }
    reg
}

/// When each W5 fan-out returned its items, by task, and the gaps measured so far (ms) from
/// that to its first instance's start: the transaction that records the fan-out and creates
/// the instances, plus the claim that hands out the first.
static FAN_OUTS: Mutex<(Vec<(i64, Instant)>, Vec<f64>)> = Mutex::new((Vec::new(), Vec::new()));

/// One W5 task alone on an idle worker: ms from its fan-out's handler returning 1,000 items to
/// the first instance's start (the transaction that records the fan-out and inserts the
/// instances, then the claim that hands out the first).
pub async fn one_fan_out_ms(engine: &Engine, worker: tasker_core::Worker) -> f64 {
    {
        let mut g = FAN_OUTS.lock().unwrap();
        g.0.clear();
        g.1.clear();
    }
    engine
        .create_task(TaskRequest::new("fan", json!({"wf": -1})))
        .await
        .unwrap();
    worker.run_until_idle().await.unwrap();
    let gaps = std::mem::take(&mut FAN_OUTS.lock().unwrap().1);
    assert_eq!(gaps.len(), 1, "one fan-out measured");
    gaps[0]
}

fn fan_out_handlers(reg: &mut Registry, f: FirstStart) {
    reg.register_fn("plan", move |s| {
        f.mark();
        let items = (0..fan_out_items()).map(|i| json!({"i": i}));
        let out = Batches::new(items)
            .results(json!({"wf": s.context["wf"]}))
            .into_value();
        FAN_OUTS
            .lock()
            .unwrap()
            .0
            .push((s.task_id(), Instant::now()));
        async move { Ok(out) }
    });
    reg.register_fn("work", |s| {
        let mut g = FAN_OUTS.lock().unwrap();
        if let Some(k) = g.0.iter().position(|(t, _)| *t == s.task_id()) {
            let (_, at) = g.0.swap_remove(k);
            g.1.push(at.elapsed().as_secs_f64() * 1000.0);
        }
        drop(g);
        async move { Ok(json!({"i": s.batch.as_ref().map(|b| b["i"].clone())})) }
    });
    reg.register_fn("total", |s| async move {
        let list = s.results["work"].as_array().cloned().unwrap_or_default();
        let in_order = list.iter().enumerate().all(|(i, r)| r["i"] == json!(i));
        if list.len() != fan_out_items() || !in_order {
            return Err(HandlerError::permanent(format!(
                "the convergence saw {} entries (in order: {in_order})",
                list.len()
            )));
        }
        Ok(json!({"n": list.len()}))
    });
}

/// Submits the workload's tasks; returns (count of steps, submit seconds).
pub async fn submit(w: &str, engine: &Engine, scale: f64) -> (usize, f64) {
    for t in templates(w) {
        engine.register_template_yaml(&t).await.unwrap();
    }
    let t0 = Instant::now();
    let steps = match w {
        "W1" | "RSS" => {
            let n = if w == "RSS" {
                100_000
            } else {
                (20_000.0 * scale) as usize
            };
            for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
                let reqs = chunk
                    .iter()
                    .map(|i| TaskRequest::new("job", json!({"i": i})))
                    .collect();
                engine.create_tasks(reqs).await.unwrap();
            }
            n
        }
        "W2" => {
            let n = (2_000.0 * scale) as usize;
            for i in 0..n {
                engine
                    .create_task(TaskRequest::new("diamond", json!({"wf": i})))
                    .await
                    .unwrap();
            }
            4 * n
        }
        "W4" => {
            let n = ((20.0 * scale) as usize).max(1);
            for i in 0..n {
                engine
                    .create_task(TaskRequest::new("chain", json!({"wf": i})))
                    .await
                    .unwrap();
            }
            n * CHAIN_LEN
        }
        "W5" => {
            let n = ((5.0 * scale) as usize).max(1);
            for i in 0..n {
                engine
                    .create_task(TaskRequest::new("fan", json!({"wf": i})))
                    .await
                    .unwrap();
            }
            n * fan_out_steps()
        }
        _ => unreachable!(),
    };
    (steps, t0.elapsed().as_secs_f64())
}
