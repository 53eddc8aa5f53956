//! Conformance scenarios: the engine's behaviour through its public API, told as stories.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tasker_conformance::Harness;
use tasker_core::{
    Claim, Error, Event, HandlerError, Outcome, Registry, Report, StepFailure, StepState,
    TaskFilter, TaskRequest, TaskState, Worker, WorkerOptions,
};

fn int(v: &Value, path: &str) -> i64 {
    v.pointer(path)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("{path} in {v}"))
}

/// Handlers for the shape tests: every step returns `{"v": 1 + sum of its parents' v}`, plus
/// the context's `seed` at roots.
fn summing_registry(names: &[&str]) -> Registry {
    let mut r = Registry::new();
    for n in names {
        r.register_fn(*n, |step| async move {
            let seed = step
                .context
                .get("seed")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let parents: i64 = step
                .results
                .values()
                .map(|p| p["v"].as_i64().unwrap())
                .sum();
            let base = if step.results.is_empty() {
                seed
            } else {
                parents
            };
            Ok(json!({"v": base + 1}))
        });
    }
    r
}

#[tokio::test]
async fn linear_chain_passes_each_result_to_the_next_step() {
    let h = Harness::new().await;
    h.register(
        r#"
name: linear
step_templates:
  - {name: a, handler_class: inc}
  - {name: b, handler_class: inc, depends_on_step: a}
  - {name: c, handler_class: inc, depends_on_step: b}
  - {name: d, handler_class: inc, depends_on_step: c}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("linear", json!({"seed": 10})))
        .await
        .unwrap();
    assert_eq!(h.drive(&summing_registry(&["inc"])).await, 4);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(int(&t.step("d").unwrap().results, "/v"), 14);
    assert!(t
        .steps
        .iter()
        .all(|s| s.status == StepState::Complete && s.attempts == 1));
    assert!(t.completed_at.is_some());
}

#[tokio::test]
async fn diamond_joins_both_branches() {
    let h = Harness::new().await;
    h.register(
        r#"
name: diamond
step_templates:
  - {name: a, handler_class: s}
  - {name: b, handler_class: s, depends_on_step: a}
  - {name: c, handler_class: s, depends_on_step: a}
  - {name: d, handler_class: s, depends_on_steps: [b, c]}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("diamond", json!({"seed": 1})))
        .await
        .unwrap();
    h.drive(&summing_registry(&["s"])).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    // a = 2, b = c = 3, d = 3 + 3 + 1
    assert_eq!(int(&t.step("d").unwrap().results, "/v"), 7);
}

#[tokio::test]
async fn tree_and_mixed_dags_compute_checkable_values() {
    let h = Harness::new().await;
    h.register(
        r#"
name: tree
step_templates:
  - {name: root, handler_class: s}
  - {name: l, handler_class: s, depends_on_step: root}
  - {name: r, handler_class: s, depends_on_step: root}
  - {name: ll, handler_class: s, depends_on_step: l}
  - {name: lr, handler_class: s, depends_on_step: l}
  - {name: rl, handler_class: s, depends_on_step: r}
"#,
    )
    .await;
    h.register(
        r#"
name: mixed
step_templates:
  - {name: a, handler_class: s}
  - {name: b, handler_class: s}
  - {name: c, handler_class: s, depends_on_steps: [a, b]}
  - {name: d, handler_class: s, depends_on_step: a}
  - {name: e, handler_class: s, depends_on_steps: [c, d]}
"#,
    )
    .await;
    let tree = h
        .engine
        .create_task(TaskRequest::new("tree", json!({"seed": 0})))
        .await
        .unwrap();
    let mixed = h
        .engine
        .create_task(TaskRequest::new("mixed", json!({"seed": 5})))
        .await
        .unwrap();
    h.drive(&summing_registry(&["s"])).await;
    let t = h.engine.get_task(tree).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    for leaf in ["ll", "lr", "rl"] {
        assert_eq!(int(&t.step(leaf).unwrap().results, "/v"), 3, "{leaf}");
    }
    let m = h.engine.get_task(mixed).await.unwrap();
    assert_eq!(m.status, TaskState::Complete);
    // a = b = 6; c = 13; d = 7; e = 21
    assert_eq!(int(&m.step("e").unwrap().results, "/v"), 21);
}

