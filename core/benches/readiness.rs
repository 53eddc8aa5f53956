//! In-memory readiness over 1,000-step DAGs (wide, deep, random): the full computation and the
//! update after each completed step. Also template validation (petgraph DAG, cycle check) of
//! the same DAGs.
//!
//! `cargo bench -p tasker-core --bench readiness`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use tasker_core::readiness::Readiness;
use tasker_core::template::{Definition, StepDefinition, TaskTemplate};

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

fn definition(edges: &[(usize, usize)]) -> Definition {
    let mut deps = vec![Vec::new(); N];
    for &(p, c) in edges {
        deps[c].push(format!("s{p}"));
    }
    Definition {
        name: "bench".into(),
        namespace: "default".into(),
        version: "1.0.0".into(),
        description: None,
        schema: None,
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
            })
            .collect(),
    }
}

/// Completes every step in the order readiness releases them.
fn run_to_completion(edges: &[(usize, usize)]) -> usize {
    let (mut r, mut ready) = Readiness::from_edges(N, edges.iter().copied());
    let mut done = 0;
    let mut next = Vec::new();
    while let Some(s) = ready.pop() {
        r.complete(s, &mut next);
        ready.append(&mut next);
        done += 1;
    }
    assert!(r.is_complete());
    done
}

fn bench(c: &mut Criterion) {
    for name in ["wide", "deep", "random"] {
        let edges = shape(name);
        let mut g = c.benchmark_group(format!("readiness_1000/{name}"));
        g.bench_function("full_computation", |b| {
            b.iter(|| Readiness::from_edges(N, edges.iter().copied()))
        });
        // Per completed step: divide by 1,000 (criterion reports it as elements/s).
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function(BenchmarkId::new("complete_every_step", N), |b| {
            b.iter(|| run_to_completion(&edges))
        });
        g.finish();
        let def = definition(&edges);
        c.bench_function(&format!("template_validate_1000/{name}"), |b| {
            b.iter(|| TaskTemplate::from_definition(def.clone()).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
