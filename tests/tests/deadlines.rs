//! Task deadlines: `deadline_seconds` on a template or a request; an unfinished task is failed
//! at its deadline and its unfinished steps cancelled. Every scenario runs on each backend
//! (`TASKER_TEST_BACKEND`).

use std::time::Duration;

use serde_json::json;
use tasker_conformance::Harness;
use tasker_core::{Error, Outcome, Registry, Report, StepState, TaskRequest, TaskState};

const SLOW: &str = r#"
name: slow
deadline_seconds: 60
steps:
  - {name: first}
  - {name: second, dependencies: [first]}
"#;

fn handlers() -> Registry {
    let mut r = Registry::new();
    r.register_fn("first", |_| async { Ok(json!({"ok": 1})) });
    r.register_fn("second", |_| async { Ok(json!({"ok": 2})) });
    r
}

/// One cycle that reaps (leases, waits, deadlines): the clock has moved past the reap period.
async fn reap(h: &Harness) {
    h.engine.report(&[], None).await.unwrap();
}

#[tokio::test]
async fn an_unfinished_task_is_failed_at_its_deadline_and_its_running_step_cancelled() {
    let h = Harness::new().await;
    h.register(SLOW).await;
    let mut events = h.engine.subscribe();
    let id = h
        .engine
        .create_task(TaskRequest::new("slow", json!({})))
        .await
        .unwrap();
    let jobs = h.claim("w1", 1).await;
    assert_eq!(jobs.len(), 1, "`first` runs");
    h.advance(Duration::from_secs(59));
    reap(&h).await;
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::InProgress
    );
    h.advance(Duration::from_secs(2));
    reap(&h).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Error);
    assert_eq!(t.step("first").unwrap().status, StepState::Cancelled);
    assert_eq!(t.step("second").unwrap().status, StepState::Cancelled);
    // The running attempt's late report changes nothing.
    let late = Report {
        key: jobs[0].key,
        outcome: Outcome::Complete(json!({"late": true})),
    };
    let c = h.engine.report(&[late], None).await.unwrap();
    assert_eq!(c.stale.len(), 1);
    let why = h.engine.transitions(id).await.unwrap();
    assert!(
        why.iter().any(|t| t.step_id.is_none()
            && t.to_state == "error"
            && t.metadata.contains("deadline_exceeded")),
        "{why:?}"
    );
    let mut names = Vec::new();
    while let Ok(e) = events.try_recv() {
        names.push(e.name.to_string());
    }
    let failed = names
        .iter()
        .position(|n| n == "task.failed")
        .expect("task.failed");
    let exceeded = names
        .iter()
        .position(|n| n == "task.deadline_exceeded")
        .expect("task.deadline_exceeded");
    assert!(failed < exceeded, "{names:?}");
    assert!(h
        .engine
        .event_catalog()
        .await
        .unwrap()
        .iter()
        .any(|e| e.name == "task.deadline_exceeded"));
}

#[tokio::test]
async fn a_requests_deadline_wins_over_the_templates_and_a_task_done_in_time_keeps_its_state() {
    let h = Harness::new().await;
    h.register(SLOW).await;
    let quick = h
        .engine
        .create_task(TaskRequest {
            deadline_seconds: Some(5.0),
            ..TaskRequest::new("slow", json!({}))
        })
        .await
        .unwrap();
    let done = h
        .engine
        .create_task(TaskRequest::new("slow", json!({})))
        .await
        .unwrap();
    h.drive(&handlers()).await;
    assert_eq!(
        h.engine.get_task(done).await.unwrap().status,
        TaskState::Complete
    );
    let late = h
        .engine
        .create_task(TaskRequest {
            deadline_seconds: Some(5.0),
            ..TaskRequest::new("slow", json!({}))
        })
        .await
        .unwrap();
    h.advance(Duration::from_secs(6));
    reap(&h).await;
    assert_eq!(
        h.engine.get_task(quick).await.unwrap().status,
        TaskState::Complete
    );
    assert_eq!(
        h.engine.get_task(late).await.unwrap().status,
        TaskState::Error
    );
    h.advance(Duration::from_secs(60));
    reap(&h).await;
    assert_eq!(
        h.engine.get_task(done).await.unwrap().status,
        TaskState::Complete,
        "finished in time: its deadline passes with nothing to do"
    );
}

#[tokio::test]
async fn a_deadline_cancels_the_unfinished_child_tasks_of_the_task() {
    let h = Harness::new().await;
    h.register("name: inner\nsteps:\n  - {name: never_runs}\n")
        .await;
    h.register("name: outer\ndeadline_seconds: 10\nsteps:\n  - {name: spawn}\n")
        .await;
    let mut r = Registry::new();
    r.register_fn("spawn", |_| async {
        Ok(tasker_core::ChildTask::new("inner", json!({})).into_value())
    });
    let id = h
        .engine
        .create_task(TaskRequest::new("outer", json!({})))
        .await
        .unwrap();
    h.drive(&r).await;
    let child = h
        .engine
        .get_task(id)
        .await
        .unwrap()
        .step("spawn")
        .unwrap()
        .child_task_id
        .unwrap();
    h.advance(Duration::from_secs(11));
    reap(&h).await;
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Error
    );
    assert_eq!(
        h.engine.get_task(child).await.unwrap().status,
        TaskState::Cancelled
    );
}

#[tokio::test]
async fn bad_deadlines_are_refused_naming_the_field() {
    let h = Harness::new().await;
    h.register(SLOW).await;
    let e = h
        .engine
        .create_task(TaskRequest {
            deadline_seconds: Some(-1.0),
            ..TaskRequest::new("slow", json!({}))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Validation(m) if m.contains("deadline_seconds")),
        "{e:?}"
    );
    let e = h
        .engine
        .register_template_yaml("name: bad\ndeadline_seconds: 0\nsteps:\n  - {name: a}\n")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("deadline_seconds"), "{e}");
}