const FLAKY: &str = r#"
name: flaky
step_templates:
  - {name: fetch, handler_class: flaky, default_retry_limit: 3}
  - {name: store, handler_class: ok, depends_on_step: fetch}
"#;

fn flaky_registry(failures: u32, retry_after: Option<Duration>) -> (Registry, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let mut r = Registry::new();
    let c = calls.clone();
    r.register_fn("flaky", move |step| {
        let c = c.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(n, step.attempt(), "attempt numbers count every run");
            if n <= failures {
                Err(match retry_after {
                    Some(d) => HandlerError::retry_after(format!("flake {n}"), d),
                    None => HandlerError::retryable(format!("flake {n}")),
                })
            } else {
                Ok(json!({"fetched": n}))
            }
        }
    });
    r.register_fn("ok", |step| async move {
        Ok(json!({"saw": step.results["fetch"]["fetched"]}))
    });
    (r, calls)
}

#[tokio::test]
async fn flaky_step_fails_twice_then_succeeds_respecting_backoff() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})))
        .await
        .unwrap();
    let (reg, calls) = flaky_registry(2, None);

    assert_eq!(h.drive(&reg).await, 1);
    let t = h.engine.get_task(id).await.unwrap();
    let fetch = t.step("fetch").unwrap();
    assert_eq!((fetch.status, fetch.attempts), (StepState::Error, 1));
    assert_eq!(fetch.error.as_ref().unwrap()["message"], "flake 1");
    assert_eq!(
        t.status,
        TaskState::InProgress,
        "a retryable failure does not fail the task"
    );

    // First backoff: 2 s ±10 %. Not before 1.8 s, surely by 2.2 s.
    h.advance(Duration::from_millis(1_790));
    assert_eq!(h.drive(&reg).await, 0, "claimed before the backoff elapsed");
    h.advance(Duration::from_millis(420));
    assert_eq!(h.drive(&reg).await, 1);
    // Second backoff: 4 s ±10 %.
    h.advance(Duration::from_millis(3_590));
    assert_eq!(h.drive(&reg).await, 0);
    h.advance(Duration::from_millis(820));
    assert_eq!(
        h.drive(&reg).await,
        2,
        "third attempt succeeds and its child runs"
    );

    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("fetch").unwrap().attempts, 3);
    assert_eq!(
        t.step("fetch").unwrap().error,
        None,
        "a later success clears the error"
    );
    assert_eq!(t.step("store").unwrap().results, json!({"saw": 3}));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // The history tells the story: error -> pending -> in_progress for each retry.
    let step_id = t.step("fetch").unwrap().id;
    let hist: Vec<(Option<&str>, &str)> = h
        .engine
        .transitions(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.step_id == Some(step_id))
        .map(|r| (r.from_state, r.to_state))
        .collect();
    assert_eq!(
        hist,
        vec![
            (None, "pending"),
            (Some("pending"), "in_progress"),
            (Some("in_progress"), "error"),
            (Some("error"), "pending"),
            (Some("pending"), "in_progress"),
            (Some("in_progress"), "error"),
            (Some("error"), "pending"),
            (Some("pending"), "in_progress"),
            (Some("in_progress"), "complete"),
        ]
    );
}

#[tokio::test]
async fn handler_retry_after_wins_over_backoff() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})))
        .await
        .unwrap();
    let (reg, _) = flaky_registry(1, Some(Duration::from_secs(7)));
    assert_eq!(h.drive(&reg).await, 1);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.step("fetch").unwrap().error.as_ref().unwrap()["retry_after_seconds"],
        7.0
    );
    h.advance(Duration::from_millis(6_999));
    assert_eq!(h.drive(&reg).await, 0, "retry_after 7 s not honoured");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.drive(&reg).await, 2);
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Complete
    );
}

