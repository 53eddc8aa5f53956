//! Steering tasks as a whole (issue 27), on both backends: pause and resume a task or a
//! template's tasks, rerun a finished task from a step, retry or cancel many tasks at once,
//! and prune old finished tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tasker_conformance::Harness;
use tasker_core::{
    Error, HandlerError, Outcome, Registry, Report, StepState, TaskRequest, TaskSelection,
    TaskState,
};

/// `a -> b -> c`, and `d` below `a` beside them.
const CHAIN: &str = r#"
name: chain
namespace_name: flow
step_templates:
  - {name: a}
  - {name: b, depends_on_step: a}
  - {name: c, depends_on_step: b}
  - {name: d, depends_on_step: a}
"#;

/// `b` has one attempt and fails while `FAIL` is set.
const FLAKY: &str = r#"
name: flaky
namespace_name: flow
step_templates:
  - {name: a}
  - {name: b, depends_on_step: a, default_retry_limit: 1}
  - {name: c, depends_on_step: b}
"#;

fn succeeding() -> Registry {
    let mut r = Registry::new();
    for n in ["a", "b", "c", "d"] {
        r.register_fn(n, |step| async move {
            Ok(json!({"ran": step.step_name, "attempt": step.attempt()}))
        });
    }
    r
}

/// Every step succeeds, except `b` while `fail` is set.
fn failing_b(fail: Arc<AtomicBool>) -> Registry {
    let mut r = succeeding();
    r.register_fn("b", move |_| {
        let fail = fail.clone();
        async move {
            if fail.load(Ordering::SeqCst) {
                Err(HandlerError::retryable("b is broken"))
            } else {
                Ok(json!("b fixed"))
            }
        }
    });
    r
}

async fn chain_task(h: &Harness) -> i64 {
    h.engine
        .create_task(TaskRequest::new("chain", json!({})).namespace("flow"))
        .await
        .unwrap()
}

fn step(t: &tasker_core::TaskSnapshot, name: &str) -> (StepState, i64) {
    let s = t.step(name).unwrap();
    (s.status, s.attempts)
}

async fn claimed_names(h: &Harness) -> Vec<String> {
    let mut names: Vec<String> = h
        .claim("flow-test", 16)
        .await
        .into_iter()
        .map(|j| j.step_name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn paused_task_starts_no_new_step_while_its_running_step_finishes() {
    let h = Harness::new().await;
    h.register(CHAIN).await;
    let id = chain_task(&h).await;
    let jobs = h.claim("w1", 16).await;
    assert_eq!(jobs.len(), 1, "only a is ready");

    assert!(h.engine.pause_task(id).await.unwrap());
    assert!(
        !h.engine.pause_task(id).await.unwrap(),
        "pausing twice changes nothing"
    );
    assert!(h.engine.get_task(id).await.unwrap().paused);
    // The running step finishes and its results are kept; its children do not start.
    let report = Report {
        key: jobs[0].key,
        outcome: Outcome::Complete(json!("a done")),
    };
    let claim = tasker_core::Claim {
        worker_id: "w1".into(),
        max: 16,
        handlers: None,
    };
    let cycle = h.engine.report(&[report], Some(&claim)).await.unwrap();
    assert!(
        cycle.jobs.is_empty(),
        "a paused task's steps are not claimed"
    );
    assert!(claimed_names(&h).await.is_empty());
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::InProgress);
    assert!(t.paused);
    assert_eq!(step(&t, "a").0, StepState::Complete);
    assert_eq!(step(&t, "b"), (StepState::Pending, 0));

    assert!(h.engine.resume_task(id).await.unwrap());
    assert_eq!(claimed_names(&h).await, ["b", "d"]);
    let t = h.engine.get_task(id).await.unwrap();
    assert!(!t.paused);
    // The history says who paused it and who resumed it.
    let reasons: Vec<String> = h
        .engine
        .task_transitions(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.step_name.is_none() && e.from_state.as_deref() == Some(&e.to_state))
        .map(|e| e.metadata["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["paused_by_operator", "resumed_by_operator"]);
}

#[tokio::test]
async fn a_pause_from_another_engine_stops_a_cycle_planned_from_rows_known_before_it() {
    let h = Harness::new().await;
    h.register(CHAIN).await;
    let id = chain_task(&h).await;
    let jobs = h.claim("w1", 16).await;
    // Another process pauses the task after this engine claimed (and knows) its row.
    let other = h.reopen().await;
    other.pause_task(id).await.unwrap();
    let claim = tasker_core::Claim {
        worker_id: "w1".into(),
        max: 16,
        handlers: None,
    };
    let report = Report {
        key: jobs[0].key,
        outcome: Outcome::Complete(json!("a done")),
    };
    let cycle = h.engine.report(&[report], Some(&claim)).await.unwrap();
    assert!(cycle.jobs.is_empty(), "b and d stay parked");
    other.resume_task(id).await.unwrap();
    assert_eq!(h.drive(&succeeding()).await, 3);
    assert_eq!(
        h.engine.get_task_state(id).await.unwrap(),
        TaskState::Complete
    );
}

#[tokio::test]
async fn a_paused_task_stays_held_when_an_operator_retries_its_failed_step() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let fail = Arc::new(AtomicBool::new(true));
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})).namespace("flow"))
        .await
        .unwrap();
    h.drive(&failing_b(fail.clone())).await;
    assert_eq!(h.engine.get_task_state(id).await.unwrap(), TaskState::Error);
    h.engine.pause_task(id).await.unwrap();
    h.engine.retry_step(id, "b").await.unwrap();
    fail.store(false, Ordering::SeqCst);
    assert_eq!(h.drive(&failing_b(fail.clone())).await, 0, "still paused");
    h.engine.resume_task(id).await.unwrap();
    assert_eq!(h.drive(&failing_b(fail)).await, 2);
    assert_eq!(
        h.engine.get_task_state(id).await.unwrap(),
        TaskState::Complete
    );
}

