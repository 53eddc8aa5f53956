//! `Reschedule(after)`: a handler asks to run again later without spending an attempt
//! (polling an outside job); `max_reschedules` bounds it. Every scenario runs on each backend
//! (`TASKER_TEST_BACKEND`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tasker_conformance::Harness;
use tasker_core::{Registry, Reschedule, StepState, TaskRequest, TaskState};

/// `poll` reschedules (`context.after` seconds) until its `context.ready_on`-th call, then
/// completes with the number of calls; `context.fail_first` makes its first call fail.
fn handlers(calls: Arc<AtomicUsize>) -> Registry {
    let mut r = Registry::new();
    r.register_fn("poll", move |step| {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if step.context["fail_first"] == json!(true) && n == 1 {
                return Err(tasker_core::HandlerError::retryable("not yet reachable"));
            }
            if step.context["ready_on"]
                .as_u64()
                .is_some_and(|r| n as u64 >= r)
            {
                return Ok(json!({"calls": n, "attempt": step.attempt()}));
            }
            let after = step.context["after"].as_f64().unwrap_or(30.0);
            if step.context["bad"] == json!(true) {
                return Ok(json!({"$reschedule": {"after": -1}}));
            }
            Ok(Reschedule::after(after).into_value())
        }
    });
    r
}

async fn setup(extra: &str) -> Harness {
    let h = Harness::new().await;
    h.register(&format!(
        "name: job\nsteps:\n  - name: poll\n    retry: {{max_attempts: 2, backoff: {{base_seconds: 1, max_seconds: 1}}}}\n{extra}"
    ))
    .await;
    h
}

async fn create(h: &Harness, context: serde_json::Value) -> i64 {
    h.engine
        .create_task(TaskRequest::new("job", context))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_step_that_reschedules_runs_again_after_the_delay_without_spending_an_attempt() {
    let h = setup("").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let r = handlers(calls.clone());
    let id = create(&h, json!({"ready_on": 4, "after": 30})).await;
    for round in 1..=3 {
        h.drive(&r).await;
        let t = h.engine.get_task(id).await.unwrap();
        let s = t.step("poll").unwrap();
        assert_eq!(
            (s.status, s.attempts),
            (StepState::Pending, 0),
            "round {round}"
        );
        // Not before its delay.
        h.advance(Duration::from_secs(29));
        assert_eq!(h.drive(&r).await, 0);
        h.advance(Duration::from_secs(1));
    }
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    // Four calls, one attempt: the reschedules spent none (the step allows two).
    assert_eq!(
        t.step("poll").unwrap().results,
        json!({"calls": 4, "attempt": 1})
    );
    let why = h.engine.transitions(id).await.unwrap();
    let rescheduled = why
        .iter()
        .filter(|t| t.metadata.contains("\"rescheduled\""))
        .count();
    assert_eq!(
        rescheduled, 6,
        "in_progress -> error -> pending, three times: {why:?}"
    );
}

#[tokio::test]
async fn a_reschedule_after_a_failure_keeps_the_failed_attempt_counted() {
    let h = setup("").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let r = handlers(calls.clone());
    let id = create(&h, json!({"fail_first": true, "ready_on": 3, "after": 5})).await;
    h.drive(&r).await;
    // Past the failure's backoff: attempt 2 reschedules, back to 1 attempt spent.
    h.advance(Duration::from_secs(60));
    h.drive(&r).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let t = h.engine.get_task(id).await.unwrap();
    let s = t.step("poll").unwrap();
    assert_eq!((s.status, s.attempts), (StepState::Error, 1));
    h.advance(Duration::from_secs(5));
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.status,
        TaskState::Complete,
        "the second attempt was not spent"
    );
    assert_eq!(
        t.step("poll").unwrap().results,
        json!({"calls": 3, "attempt": 2})
    );
}

#[tokio::test]
async fn max_reschedules_bounds_a_step_that_reschedules_forever_and_a_retry_starts_it_again() {
    let h = setup("    max_reschedules: 2\n").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let r = handlers(calls.clone());
    let id = create(&h, json!({"after": 0})).await;
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    let s = t.step("poll").unwrap();
    assert_eq!(s.status, StepState::Error);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two reschedules, then the third asks too many"
    );
    let msg = s.error.as_ref().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("a 3rd time") && msg.contains("allows 2 (max_reschedules)"),
        "{msg}"
    );
    assert_eq!(t.status, TaskState::Error, "a permanent failure");
    h.engine.retry_step(id, "poll").await.unwrap();
    h.drive(&r).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "the retry's count started again"
    );
}

#[tokio::test]
async fn a_malformed_reschedule_fails_the_step_permanently_naming_the_rule() {
    let h = setup("").await;
    let r = handlers(Arc::new(AtomicUsize::new(0)));
    let id = create(&h, json!({"bad": true})).await;
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    let s = t.step("poll").unwrap();
    assert_eq!((s.status, s.attempts), (StepState::Error, 1));
    let msg = s.error.as_ref().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("after must be from 0 to"), "{msg}");
}