#[tokio::test]
async fn retry_after_is_capped_by_max_server_backoff() {
    let h = Harness::with(|mut o| {
        o.max_server_backoff_seconds = 10.0;
        o
    })
    .await;
    h.register(FLAKY).await;
    h.engine
        .create_task(TaskRequest::new("flaky", json!({})))
        .await
        .unwrap();
    let (reg, _) = flaky_registry(1, Some(Duration::from_secs(3600)));
    h.drive(&reg).await;
    h.advance(Duration::from_secs(10));
    assert_eq!(h.drive(&reg).await, 2);
}

#[tokio::test]
async fn exhausted_retries_fail_the_task_and_downstream_never_starts() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})))
        .await
        .unwrap();
    let (reg, calls) = flaky_registry(100, Some(Duration::ZERO));
    let mut events = h.engine.subscribe();
    assert_eq!(
        h.drive(&reg).await,
        3,
        "retry limit 3 = three attempts in all"
    );
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.drive(&reg).await, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Error);
    let store = t.step("store").unwrap();
    assert_eq!((store.status, store.attempts), (StepState::Pending, 0));
    assert_eq!(t.step("fetch").unwrap().next_attempt_at, None);
    let mut names = Vec::new();
    while let Ok(e) = events.try_recv() {
        names.push(e.name.to_string());
    }
    assert_eq!(names.iter().filter(|n| **n == "step.failed").count(), 3);
    assert_eq!(names.iter().filter(|n| **n == "task.failed").count(), 1);
}

#[tokio::test]
async fn permanent_error_is_never_retried() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})))
        .await
        .unwrap();
    let mut reg = Registry::new();
    reg.register_fn("flaky", |_| async {
        Err(HandlerError::permanent("card declined"))
    });
    assert_eq!(h.drive(&reg).await, 1);
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.drive(&reg).await, 0);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Error);
    let f = t.step("fetch").unwrap();
    assert_eq!(f.attempts, 1);
    assert_eq!(f.error.as_ref().unwrap()["kind"], "permanent");
    assert_eq!(f.error.as_ref().unwrap()["message"], "card declined");
}

#[tokio::test]
async fn not_retryable_means_exactly_one_attempt() {
    let h = Harness::new().await;
    h.register(
        "name: once\nstep_templates:\n  - {name: a, default_retryable: false, default_retry_limit: 5}\n",
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("once", json!({})))
        .await
        .unwrap();
    let mut reg = Registry::new();
    reg.register_fn("a", |_| async { Err(HandlerError::retryable("boom")) });
    assert_eq!(h.drive(&reg).await, 1);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.drive(&reg).await, 0);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        (t.status, t.step("a").unwrap().max_attempts),
        (TaskState::Error, 1)
    );
}

#[tokio::test]
async fn operator_retry_step_then_the_task_completes() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})))
        .await
        .unwrap();
    let mut failing = Registry::new();
    failing.register_fn("flaky", |_| async {
        Err(HandlerError::permanent("upstream down"))
    });
    h.drive(&failing).await;
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Error
    );

    // Retrying a step that is not in error is refused with a reason.
    let err = h.engine.retry_step(id, "store").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("only a step in error can be retried"),
        "{err}"
    );
    let err = h.engine.retry_step(id, "nope").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    h.engine.retry_step(id, "fetch").await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Pending);
    assert_eq!(
        (
            t.step("fetch").unwrap().status,
            t.step("fetch").unwrap().attempts
        ),
        (StepState::Pending, 0)
    );
    let (ok, _) = flaky_registry(0, None);
    assert_eq!(h.drive(&ok).await, 2);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("fetch").unwrap().attempts, 1);
}

#[tokio::test]
async fn operator_resolves_a_failed_step_and_its_children_run() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})))
        .await
        .unwrap();
    let (reg, _) = flaky_registry(100, Some(Duration::ZERO));
    h.drive(&reg).await;
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Error
    );
    h.engine
        .resolve_step_manually(id, "fetch", json!({"fetched": 42}))
        .await
        .unwrap();
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Pending
    );
    assert_eq!(h.drive(&reg).await, 1);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("fetch").unwrap().status, StepState::ResolvedManually);
    assert_eq!(t.step("store").unwrap().results, json!({"saw": 42}));
    // A finished task refuses further operator changes.
    let err = h
        .engine
        .resolve_step_manually(id, "store", json!(null))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("it is complete"), "{err}");
}