#[tokio::test]
async fn pause_template_holds_every_unfinished_task_of_it_and_resume_template_frees_them() {
    let h = Harness::new().await;
    h.register(CHAIN).await;
    let done = chain_task(&h).await;
    h.drive(&succeeding()).await;
    let (t1, t2) = (chain_task(&h).await, chain_task(&h).await);
    assert_eq!(h.engine.pause_template("chain", "flow").await.unwrap(), 2);
    assert!(claimed_names(&h).await.is_empty());
    assert!(!h.engine.get_task(done).await.unwrap().paused);
    let err = h.engine.pause_task(done).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    let err = h.engine.pause_template("nope", "flow").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert_eq!(h.engine.resume_template("chain", "flow").await.unwrap(), 2);
    assert_eq!(h.drive(&succeeding()).await, 8);
    for t in [t1, t2] {
        assert_eq!(
            h.engine.get_task_state(t).await.unwrap(),
            TaskState::Complete
        );
    }
}

#[tokio::test]
async fn rerun_from_a_middle_step_of_a_complete_task_runs_it_and_the_steps_below_again() {
    let h = Harness::new().await;
    h.register(CHAIN).await;
    let id = chain_task(&h).await;
    assert_eq!(h.drive(&succeeding()).await, 4);

    assert_eq!(h.engine.rerun_from(id, "b").await.unwrap(), 2);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Pending);
    assert_eq!(step(&t, "a"), (StepState::Complete, 1));
    assert_eq!(step(&t, "d"), (StepState::Complete, 1));
    assert_eq!(step(&t, "b"), (StepState::Pending, 0));
    assert_eq!(step(&t, "c"), (StepState::Pending, 0));
    assert_eq!(t.step("b").unwrap().results, serde_json::Value::Null);
    assert_eq!(claimed_names(&h).await, ["b"], "c waits for b again");

    h.advance(Duration::from_secs(60)); // the claim's lease runs out
    assert_eq!(h.drive(&succeeding()).await, 2);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("c").unwrap().status, StepState::Complete);
    let rerun: Vec<_> = h
        .engine
        .task_transitions(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.metadata["reason"] == "rerun_from")
        .map(|e| (e.step_name, e.from_state, e.to_state))
        .collect();
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        rerun,
        [
            (None, s("complete"), "pending".to_owned()),
            (s("b"), s("complete"), "pending".to_owned()),
            (s("c"), s("complete"), "pending".to_owned()),
        ]
    );
}

#[tokio::test]
async fn rerun_from_the_first_step_of_a_failed_task_gives_every_step_fresh_attempts() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let fail = Arc::new(AtomicBool::new(true));
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})).namespace("flow"))
        .await
        .unwrap();
    assert_eq!(h.drive(&failing_b(fail.clone())).await, 2);
    assert_eq!(h.engine.get_task_state(id).await.unwrap(), TaskState::Error);

    fail.store(false, Ordering::SeqCst); // the bug is fixed
    assert_eq!(h.engine.rerun_from(id, "a").await.unwrap(), 3);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Pending);
    assert_eq!(step(&t, "b"), (StepState::Pending, 0));
    assert_eq!(h.drive(&failing_b(fail)).await, 3);
    assert_eq!(
        h.engine.get_task_state(id).await.unwrap(),
        TaskState::Complete
    );
}

