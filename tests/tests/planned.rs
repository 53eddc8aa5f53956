//! Planned cycles (issue 13): on PostgreSQL a worker cycle is decided from the rows the engine
//! already knows and sent as one statement, guarded by what it assumed. These scenarios hold
//! the planned path to the general one: the same rows, transitions and events either way, and
//! a plan made from knowledge that went stale is refused (nothing written) and recorded the
//! general way. On SQLite both engines take the general path, so the comparison still runs.

use serde_json::{json, Value};
use tasker_conformance::{backend, Harness};
use tasker_core::{Claim, Outcome, Registry, Report, StepState, TaskRequest, TaskState};

/// A diamond whose last step returns what its parents returned, twice over (two tasks), and a
/// three-step chain.
const DIAMOND: &str = r#"
name: planned_diamond
step_templates:
  - {name: a}
  - {name: b, depends_on_step: a}
  - {name: c, depends_on_step: a}
  - {name: d, depends_on_steps: [b, c]}
"#;

const CHAIN: &str = r#"
name: planned_chain
step_templates:
  - {name: x, skippable: true}
  - {name: y, depends_on_step: x}
  - {name: z, depends_on_step: y}
"#;

/// Every step skippable: a task bypassing both is complete when created.
const SKIPPABLE: &str = r#"
name: planned_skippable
step_templates:
  - {name: p, skippable: true}
  - {name: q, skippable: true, depends_on_step: p}
"#;

fn handlers() -> Registry {
    let mut r = Registry::new();
    for n in ["a", "b", "c", "x", "y", "z"] {
        r.register_fn(n, move |job| async move {
            Ok(json!({"step": job.step_name, "seen": job.results}))
        });
    }
    r.register_fn(
        "d",
        |job| async move { Ok(json!({"parents": job.results})) },
    );
    r
}

/// Everything a run leaves behind that does not depend on ids or the wall clock: per task, the
/// task's state, each step's state, attempts and results, and every transition row (from, to,
/// metadata, order within its task or step).
async fn footprint(h: &Harness, ids: &[i64]) -> Vec<Value> {
    let mut out = Vec::new();
    for &id in ids {
        let t = h.engine.get_task(id).await.unwrap();
        let steps: Vec<Value> = t
            .steps
            .iter()
            .map(|s| json!([s.name, s.status, s.attempts, s.results]))
            .collect();
        let mut transitions: Vec<Value> = h
            .engine
            .transitions(id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                let step = r
                    .step_id
                    .map(|sid| t.steps.iter().find(|s| s.id == sid).unwrap().name.clone());
                let meta: Value = serde_json::from_str(&r.metadata).unwrap();
                json!([step, r.from_state, r.to_state, meta, r.sort_key])
            })
            .collect();
        // Each task's and step's own history, in order. (Within one cycle, rows of different
        // steps are inserted in a different order by the two paths: the general one claims
        // before its last write, a plan writes its outcomes and then claims.)
        transitions.sort_by_key(|t| (t[0].as_str().unwrap_or("").to_owned(), t[4].as_i64()));
        out.push(json!({"state": t.status, "steps": steps, "transitions": transitions}));
    }
    out
}