#[tokio::test]
async fn resolving_the_last_open_step_completes_the_task() {
    let h = Harness::new().await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    h.engine
        .resolve_step_manually(id, "only", json!({"by": "hand"}))
        .await
        .unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("only").unwrap().results, json!({"by": "hand"}));
}

#[tokio::test]
async fn cancel_stops_pending_steps_and_keeps_in_flight_results() {
    let h = Harness::new().await;
    h.register(
        r#"
name: fanout
step_templates:
  - {name: a}
  - {name: b}
  - {name: c, depends_on_steps: [a, b]}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("fanout", json!({})))
        .await
        .unwrap();
    let claim = Claim {
        worker_id: "w".into(),
        max: 1,
        handlers: Some(vec!["a".into()]),
    };
    let jobs = h.engine.report(&[], Some(&claim)).await.unwrap().jobs;
    assert_eq!(jobs.len(), 1);
    h.engine.cancel_task(id).await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Cancelled);
    assert_eq!(t.step("a").unwrap().status, StepState::InProgress);
    assert_eq!(t.step("b").unwrap().status, StepState::Cancelled);
    assert_eq!(t.step("c").unwrap().status, StepState::Cancelled);
    // The in-flight step finishes and its result is kept; nothing new starts.
    assert!(h
        .engine
        .complete(jobs[0].key, json!({"late": true}))
        .await
        .unwrap());
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Cancelled);
    assert_eq!(t.step("a").unwrap().results, json!({"late": true}));
    let any = Claim {
        worker_id: "w".into(),
        max: 10,
        handlers: None,
    };
    assert!(h
        .engine
        .report(&[], Some(&any))
        .await
        .unwrap()
        .jobs
        .is_empty());
    let err = h.engine.cancel_task(id).await.unwrap_err();
    assert!(err.to_string().contains("it is already cancelled"), "{err}");
}

#[tokio::test]
async fn bypassing_a_skippable_step_resolves_it_and_refuses_others() {
    let h = Harness::new().await;
    h.register(
        r#"
name: skip
step_templates:
  - {name: audit, skippable: true}
  - {name: charge}
  - {name: ship, depends_on_steps: [audit, charge]}
"#,
    )
    .await;
    let err = h
        .engine
        .create_task(TaskRequest::new("skip", json!({})).bypass(&["charge"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("step \"charge\" cannot be bypassed: it is not skippable"),
        "{err}"
    );
    let err = h
        .engine
        .create_task(TaskRequest::new("skip", json!({})).bypass(&["nah"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown step \"nah\""), "{err}");

    let id = h
        .engine
        .create_task(TaskRequest::new("skip", json!({})).bypass(&["audit"]))
        .await
        .unwrap();
    let mut reg = Registry::new();
    reg.register_fn("audit", |_| async {
        panic!("a bypassed step must not run")
    });
    reg.register_fn("charge", |_| async { Ok(json!("charged")) });
    reg.register_fn("ship", |s| async move {
        Ok(json!({"audit": s.results["audit"], "charge": s.results["charge"]}))
    });
    assert_eq!(h.drive(&reg).await, 2);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("audit").unwrap().status, StepState::ResolvedManually);
    assert_eq!(
        t.step("ship").unwrap().results,
        json!({"audit": null, "charge": "charged"})
    );
}

#[tokio::test]
async fn idempotency_key_returns_the_existing_task() {
    let h = Harness::new().await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    let a = h
        .engine
        .create_task(TaskRequest::new("one", json!({"n": 1})).idempotency_key("order-7"))
        .await
        .unwrap();
    let b = h
        .engine
        .create_task(TaskRequest::new("one", json!({"n": 2})).idempotency_key("order-7"))
        .await
        .unwrap();
    let c = h
        .engine
        .create_task(TaskRequest::new("one", json!({"n": 1})).idempotency_key("order-8"))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let all = h.engine.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(h.engine.get_task(a).await.unwrap().context, json!({"n": 1}));
}

#[tokio::test]
async fn expired_lease_makes_the_step_claimable_again_and_counts_the_attempt() {
    let h = Harness::with(|o| o.lease(Duration::from_secs(30))).await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    let claim = Claim {
        worker_id: "doomed".into(),
        max: 1,
        handlers: None,
    };
    let first = h
        .engine
        .report(&[], Some(&claim))
        .await
        .unwrap()
        .jobs
        .remove(0);
    // The worker "dies". Before the lease runs out nobody else gets the step.
    h.advance(Duration::from_secs(29));
    let other = Claim {
        worker_id: "rescuer".into(),
        ..claim.clone()
    };
    assert!(h
        .engine
        .report(&[], Some(&other))
        .await
        .unwrap()
        .jobs
        .is_empty());
    h.advance(Duration::from_secs(2));
    let second = h
        .engine
        .report(&[], Some(&other))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(second.attempt(), 2);
    // The dead worker's late report is ignored; the rescuer's counts.
    assert!(!h.engine.complete(first.key, json!("zombie")).await.unwrap());
    assert!(h
        .engine
        .complete(second.key, json!("rescued"))
        .await
        .unwrap());
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("only").unwrap().results, json!("rescued"));
    let reasons: Vec<String> = h
        .engine
        .transitions(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.to_state == "error")
        .map(|r| r.metadata)
        .collect();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].contains("lease_expired"), "{reasons:?}");
}

