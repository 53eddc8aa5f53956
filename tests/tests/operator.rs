//! Operator actions (cancel, retry, resolve) on tasks whose steps are in every waiting state:
//! exhausted, waiting in backoff while the task is blocked ("parked"), in flight.
//!
//! The first scenario is the bug report of issue 8: resolving a parked step moved a task to
//! `pending` although another step was still out of attempts, and the task then stayed
//! `pending` with nothing to run.

use std::time::Duration;

use serde_json::json;
use tasker_conformance::Harness;
use tasker_core::{
    HandlerError, Job, Outcome, Registry, Report, StepFailure, StepState, TaskRequest, TaskState,
};

/// `a` has one attempt, `b` five with a minute of backoff, `c` needs both.
const TWO_FAILING: &str = r#"
name: two_failing
step_templates:
  - {name: a, default_retry_limit: 1}
  - {name: b, default_retry_limit: 5, backoff: {base_seconds: 60, jitter: 0}}
  - {name: c, depends_on_steps: [a, b]}
"#;

fn always_failing() -> Registry {
    let mut r = Registry::new();
    for n in ["a", "b"] {
        r.register_fn(n, |_| async {
            Err(HandlerError::retryable("always fails"))
        });
    }
    r.register_fn("c", |_| async { Ok(json!("c ran")) });
    r
}

fn all_succeed() -> Registry {
    let mut r = Registry::new();
    for n in ["a", "b", "c"] {
        r.register_fn(n, move |step| async move {
            Ok(json!(format!("{} ok", step.step_name)))
        });
    }
    r
}

/// After one round: `a` exhausted, `b` failed once and waiting 60 s, the task `error`.
async fn blocked_with_a_parked_step(h: &Harness) -> i64 {
    h.register(TWO_FAILING).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("two_failing", json!({})))
        .await
        .unwrap();
    assert_eq!(h.drive(&always_failing()).await, 2);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Error);
    let (a, b) = (t.step("a").unwrap(), t.step("b").unwrap());
    assert_eq!((a.status, a.attempts), (StepState::Error, 1));
    assert_eq!((b.status, b.attempts), (StepState::Error, 1));
    id
}

async fn claim_names(h: &Harness) -> (Vec<String>, Vec<Job>) {
    let jobs = h.claim("operator-test", 16).await;
    let mut names: Vec<String> = jobs.iter().map(|j| j.step_name.clone()).collect();
    names.sort();
    (names, jobs)
}

#[tokio::test]
async fn resolving_a_parked_step_keeps_a_task_with_an_exhausted_step_in_error() {
    let h = Harness::new().await;
    let id = blocked_with_a_parked_step(&h).await;

    h.engine
        .resolve_step_manually(id, "b", json!({"by": "operator"}))
        .await
        .unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.status,
        TaskState::Error,
        "`a` is still out of attempts: the task stays in error"
    );
    let b = t.step("b").unwrap();
    assert_eq!(b.status, StepState::ResolvedManually);
    assert_eq!(b.results, json!({"by": "operator"}));
    assert_eq!(b.error, None, "a resolved step shows no current error");
    assert_eq!(b.next_attempt_at, None);
    h.advance(Duration::from_secs(120));
    assert!(claim_names(&h).await.0.is_empty(), "nothing may run");

    // Retrying `a` unblocks the task; `c` runs once `a` succeeds.
    h.engine.retry_step(id, "a").await.unwrap();
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Pending
    );
    assert_eq!(h.drive(&all_succeed()).await, 2, "a, then c");
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("c").unwrap().results, json!("c ok"));
}

#[tokio::test]
async fn retrying_a_parked_step_keeps_the_task_blocked_until_the_exhausted_one_is_retried() {
    let h = Harness::new().await;
    let id = blocked_with_a_parked_step(&h).await;

    h.engine.retry_step(id, "b").await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Error, "`a` still blocks the task");
    let b = t.step("b").unwrap();
    assert_eq!((b.status, b.attempts), (StepState::Pending, 0));
    assert!(
        claim_names(&h).await.0.is_empty(),
        "the retried step waits while the task is blocked"
    );

    h.engine.retry_step(id, "a").await.unwrap();
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Pending
    );
    let (names, jobs) = claim_names(&h).await;
    assert_eq!(
        names,
        ["a", "b"],
        "both run again at once, with fresh attempts"
    );
    assert!(jobs.iter().all(|j| j.key.attempt == 1));
    let reports = jobs
        .into_iter()
        .map(|j| Report {
            key: j.key,
            outcome: Outcome::Complete(json!(1)),
        })
        .collect::<Vec<_>>();
    h.engine.report(&reports, None).await.unwrap();
    assert_eq!(h.drive(&all_succeed()).await, 1);
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Complete
    );
}

#[tokio::test]
async fn cancelling_a_task_with_an_exhausted_and_a_parked_step_cancels_both() {
    let h = Harness::new().await;
    let id = blocked_with_a_parked_step(&h).await;

    h.engine.cancel_task(id).await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Cancelled);
    for s in &t.steps {
        assert_eq!(s.status, StepState::Cancelled, "step {}", s.name);
    }
    h.advance(Duration::from_secs(120));
    assert!(claim_names(&h).await.0.is_empty());
    // A cancelled task refuses operator actions with the reason.
    let err = h.engine.retry_step(id, "a").await.unwrap_err();
    assert!(err.to_string().contains("it is cancelled"), "{err}");
}

#[tokio::test]
async fn resolving_the_exhausted_step_unblocks_and_the_parked_one_runs_after_its_backoff() {
    let h = Harness::new().await;
    let id = blocked_with_a_parked_step(&h).await;

    h.engine
        .resolve_step_manually(id, "a", json!("fixed by hand"))
        .await
        .unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.status,
        TaskState::Pending,
        "nothing is exhausted any more"
    );
    assert!(
        claim_names(&h).await.0.is_empty(),
        "`b` keeps its backoff: it is not due yet"
    );
    h.advance(Duration::from_secs(61));
    assert_eq!(
        h.drive(&all_succeed()).await,
        2,
        "b (second attempt), then c"
    );
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("b").unwrap().attempts, 2);
    assert_eq!(
        t.step("c").unwrap().results,
        json!("c ok"),
        "c saw both parents"
    );
}

#[tokio::test]
async fn retry_while_a_sibling_is_in_flight_keeps_the_task_running() {
    let h = Harness::new().await;
    h.register(TWO_FAILING).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("two_failing", json!({})))
        .await
        .unwrap();
    let (names, jobs) = claim_names(&h).await;
    assert_eq!(names, ["a", "b"]);
    let key = |n: &str| jobs.iter().find(|j| j.step_name == n).unwrap().key;
    // `a` fails for good while `b` is still running: the task is blocked but not yet failed.
    h.engine
        .report(
            &[Report {
                key: key("a"),
                outcome: Outcome::Failed(StepFailure::retryable("down")),
            }],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::InProgress
    );
    // The operator retries `a` before `b` finishes: `a` is claimable at once.
    h.engine.retry_step(id, "a").await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::InProgress, "b is still in flight");
    let (names, jobs2) = claim_names(&h).await;
    assert_eq!(names, ["a"]);
    // Both finish; `c` runs; the task completes.
    let done = [key("b"), jobs2[0].key].map(|k| Report {
        key: k,
        outcome: Outcome::Complete(json!("ok")),
    });
    h.engine.report(&done, None).await.unwrap();
    assert_eq!(h.drive(&all_succeed()).await, 1);
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Complete
    );
}
