//! What the engine does per step, on 1,000-step DAGs (wide, deep, random): a task is created
//! and driven to completion through `Engine::report` (outcomes + claim in one transaction, as
//! the host driver does) with no-op outcomes. This is the engine's own readiness path: the
//! counter decrements and the claim query, on embedded SQLite with `synchronous=OFF` so the
//! figure is the engine's CPU, not the disk. Also template validation of the same DAGs.
//!
//! `cargo bench -p tasker-core --bench engine`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use tasker_core::template::{Definition, StepDefinition, TaskTemplate};
use tasker_core::{Claim, Durability, Engine, EngineOptions, Outcome, Report, TaskRequest};

const N: usize = 1000;

/// Edges (parent, child) of a shape.
fn shape(name: &str) -> Vec<(usize, usize)> {
    match name {
        // one root, 998 steps in parallel, one join
        "wide" => (1..N - 1).flat_map(|i| [(0, i), (i, N - 1)]).collect(),
        // a chain
        "deep" => (1..N).map(|i| (i - 1, i)).collect(),
        // each step depends on up to 3 earlier steps, chosen by a fixed LCG
        _ => {
            let mut x: u64 = 42;
            let mut next = || {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as usize
            };
            let mut edges = Vec::new();
            for i in 1..N {
                let k = next() % 4;
                let mut ps: Vec<usize> = (0..k).map(|_| next() % i).collect();
                ps.sort();
                ps.dedup();
                edges.extend(ps.into_iter().map(|p| (p, i)));
            }
            edges
        }
    }
}

fn definition(name: &str, edges: &[(usize, usize)]) -> Definition {
    let mut deps = vec![Vec::new(); N];
    for &(p, c) in edges {
        deps[c].push(format!("s{p}"));
    }
    Definition {
        name: name.into(),
        namespace: "default".into(),
        version: "1.0.0".into(),
        description: None,
        schema: None,
        custom_events: Vec::new(),
        compat: Default::default(),
        steps: (0..N)
            .map(|i| StepDefinition {
                name: format!("s{i}"),
                description: None,
                handler: "h".into(),
                handler_config: json!({}),
                depends_on: std::mem::take(&mut deps[i]),
                retryable: true,
                retry_limit: 3,
                skippable: false,
                backoff: Default::default(),
                timeout_seconds: None,
                kind: Default::default(),
                batch_config: None,
            })
            .collect(),
    }
}

/// Creates one task and completes every step, 10 claimed per transaction as a worker at
/// concurrency 10 would; returns the steps run.
async fn run_task(engine: &Engine, name: &str) -> usize {
    let id = engine
        .create_task(TaskRequest::new(name, json!({})))
        .await
        .unwrap();
    let claim = Claim {
        worker_id: "bench".into(),
        max: 10,
        handlers: None,
    };
    let mut reports = Vec::new();
    let mut done = 0;
    loop {
        let jobs = engine.report(&reports, Some(&claim)).await.unwrap().jobs;
        reports.clear();
        if jobs.is_empty() {
            break;
        }
        done += jobs.len();
        reports.extend(jobs.into_iter().map(|j| Report {
            key: j.key,
            outcome: Outcome::Complete(Value::Null),
        }));
    }
    assert_eq!(
        engine.get_task_state(id).await.unwrap().as_str(),
        "complete"
    );
    done
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt
        .block_on(Engine::open_with(
            EngineOptions::default()
                .url(format!(
                    "sqlite://{}",
                    dir.path().join("bench.db").display()
                ))
                .durability(Durability::Off),
        ))
        .unwrap();
    for name in ["wide", "deep", "random"] {
        let edges = shape(name);
        let def = definition(name, &edges);
        rt.block_on(engine.register_template(TaskTemplate::from_definition(def.clone()).unwrap()))
            .unwrap();
        let mut g = c.benchmark_group(format!("engine_1000_steps/{name}"));
        // Per completed step: criterion reports elements/s.
        g.throughput(Throughput::Elements(N as u64));
        g.sample_size(10);
        g.bench_function("create_and_complete_every_step", |b| {
            b.iter(|| assert_eq!(rt.block_on(run_task(&engine, name)), N))
        });
        g.finish();
        c.bench_function(&format!("template_validate_1000/{name}"), |b| {
            b.iter(|| TaskTemplate::from_definition(def.clone()).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