#[tokio::test]
async fn heartbeat_keeps_the_lease() {
    let h = Harness::with(|o| o.lease(Duration::from_secs(30))).await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    h.engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    let claim = Claim {
        worker_id: "slow".into(),
        max: 1,
        handlers: None,
    };
    let job = h
        .engine
        .report(&[], Some(&claim))
        .await
        .unwrap()
        .jobs
        .remove(0);
    for _ in 0..4 {
        h.advance(Duration::from_secs(20));
        assert_eq!(h.engine.heartbeat(&[job.key]).await.unwrap(), 1);
        assert!(h
            .engine
            .report(&[], Some(&claim))
            .await
            .unwrap()
            .jobs
            .is_empty());
    }
    assert!(h.engine.complete(job.key, json!(1)).await.unwrap());
}

#[tokio::test]
async fn timeout_fails_the_attempt_and_the_retry_succeeds() {
    let h = Harness::new().await;
    h.register(
        r#"
name: slow
step_templates:
  - name: slow
    timeout_seconds: 0.05
    backoff: {base_seconds: 0, max_seconds: 0}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("slow", json!({})))
        .await
        .unwrap();
    let mut reg = Registry::new();
    reg.register_fn("slow", |step| async move {
        if step.attempt() == 1 {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        Ok(json!({"attempt": step.attempt()}))
    });
    let worker = Worker::new(h.engine.clone(), reg, WorkerOptions::default());
    let t = worker
        .run_until_complete(id, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("slow").unwrap().results, json!({"attempt": 2}));
    let hist = h.engine.transitions(id).await.unwrap();
    let timeout = hist
        .iter()
        .find(|r| r.to_state == "error")
        .expect("a failed attempt");
    let meta: Value = serde_json::from_str(&timeout.metadata).unwrap();
    assert_eq!(meta["kind"], "timeout", "{meta}");
}

#[tokio::test]
async fn worker_runs_a_diamond_with_a_flaky_step_and_panicking_handler_is_contained() {
    let h = Harness::new().await;
    h.register(
        r#"
name: diamond
step_templates:
  - {name: a}
  - {name: b, depends_on_step: a, backoff: {base_seconds: 0}}
  - {name: c, depends_on_step: a}
  - {name: d, depends_on_steps: [b, c]}
"#,
    )
    .await;
    let ids = h
        .engine
        .create_tasks(
            (0..20)
                .map(|i| TaskRequest::new("diamond", json!({"i": i})))
                .collect(),
        )
        .await
        .unwrap();
    let mut reg = Registry::new();
    reg.register_fn(
        "a",
        |s| async move { Ok(json!({"i": s.context["i"], "a": 1})) },
    );
    reg.register_fn("b", |s| async move {
        if s.attempt() == 1 {
            panic!("b blew up on its first attempt");
        }
        Ok(json!({"b": 2}))
    });
    reg.register_fn("c", |_| async { Ok(json!({"c": 3})) });
    reg.register_fn("d", |s| async move {
        let sum = s.results["b"]["b"].as_i64().unwrap() + s.results["c"]["c"].as_i64().unwrap();
        Ok(json!({"sum": sum}))
    });
    let worker = Worker::new(
        h.engine.clone(),
        reg,
        WorkerOptions {
            concurrency: 4,
            ..Default::default()
        },
    );
    // The manual clock does not move, and b's backoff is zero, so retries are immediate.
    let stats = tokio::time::timeout(Duration::from_secs(20), worker.run_until_idle())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.completed, 80);
    assert_eq!(stats.failed, 20);
    for id in ids {
        let t = h.engine.get_task(id).await.unwrap();
        assert_eq!(t.status, TaskState::Complete, "task {id}");
        assert_eq!(t.step("d").unwrap().results, json!({"sum": 5}));
        let b = t.step("b").unwrap();
        assert_eq!(b.attempts, 2);
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_steps() {
    let h = Harness::new().await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let mut reg = Registry::new();
    reg.register_fn("only", move |_| {
        if let Some(tx) = started_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(json!("finished"))
        }
    });
    let worker = Arc::new(Worker::new(h.engine.clone(), reg, WorkerOptions::default()));
    let stop = worker.shutdown_handle();
    let w = worker.clone();
    let run = tokio::spawn(async move { w.run().await });
    started_rx.await.unwrap();
    stop.shutdown();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.completed, 1);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("only").unwrap().results, json!("finished"));
}

