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

// ---- the original's step routes: PATCH retry_limit, DELETE (cancel one step) ----

#[tokio::test]
async fn raising_the_retry_limit_of_an_exhausted_step_runs_it_again_and_unblocks_the_task() {
    let h = Harness::new().await;
    let id = blocked_with_a_parked_step(&h).await;
    // `a` (1 attempt) is out of attempts; `b` waits 60 s. Give `a` three attempts in all.
    h.engine.set_step_retry_limit(id, "a", 3).await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.status,
        TaskState::Pending,
        "nothing is exhausted any more"
    );
    let a = t.step("a").unwrap();
    assert_eq!(
        (a.status, a.attempts, a.max_attempts),
        (StepState::Error, 1, 3)
    );
    let (names, jobs) = claim_names(&h).await;
    assert_eq!(names, ["a"], "a runs again at once; b keeps its backoff");
    assert_eq!((jobs[0].key.attempt, jobs[0].max_attempts), (2, 3));
    h.engine
        .report(
            &[Report {
                key: jobs[0].key,
                outcome: Outcome::Complete(json!("a ok")),
            }],
            None,
        )
        .await
        .unwrap();
    h.advance(Duration::from_secs(61));
    assert_eq!(h.drive(&all_succeed()).await, 2, "b, then c");
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Complete
    );
}

#[tokio::test]
async fn lowering_the_retry_limit_of_a_step_in_backoff_exhausts_it_and_fails_the_task() {
    let h = Harness::new().await;
    h.register(TWO_FAILING).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("two_failing", json!({})))
        .await
        .unwrap();
    let mut r = always_failing();
    r.register_fn("a", |_| async { Ok(json!("a ok")) });
    assert_eq!(h.drive(&r).await, 2);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.status,
        TaskState::InProgress,
        "b waits 60 s for attempt 2"
    );
    assert!(t.step("b").unwrap().next_attempt_at.is_some());

    h.engine.set_step_retry_limit(id, "b", 1).await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.status,
        TaskState::Error,
        "b has no attempt left under the new limit"
    );
    let b = t.step("b").unwrap();
    assert_eq!(
        (b.status, b.max_attempts, b.next_attempt_at.clone()),
        (StepState::Error, 1, None)
    );
    h.advance(Duration::from_secs(120));
    assert!(claim_names(&h).await.0.is_empty(), "nothing runs");
}

#[tokio::test]
async fn an_attempt_in_flight_is_judged_by_the_limit_set_while_it_ran() {
    let h = Harness::new().await;
    h.register(TWO_FAILING).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("two_failing", json!({})))
        .await
        .unwrap();
    let (_, jobs) = claim_names(&h).await;
    let b = jobs.iter().find(|j| j.step_name == "b").unwrap();
    assert_eq!(b.max_attempts, 5);
    h.engine.set_step_retry_limit(id, "b", 1).await.unwrap();
    h.engine
        .report(
            &[Report {
                key: b.key,
                outcome: Outcome::Failed(StepFailure::retryable("down")),
            }],
            None,
        )
        .await
        .unwrap();
    let s = h
        .engine
        .get_task(id)
        .await
        .unwrap()
        .step("b")
        .unwrap()
        .clone();
    assert_eq!(
        (s.status, s.next_attempt_at),
        (StepState::Error, None),
        "out of attempts under the limit set while it ran"
    );
}

#[tokio::test]
async fn a_permanent_failure_is_not_undone_by_a_higher_retry_limit() {
    let h = Harness::new().await;
    h.register("name: once\nstep_templates:\n  - {name: only, default_retry_limit: 3}\n")
        .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("once", json!({})))
        .await
        .unwrap();
    let mut r = Registry::new();
    r.register_fn("only", |_| async {
        Err(HandlerError::permanent("bad card"))
    });
    assert_eq!(h.drive(&r).await, 1);
    h.engine.set_step_retry_limit(id, "only", 10).await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.status,
        TaskState::Error,
        "a retry, not a limit, undoes a permanent failure"
    );
    assert_eq!(t.step("only").unwrap().max_attempts, 10);
    assert!(claim_names(&h).await.0.is_empty());
    // Out-of-range limits and unknown steps are refused, naming what is wrong.
    let err = h
        .engine
        .set_step_retry_limit(id, "only", 0)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("retry_limit must be an integer from 1"),
        "{err}"
    );
    let err = h
        .engine
        .set_step_retry_limit(id, "nope", 2)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no step named \"nope\""), "{err}");
}

/// `a -> b -> c`, and `d` on its own.
const CHAIN_AND_ONE: &str = r#"
name: chain_and_one
step_templates:
  - {name: a}
  - {name: b, depends_on_step: a}
  - {name: c, depends_on_step: b}
  - {name: d}
"#;

#[tokio::test]
async fn cancelling_a_step_cancels_its_dependents_and_the_task_completes_with_the_rest() {
    let h = Harness::new().await;
    h.register(CHAIN_AND_ONE).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("chain_and_one", json!({})))
        .await
        .unwrap();
    let mut events = h.engine.subscribe();
    h.engine.cancel_step(id, "b").await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    for (name, want) in [
        ("a", StepState::Pending),
        ("b", StepState::Cancelled),
        ("c", StepState::Cancelled),
        ("d", StepState::Pending),
    ] {
        assert_eq!(t.step(name).unwrap().status, want, "step {name}");
    }
    let mut cancelled = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.name == "step.cancelled" {
            cancelled.push(e.step_name.clone().unwrap());
        }
    }
    cancelled.sort();
    assert_eq!(cancelled, ["b", "c"]);
    let mut r = Registry::new();
    for n in ["a", "b", "c", "d"] {
        r.register_fn(n, move |_| async move { Ok(json!(n)) });
    }
    assert_eq!(h.drive(&r).await, 2, "only a and d run");
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.status,
        TaskState::Complete,
        "cancelled steps count as finished"
    );
    // A finished step cannot be cancelled; a running one neither.
    let err = h.engine.cancel_step(id, "a").await.unwrap_err();
    assert!(
        err.to_string().contains("it is complete") || err.to_string().contains("is complete"),
        "{err}"
    );
}

