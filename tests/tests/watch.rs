//! Waiting for a task (issue 13, W3): the cycle of this process that finishes a watched task
//! hands it to the waiter with its answer, so the waiter does not read it again after the
//! commit. What the waiter gets must be exactly what `get_task` shows afterwards. Both
//! backends; only PostgreSQL (cycles as one statement) hands over, SQLite's waiters read.

use std::time::{Duration, Instant};

use serde_json::json;
use tasker_conformance::{backend, Harness};
use tasker_core::{Job, Outcome, Report, StepFailure, TaskRequest, TaskSnapshot, TaskState};

const CHAIN: &str = r#"
name: watched_chain
step_templates:
  - {name: first}
  - {name: second, depends_on_steps: [first], default_retry_limit: 1}
"#;

fn done(job: &Job, results: serde_json::Value) -> Report {
    Report {
        key: job.key,
        outcome: Outcome::Complete(results),
    }
}

/// Starts `n` waiters on `id` and returns once all are registered.
async fn waiters(
    h: &Harness,
    id: i64,
    n: usize,
) -> Vec<tokio::task::JoinHandle<tasker_core::Result<TaskSnapshot>>> {
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let e = h.engine.clone();
            tokio::spawn(async move { e.wait_for_task(id, Some(Duration::from_secs(10))).await })
        })
        .collect();
    let t0 = Instant::now();
    // One entry per task, whatever the number of waiters: wait for the first, then give the
    // others time to register too (they run on the same runtime).
    while h.engine.watched_tasks() != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no waiter registered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    hs
}

/// A new chain task with `first` run: its id and `second`'s job, claimed in the cycle that
/// reported `first`.
async fn chain_at_second(h: &Harness, context: serde_json::Value) -> (i64, Job) {
    h.register(CHAIN).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("watched_chain", context))
        .await
        .unwrap();
    (id, up_to_second(h, id).await)
}

/// Runs `first`, then returns `second`'s job, claimed in the cycle that reported `first`.
async fn up_to_second(h: &Harness, id: i64) -> Job {
    let first = h.claim("w", 4).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].task_id(), id);
    let claim = tasker_core::Claim {
        worker_id: "w".into(),
        max: 4,
        handlers: None,
    };
    let cycle = h
        .engine
        .report(&[done(&first[0], json!({"x": 1}))], Some(&claim))
        .await
        .unwrap();
    assert_eq!(cycle.jobs.len(), 1);
    assert_eq!(cycle.jobs[0].step_name, "second");
    cycle.jobs.into_iter().next().unwrap()
}

fn expected_handovers(waits: u64) -> u64 {
    if backend() == "postgres" {
        waits
    } else {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_task_take_it_from_the_cycle_that_finished_it() {
    let h = Harness::new().await;
    let (id, second) = chain_at_second(&h, json!({"n": 7})).await;
    let ws = waiters(&h, id, 2).await;

    let cycle = h
        .engine
        .report(&[done(&second, json!({"y": [1, 2]}))], None)
        .await
        .unwrap();
    assert!(cycle.stale.is_empty());
    let mut got = Vec::new();
    for w in ws {
        got.push(w.await.unwrap().unwrap());
    }
    assert_eq!(h.engine.watched_tasks(), 0, "waiters leave no entry behind");
    assert_eq!(h.engine.waits_handed_over(), expected_handovers(2));

    let read = h.engine.get_task(id).await.unwrap();
    assert_eq!(read.status, TaskState::Complete);
    assert_eq!(read.steps.len(), 2);
    assert_eq!(read.steps[1].results, json!({"y": [1, 2]}));
    for t in got {
        // Field for field what a read shows: the task, its template's name, every step in
        // order with its results and times.
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::to_value(&read).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_of_a_task_that_fails_gets_it_in_error() {
    let h = Harness::new().await;
    let (id, second) = chain_at_second(&h, json!({})).await;
    let ws = waiters(&h, id, 1).await;

    h.engine
        .report(
            &[Report {
                key: second.key,
                outcome: Outcome::Failed(StepFailure::retryable("out of luck")),
            }],
            None,
        )
        .await
        .unwrap();
    let t = ws.into_iter().next().unwrap().await.unwrap().unwrap();
    assert_eq!(
        t.status,
        TaskState::Error,
        "one attempt allowed: the task fails"
    );
    // (A failure is judged against the step's limit as stored, which a cycle planned from
    // known rows does not have: failures run the general way, and the waiter reads.)
    let read = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        serde_json::to_value(&t).unwrap(),
        serde_json::to_value(&read).unwrap()
    );
    assert!(t.steps[1].error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_ends_before_the_task_finishes_leaves_nothing_to_hand_over() {
    let h = Harness::new().await;
    let (id, second) = chain_at_second(&h, json!({})).await;
    let e = h
        .engine
        .wait_for_task(id, Some(Duration::from_millis(30)))
        .await;
    assert!(matches!(e, Err(tasker_core::Error::Timeout(_))), "{e:?}");
    assert_eq!(h.engine.watched_tasks(), 0);
    h.engine
        .report(&[done(&second, json!(2))], None)
        .await
        .unwrap();
    assert_eq!(h.engine.waits_handed_over(), 0);
    // A later wait reads the finished task.
    let t = h
        .engine
        .wait_for_task(id, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(h.engine.waits_handed_over(), 0);
}