#[tokio::test]
async fn rerun_is_refused_for_running_and_cancelled_tasks_and_unknown_steps() {
    let h = Harness::new().await;
    h.register(CHAIN).await;
    let id = chain_task(&h).await;
    let err = h.engine.rerun_from(id, "a").await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert!(err.to_string().contains("pending"), "{err}");
    h.drive(&succeeding()).await;
    let err = h.engine.rerun_from(id, "zz").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert!(err.to_string().contains("a, b, c, d"), "{err}");
    let cancelled = chain_task(&h).await;
    h.engine.cancel_task(cancelled).await.unwrap();
    let err = h.engine.rerun_from(cancelled, "a").await.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
}

#[tokio::test]
async fn retry_tasks_retries_every_failed_task_of_a_name_and_cancel_tasks_the_rest() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    h.register(CHAIN).await;
    let fail = Arc::new(AtomicBool::new(true));
    let other = chain_task(&h).await;
    h.drive(&succeeding()).await;
    let mut failed = Vec::new();
    for _ in 0..3 {
        let req = TaskRequest::new("flaky", json!({})).namespace("flow");
        failed.push(h.engine.create_task(req).await.unwrap());
    }
    h.drive(&failing_b(fail.clone())).await;
    let running = chain_task(&h).await;
    for t in &failed {
        assert_eq!(h.engine.get_task_state(*t).await.unwrap(), TaskState::Error);
    }
    let sel = TaskSelection {
        status: Some(TaskState::Error),
        name: Some("flaky".into()),
        ..TaskSelection::default()
    };
    fail.store(false, Ordering::SeqCst);
    assert_eq!(h.engine.retry_tasks(&sel).await.unwrap(), 3);
    assert_eq!(
        h.engine.retry_tasks(&sel).await.unwrap(),
        0,
        "none failed now"
    );
    let chain = TaskSelection {
        name: Some("chain".into()),
        ..TaskSelection::default()
    };
    assert_eq!(
        h.engine.cancel_tasks(&chain).await.unwrap(),
        1,
        "the complete one stays"
    );
    h.drive(&failing_b(fail)).await;
    for t in &failed {
        assert_eq!(
            h.engine.get_task_state(*t).await.unwrap(),
            TaskState::Complete
        );
    }
    assert_eq!(
        h.engine.get_task_state(other).await.unwrap(),
        TaskState::Complete
    );
    assert_eq!(
        h.engine.get_task_state(running).await.unwrap(),
        TaskState::Cancelled
    );
    let bad = TaskSelection {
        status: Some(TaskState::Complete),
        ..TaskSelection::default()
    };
    let err = h.engine.retry_tasks(&bad).await.unwrap_err();
    assert!(err.to_string().contains("status must be error"), "{err}");
}

#[tokio::test]
async fn prune_removes_old_finished_tasks_in_batches_with_every_row_kept_for_them() {
    let h = Harness::new().await;
    h.register(CHAIN).await;
    // More than one batch of old tasks.
    let old: Vec<TaskRequest> = (0..1_100)
        .map(|_| TaskRequest::new("chain", json!({})).namespace("flow"))
        .collect();
    let old = h.engine.create_tasks(old).await.unwrap();
    h.drive(&succeeding()).await;
    h.advance(Duration::from_secs(2 * 86_400));
    let recent = chain_task(&h).await;
    h.drive(&succeeding()).await;
    let unfinished = chain_task(&h).await;

    let err = h
        .engine
        .prune(Duration::from_secs(86_400), &[TaskState::Pending])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("status pending"), "{err}");
    let n = h
        .engine
        .prune(Duration::from_secs(86_400), &[])
        .await
        .unwrap();
    assert_eq!(n, 1_100);
    for t in [old[0], old[549], old[1_099]] {
        let err = h.engine.get_task(t).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert!(h.engine.transitions(t).await.unwrap().is_empty());
    }
    assert_eq!(
        h.engine.get_task_state(recent).await.unwrap(),
        TaskState::Complete
    );
    assert_eq!(h.engine.get_task(recent).await.unwrap().steps.len(), 4);
    assert_eq!(
        h.engine.get_task_state(unfinished).await.unwrap(),
        TaskState::Pending
    );
    assert_eq!(
        h.engine
            .prune(Duration::from_secs(86_400), &[])
            .await
            .unwrap(),
        0
    );
}