#[tokio::test]
async fn every_transition_emits_exactly_one_event_after_commit() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let mut rx = h.engine.subscribe();
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({})))
        .await
        .unwrap();
    let (reg, _) = flaky_registry(1, Some(Duration::ZERO));
    h.drive(&reg).await;
    let rows = h.engine.transitions(id).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let transitions: Vec<&Event> = events
        .iter()
        .map(|e| e.as_ref())
        .filter(|e| e.is_transition())
        .collect();
    assert_eq!(transitions.len(), rows.len());
    // Besides, the original's workflow.* / observability.* events, each right after the
    // transition it follows, with the original's keys.
    let names: Vec<&str> = events.iter().map(|e| e.name.as_ref()).collect();
    let after = |a: &str, b: &str| names.windows(2).any(|w| w == [a, b]);
    assert!(after("step.failed", "workflow.step_failed"), "{names:?}");
    assert!(
        after("workflow.step_failed", "observability.step.backoff"),
        "{names:?}"
    );
    assert!(
        after("step.completed", "workflow.step_completed"),
        "{names:?}"
    );
    assert!(
        after("task.completed", "workflow.task_completed"),
        "{names:?}"
    );
    let wf = events
        .iter()
        .find(|e| e.name == "workflow.step_failed")
        .unwrap();
    assert_eq!(
        (
            &wf.metadata["error_message"],
            &wf.metadata["attempt_number"]
        ),
        (&json!("flake 1"), &json!(1))
    );
    let derived: usize = transitions
        .iter()
        .map(|e| tasker_core::events::derived(e).len())
        .sum();
    assert_eq!(events.len(), rows.len() + derived, "{names:?}");
    for expected in [
        "task.initialize_requested",
        "task.start_requested",
        "step.initialize_requested",
        "step.execution_requested",
        "step.failed",
        "step.retry_requested",
        "step.completed",
        "task.completed",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(names.iter().filter(|n| **n == "task.completed").count(), 1);
    let failed = events.iter().find(|e| e.name == "step.failed").unwrap();
    assert_eq!(failed.step_name.as_deref(), Some("fetch"));
    assert_eq!(failed.attempt, Some(1));
    assert_eq!(failed.metadata["error"], "flake 1");
}

