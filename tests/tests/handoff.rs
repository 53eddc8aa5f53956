//! Hand-off (issue 13, point 3): a task created while a worker of the same process idles is
//! claimed for that worker in the creating transaction, so its first step starts when the
//! creation commits, with no wake-up and no claim of the worker's own. Both backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tasker_conformance::Harness;
use tasker_core::{Registry, TaskRequest, TaskState, Worker, WorkerOptions};

const ONE: &str = "name: handoff_one\nstep_templates:\n  - {name: only}\n";
const OTHER: &str = "name: handoff_other\nstep_templates:\n  - {name: elsewhere}\n";

async fn until_idle_workers(h: &Harness, n: usize) {
    let t0 = Instant::now();
    while h.engine.idle_workers() != n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the worker never went idle"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_while_a_worker_idles_is_claimed_in_its_creating_transaction() {
    let h = Harness::real_time().await;
    h.register(ONE).await;
    h.register(OTHER).await;
    let mut reg = Registry::new();
    reg.register_fn(
        "only",
        |job| async move { Ok(json!({"got": job.context["n"]})) },
    );
    let worker = Arc::new(Worker::new(
        h.engine.clone(),
        reg,
        WorkerOptions {
            concurrency: 2,
            ..WorkerOptions::default()
        },
    ));
    // Each of the worker's lanes offers its claim while it idles (two on PostgreSQL).
    let lanes = h.engine.default_lanes().min(2);
    let stop = worker.shutdown_handle();
    let run = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });

    for n in 1..=3 {
        until_idle_workers(&h, lanes).await;
        let before = h.engine.handoffs();
        let id = h
            .engine
            .create_task(TaskRequest::new("handoff_one", json!({"n": n})))
            .await
            .unwrap();
        assert_eq!(
            h.engine.handoffs(),
            before + 1,
            "task {n}: the creation claimed its step for the idle worker"
        );
        let t = h
            .engine
            .wait_for_task(id, Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(t.status, TaskState::Complete);
        assert_eq!(t.steps[0].attempts, 1);
        assert_eq!(t.steps[0].results, json!({"got": n}));
        // The same history as a step claimed by the worker itself: the task starts with the
        // claim, the step runs once.
        let rows: Vec<(Option<i64>, Option<String>, String)> = h
            .engine
            .transitions(id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.step_id,
                    r.from_state.map(str::to_owned),
                    r.to_state.to_owned(),
                )
            })
            .collect();
        let task: Vec<_> = rows
            .iter()
            .filter(|r| r.0.is_none())
            .map(|r| (r.1.as_deref(), r.2.as_str()))
            .collect();
        let step: Vec<_> = rows
            .iter()
            .filter(|r| r.0.is_some())
            .map(|r| (r.1.as_deref(), r.2.as_str()))
            .collect();
        assert_eq!(
            task,
            [
                (None, "pending"),
                (Some("pending"), "in_progress"),
                (Some("in_progress"), "complete")
            ]
        );
        assert_eq!(
            step,
            [
                (None, "pending"),
                (Some("pending"), "in_progress"),
                (Some("in_progress"), "complete")
            ]
        );
    }

    // A step no idle worker here runs is not claimed by the creation: it stays ready for
    // whoever has its handler.
    until_idle_workers(&h, lanes).await;
    let before = h.engine.handoffs();
    let id = h
        .engine
        .create_task(TaskRequest::new("handoff_other", json!({})))
        .await
        .unwrap();
    assert_eq!(h.engine.handoffs(), before);
    // Woken by the new work, the worker claims nothing of it and offers again.
    until_idle_workers(&h, lanes).await;
    assert_eq!(
        h.engine.get_task(id).await.unwrap().steps[0]
            .status
            .as_str(),
        "pending"
    );

    stop.shutdown();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.completed, 3);
    assert_eq!(
        h.engine.idle_workers(),
        0,
        "a stopped worker withdrew its offer"
    );
}

/// A step handed over is claimed like any other: leased to the worker. If the worker dies
/// with it, the step is claimed again once the lease runs out, as the attempt after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_handed_to_a_worker_that_dies_is_claimed_again_after_its_lease() {
    let h = Harness::with(|o| o.lease(Duration::from_secs(30))).await;
    h.register(ONE).await;
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut reg = Registry::new();
    reg.register_fn("only", move |_| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(json!("never"))
        }
    });
    let worker = Arc::new(Worker::new(
        h.engine.clone(),
        reg,
        WorkerOptions {
            concurrency: 1,
            ..WorkerOptions::default()
        },
    ));
    let run = tokio::spawn({
        let w = worker.clone();
        async move { w.run().await }
    });
    until_idle_workers(&h, 1).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("handoff_one", json!({})))
        .await
        .unwrap();
    assert_eq!(h.engine.handoffs(), 1);
    tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("the handler started");
    // The worker "dies" with the step.
    run.abort();
    let _ = run.await;

    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::InProgress);
    assert_eq!(t.steps[0].status.as_str(), "in_progress");
    assert_eq!(t.steps[0].attempts, 1);
    assert!(t.steps[0].last_attempted_at.is_some());
    h.advance(Duration::from_secs(29));
    assert!(h.claim("rescuer", 1).await.is_empty(), "still leased");
    h.advance(Duration::from_secs(2));
    let again = h.claim("rescuer", 1).await;
    assert_eq!(again.len(), 1, "claimable once the lease ran out");
    assert_eq!(again[0].attempt(), 2);
    assert!(h
        .engine
        .complete(again[0].key, json!("rescued"))
        .await
        .unwrap());
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.steps[0].results, json!("rescued"));
}