#[tokio::test]
async fn a_running_step_cannot_be_cancelled_but_an_exhausted_one_can_and_unblocks_the_task() {
    let h = Harness::new().await;
    h.register(TWO_FAILING).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("two_failing", json!({})))
        .await
        .unwrap();
    let (_, jobs) = claim_names(&h).await;
    let err = h.engine.cancel_step(id, "a").await.unwrap_err();
    assert!(err.to_string().contains("cancel the task"), "{err}");
    // `a` fails for good, `b` succeeds: the task fails; cancelling `a` (and so `c`) completes it.
    let reports: Vec<Report> = jobs
        .iter()
        .map(|j| Report {
            key: j.key,
            outcome: if j.step_name == "a" {
                Outcome::Failed(StepFailure::retryable("down"))
            } else {
                Outcome::Complete(json!("b ok"))
            },
        })
        .collect();
    h.engine.report(&reports, None).await.unwrap();
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Error
    );
    h.engine.cancel_step(id, "a").await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("c").unwrap().status, StepState::Cancelled);
}

// ---- reading back: creation-time ranges and analytics (the dashboard's reads) ----

#[tokio::test]
async fn creation_time_ranges_and_analytics_over_a_window() {
    let h = Harness::new().await;
    h.register("name: one\nstep_templates:\n  - {name: a}\n  - {name: b, depends_on_step: a}\n")
        .await;
    let t0 = tasker_core::Clock::now_ms(&h.clock);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            h.engine
                .create_task(TaskRequest::new("one", json!({})))
                .await
                .unwrap(),
        );
        h.advance(Duration::from_secs(60));
    }
    // Task k was created at t0 + k minutes.
    for (k, at) in [
        (0, t0 - 5),
        (0, t0),
        (1, t0 + 1),
        (7, t0 + 7 * 60_000),
        (19, t0 + 19 * 60_000),
    ] {
        assert_eq!(
            h.engine.first_task_created_at(at).await.unwrap(),
            Some(ids[k]),
            "k={k}"
        );
    }
    assert_eq!(
        h.engine
            .first_task_created_at(t0 + 20 * 60_000)
            .await
            .unwrap(),
        None
    );
    let range = |from: Option<i64>, until: Option<i64>| tasker_core::TaskFilter {
        created_from: from,
        created_until: until,
        limit: Some(100),
        ..Default::default()
    };
    let f = range(Some(t0 + 5 * 60_000), Some(t0 + 8 * 60_000));
    assert_eq!(h.engine.count_tasks(&f).await.unwrap(), 3);
    let listed: Vec<i64> = h
        .engine
        .list_tasks(&f)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, [ids[7], ids[6], ids[5]], "newest first");
    assert_eq!(
        h.engine
            .count_tasks(&range(Some(t0 + 99 * 60_000), None))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        h.engine.count_tasks(&range(None, Some(t0))).await.unwrap(),
        0
    );

    // Run the newest five: `a` fails once then succeeds, `b` succeeds.
    let mut r = Registry::new();
    r.register_fn("a", |step| async move {
        if step.attempt() == 1 {
            Err(HandlerError::retryable("flaky"))
        } else {
            Ok(json!("a"))
        }
    });
    r.register_fn("b", |_| async { Ok(json!("b")) });
    for id in &ids[..15] {
        h.engine.cancel_task(*id).await.unwrap();
    }
    h.drive(&r).await;
    h.advance(Duration::from_secs(3));
    h.drive(&r).await;
    let a = h
        .engine
        .analytics(Duration::from_secs(5 * 60 + 30), None, None)
        .await
        .unwrap();
    assert_eq!(a.tasks_created, 5, "the tasks of the last 5.5 minutes");
    assert_eq!((a.tasks_complete, a.tasks_error), (5, 0));
    assert_eq!(a.completion_rate, 1.0);
    assert_eq!(a.failing_steps[0].step, "a");
    assert_eq!(a.failing_steps[0].failed_attempts, 5);
    assert_eq!(a.slowest_steps.len(), 2);
    assert_eq!(a.series.iter().map(|s| s.created).sum::<u64>(), 5);
    let all = h
        .engine
        .analytics(Duration::from_secs(3600), None, None)
        .await
        .unwrap();
    assert_eq!((all.tasks_created, all.tasks_cancelled), (20, 15));
    // Several windows from one read agree with one window at a time.
    let both = h
        .engine
        .analytics_windows(
            &[Duration::from_secs(5 * 60 + 30), Duration::from_secs(3600)],
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!((both[0].tasks_created, both[1].tasks_created), (5, 20));
    assert_eq!(both[0].failing_steps[0].failed_attempts, 5);
    let other = h
        .engine
        .analytics(Duration::from_secs(3600), Some("nope"), None)
        .await
        .unwrap();
    assert_eq!(other.tasks_created, 0);
}