async fn run(planned: bool) -> (Vec<Value>, Vec<String>, (u64, u64)) {
    let h = Harness::with(|o| o.planned_cycles(planned)).await;
    h.register(DIAMOND).await;
    h.register(CHAIN).await;
    h.register(SKIPPABLE).await;
    let mut events = h.engine.subscribe();
    let mut ids = Vec::new();
    for (name, n) in [
        ("planned_diamond", 1),
        ("planned_chain", 2),
        ("planned_diamond", 3),
    ] {
        ids.push(
            h.engine
                .create_task(TaskRequest::new(name, json!({"n": n})))
                .await
                .unwrap(),
        );
    }
    // A batch in one creation: a bypassed step, a task complete on arrival, and a keyed
    // request (a look-up first: created the general way).
    ids.extend(
        h.engine
            .create_tasks(vec![
                TaskRequest::new("planned_chain", json!({"n": 4})).bypass(&["x"]),
                TaskRequest::new("planned_skippable", json!({})).bypass(&["p", "q"]),
            ])
            .await
            .unwrap(),
    );
    let keyed = TaskRequest::new("planned_chain", json!({"n": 5})).idempotency_key("k5");
    ids.push(h.engine.create_task(keyed.clone()).await.unwrap());
    assert_eq!(
        h.engine.create_task_once(keyed).await.unwrap(),
        (ids[5], false)
    );
    // Claim-only first (a cycle with nothing to report), then outcomes with the next claims.
    assert_eq!(h.drive(&handlers()).await, 4 + 3 + 4 + 2 + 3);
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(format!(
            "{} {} {:?} {:?}->{:?}",
            e.name, e.task_id, e.step_name, e.from_state, e.to_state
        ));
    }
    (footprint(&h, &ids).await, seen, h.engine.planned_cycles())
}

#[tokio::test]
async fn a_planned_run_leaves_exactly_what_the_general_path_leaves() {
    let (general, general_events, (g_planned, _)) = run(false).await;
    let (planned, planned_events, (p_planned, p_refused)) = run(true).await;
    assert_eq!(planned[4]["state"], "complete", "complete on arrival");
    assert_eq!(g_planned, 0, "planning was off");
    if backend() == "postgres" {
        assert!(
            p_planned >= 3,
            "cycles after the first claim are planned on PostgreSQL (planned {p_planned}, refused {p_refused})"
        );
    }
    assert_eq!(planned, general, "rows and transitions differ");
    assert_eq!(planned_events, general_events, "events differ");
    // The parents' results reach d whichever path claimed it (PostgreSQL returns them with the
    // claim itself).
    let d = &planned[0]["steps"][3];
    assert_eq!(d[0], "d");
    assert_eq!(d[3]["parents"]["b"]["step"], "b");
    assert_eq!(d[3]["parents"]["c"]["step"], "c");
    assert!(planned.iter().all(|t| t["state"] == json!("complete")));
}

#[tokio::test]
async fn an_outcome_planned_from_a_task_changed_elsewhere_is_refused_and_recorded_the_general_way()
{
    let h = Harness::new().await;
    h.register(DIAMOND).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("planned_diamond", json!({})))
        .await
        .unwrap();
    let claim = Claim {
        worker_id: "w".into(),
        max: 10,
        handlers: None,
    };
    let a = h.claim("w", 10).await;
    assert_eq!(a.len(), 1);
    let report = |job: &tasker_core::Job| Report {
        key: job.key,
        outcome: Outcome::Complete(json!({"ok": job.step_name})),
    };
    let bc = h
        .engine
        .report(&[report(&a[0])], Some(&claim))
        .await
        .unwrap()
        .jobs;
    assert_eq!(bc.len(), 2);
    // Another process cancels the task while b and c run: what this engine knows of the task
    // is now stale.
    h.reopen().await.cancel_task(id).await.unwrap();
    let before = h.engine.planned_cycles();
    let cycle = h
        .engine
        .report(&[report(&bc[0]), report(&bc[1])], Some(&claim))
        .await
        .unwrap();
    assert!(cycle.stale.is_empty() && cycle.jobs.is_empty());
    if backend() == "postgres" {
        let after = h.engine.planned_cycles();
        assert_eq!(after.1, before.1 + 1, "the stale plan was refused");
    }
    // Recorded by the general path: the results are kept, the cancelled task does not go on.
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Cancelled);
    for n in ["b", "c"] {
        let s = t.step(n).unwrap();
        assert_eq!(
            (s.status, s.results.clone()),
            (StepState::Complete, json!({"ok": n}))
        );
    }
    assert_eq!(t.step("d").unwrap().status, StepState::Cancelled);
    // And the next cycle is planned again from what the general path left known.
    let again = h.engine.planned_cycles();
    h.claim("w", 10).await;
    if backend() == "postgres" {
        assert_eq!(h.engine.planned_cycles().0, again.0 + 1);
    }
}