#[tokio::test]
async fn stale_and_foreign_reports_change_nothing() {
    let h = Harness::new().await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    let claim = Claim {
        worker_id: "w".into(),
        max: 1,
        handlers: None,
    };
    let job = h
        .engine
        .report(&[], Some(&claim))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert!(h.engine.complete(job.key, json!(1)).await.unwrap());
    // A duplicate report of the same attempt is ignored, not applied twice.
    let dup = Report {
        key: job.key,
        outcome: Outcome::Failed(StepFailure::retryable("late")),
    };
    let c = h.engine.report(&[dup], None).await.unwrap();
    assert_eq!(c.stale, vec![job.key]);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        (t.status, t.step("only").unwrap().attempts),
        (TaskState::Complete, 1)
    );

    // Foreign reports: an attempt of a task that does not exist, and a wrong attempt number of
    // a running step. Both are refused as stale; nothing changes.
    let id2 = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    let running = h
        .engine
        .report(&[], Some(&claim))
        .await
        .unwrap()
        .jobs
        .remove(0);
    let unknown_task = tasker_core::JobKey {
        task_id: 987_654,
        ..running.key
    };
    let wrong_attempt = tasker_core::JobKey {
        attempt: running.key.attempt + 1,
        ..running.key
    };
    let c = h
        .engine
        .report(
            &[
                Report {
                    key: unknown_task,
                    outcome: Outcome::Complete(json!("forged")),
                },
                Report {
                    key: wrong_attempt,
                    outcome: Outcome::Failed(StepFailure::permanent("forged")),
                },
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(c.stale, vec![unknown_task, wrong_attempt]);
    let t2 = h.engine.get_task(id2).await.unwrap();
    let only = t2.step("only").unwrap();
    assert_eq!(
        (t2.status, only.status, only.attempts, only.error.clone()),
        (TaskState::InProgress, StepState::InProgress, 1, None)
    );
    // The real report still applies.
    assert!(h.engine.complete(running.key, json!(2)).await.unwrap());
    assert_eq!(
        h.engine.get_task(id2).await.unwrap().status,
        TaskState::Complete
    );
}

#[tokio::test]
async fn list_tasks_filters_by_status_and_name() {
    let h = Harness::new().await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    h.register("name: two\nstep_templates:\n  - {name: only}\n")
        .await;
    let a = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    h.engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    h.engine
        .create_task(TaskRequest::new("two", json!({})))
        .await
        .unwrap();
    h.engine.cancel_task(a).await.unwrap();
    let f = |state, name: Option<&str>| TaskFilter {
        state,
        name: name.map(Into::into),
        ..Default::default()
    };
    assert_eq!(h.engine.list_tasks(&f(None, None)).await.unwrap().len(), 3);
    assert_eq!(
        h.engine
            .list_tasks(&f(None, Some("one")))
            .await
            .unwrap()
            .len(),
        2
    );
    let cancelled = h
        .engine
        .list_tasks(&f(Some(TaskState::Cancelled), None))
        .await
        .unwrap();
    assert_eq!(cancelled.iter().map(|t| t.id).collect::<Vec<_>>(), vec![a]);
    let limited = h
        .engine
        .list_tasks(&TaskFilter {
            oldest_first: false,
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    // Paging: the total ignores limit and offset; oldest first reverses the order.
    let one = f(None, Some("one"));
    assert_eq!(h.engine.count_tasks(&one).await.unwrap(), 2);
    assert_eq!(
        h.engine
            .count_tasks(&f(Some(TaskState::Cancelled), None))
            .await
            .unwrap(),
        1
    );
    let oldest = h
        .engine
        .list_tasks(&TaskFilter {
            oldest_first: true,
            offset: Some(1),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(oldest[0].id, a + 1);
    let counts = h.engine.state_counts().await.unwrap();
    assert_eq!(counts.tasks["cancelled"], 1);
    assert_eq!(counts.tasks["pending"], 2);
    assert_eq!(counts.tasks["complete"], 0);
    assert_eq!(counts.steps["cancelled"], 1);
    assert_eq!(counts.steps["pending"], 2);
    assert_eq!((counts.in_backoff, counts.exhausted), (0, 0));
}

#[tokio::test]
async fn wait_for_task_returns_when_a_worker_finishes_it() {
    let h = Harness::new().await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    let mut reg = Registry::new();
    reg.register_fn("only", |_| async { Ok(json!(1)) });
    let worker = Arc::new(Worker::new(h.engine.clone(), reg, WorkerOptions::default()));
    let stop = worker.shutdown_handle();
    let w = worker.clone();
    let run = tokio::spawn(async move { w.run().await });
    let t = h
        .engine
        .wait_for_task(id, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(t.status, TaskState::Complete);
    stop.shutdown();
    run.await.unwrap().unwrap();
    let err = h.engine.wait_for_task(9999, None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)));
}

#[tokio::test]
async fn state_survives_reopening_the_database() {
    let h = Harness::new().await;
    h.register(FLAKY).await;
    let id = h
        .engine
        .create_task(TaskRequest::new("flaky", json!({"k": "v"})))
        .await
        .unwrap();
    let again = h.reopen().await;
    let t = again.get_task(id).await.unwrap();
    assert_eq!(
        (t.status, t.context.clone()),
        (TaskState::Pending, json!({"k": "v"}))
    );
    assert_eq!(again.templates().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_blocked_task_starts_nothing_new_until_the_operator_unblocks_it() {
    let h = Harness::new().await;
    h.register(
        r#"
name: blocked
step_templates:
  - {name: bad, default_retryable: false}
  - {name: slow}
  - {name: next, depends_on_step: slow}
  - {name: later, backoff: {base_seconds: 10, jitter: 0}}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("blocked", json!({})))
        .await
        .unwrap();
    let any = Claim {
        worker_id: "w".into(),
        max: 10,
        handlers: None,
    };
    let jobs = h.engine.report(&[], Some(&any)).await.unwrap().jobs;
    assert_eq!(jobs.len(), 3, "bad, slow and later start");
    let key = |n: &str| jobs.iter().find(|j| j.step_name == n).unwrap().key;
    // `later` fails retryably (waits 10 s), `bad` fails for good: the task is blocked, `slow` is in flight.
    let fail = |k, f| Report {
        key: k,
        outcome: Outcome::Failed(f),
    };
    let c = h
        .engine
        .report(
            &[
                fail(key("later"), StepFailure::retryable("soon")),
                fail(key("bad"), StepFailure::permanent("no")),
            ],
            Some(&any),
        )
        .await
        .unwrap();
    assert!(c.jobs.is_empty());
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::InProgress,
        "a step is still in flight"
    );
    // `slow` finishes: its child would be ready, but the task is blocked; then the task fails.
    let c = h
        .engine
        .report(
            &[Report {
                key: key("slow"),
                outcome: Outcome::Complete(json!(1)),
            }],
            Some(&any),
        )
        .await
        .unwrap();
    assert!(c.jobs.is_empty(), "nothing new starts in a blocked task");
    h.advance(Duration::from_secs(60));
    assert!(
        h.engine
            .report(&[], Some(&any))
            .await
            .unwrap()
            .jobs
            .is_empty(),
        "not even after the backoff"
    );
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Error
    );
    // The operator retries `bad`: everything waiting becomes claimable again.
    h.engine.retry_step(id, "bad").await.unwrap();
    let mut names: Vec<String> = h
        .engine
        .report(&[], Some(&any))
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.step_name)
        .collect();
    names.sort();
    assert_eq!(names, ["bad", "later", "next"]);
}

#[tokio::test]
async fn the_engine_reports_the_durability_its_commits_get() {
    let h = Harness::new().await;
    let d = h.engine.durability().await.unwrap();
    match tasker_conformance::backend().as_str() {
        "postgres" => {
            let want = d.description.contains("fsync=on")
                && !d.description.contains("synchronous_commit=off")
                && d.description.contains("full_page_writes=on");
            assert_eq!(d.durable, want, "{}", d.description);
        }
        _ => {
            assert!(d.durable, "{}", d.description);
            assert!(
                d.description.contains("synchronous=FULL"),
                "{}",
                d.description
            );
            assert!(
                d.description.contains("journal_mode=wal"),
                "{}",
                d.description
            );
        }
    }
    let h = Harness::with(|o| o.durability(tasker_core::Durability::Off)).await;
    if tasker_conformance::backend() == "sqlite" {
        assert!(!h.engine.durability().await.unwrap().durable);
    }
}
