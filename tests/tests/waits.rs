//! Steps that wait for the world: a handler returns `Wait(...)`, the step is `waiting`, and a
//! signal, a completion or failure from outside, a correlation id's completion or a timeout
//! ends it. Every scenario runs on each backend (`TASKER_TEST_BACKEND`).

use std::time::Duration;

use serde_json::{json, Value};
use tasker_conformance::Harness;
use tasker_core::{Error, Registry, StepState, TaskRequest, TaskState, Wait};

const APPROVAL: &str = r#"
name: approval
steps:
  - {name: ask}
  - {name: act, dependencies: [ask]}
"#;

/// `ask` waits as `context.wait` says (`signal`, `correlation_id`, `timeout`), or completes at
/// once when `context.done_on` is its attempt; `act` shows what `ask` ended with.
fn handlers() -> Registry {
    let mut r = Registry::new();
    r.register_fn("ask", |step| async move {
        if step.context["done_on"] == json!(step.attempt()) {
            return Ok(json!({"answered_on": step.attempt()}));
        }
        let c = &step.context["wait"];
        Ok(Wait {
            signal: c["signal"].as_str().map(str::to_owned),
            correlation_id: c["correlation_id"].as_str().map(str::to_owned),
            timeout: c["timeout"].as_f64(),
            results: json!({"asked": step.attempt()}),
        }
        .into_value())
    });
    r.register_fn("act", |step| async move {
        Ok(json!({"saw": step.results["ask"]}))
    });
    r
}

async fn setup() -> Harness {
    let h = Harness::new().await;
    h.register(APPROVAL).await;
    h
}

async fn create(h: &Harness, context: Value) -> i64 {
    h.engine
        .create_task(TaskRequest::new("approval", context))
        .await
        .unwrap()
}

async fn ask(h: &Harness, id: i64) -> tasker_core::engine::StepSnapshot {
    h.engine
        .get_task(id)
        .await
        .unwrap()
        .step("ask")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_signal_completes_the_step_waiting_for_it_with_its_payload() {
    let h = setup().await;
    let id = create(&h, json!({"wait": {"signal": "approved"}})).await;
    h.drive(&handlers()).await;
    let s = ask(&h, id).await;
    assert_eq!(s.status, StepState::Waiting);
    assert_eq!(s.waiting_for, Some(json!({"signal": "approved"})));
    assert_eq!(
        s.results,
        json!({"asked": 1}),
        "the wait's results show meanwhile"
    );
    // Another signal's name completes nothing (it is kept for a step that waits for it).
    assert_eq!(
        h.engine.signal(id, "rejected", json!(null)).await.unwrap(),
        0
    );
    assert_eq!(
        h.engine
            .signal(id, "approved", json!({"by": "ops"}))
            .await
            .unwrap(),
        1
    );
    h.drive(&handlers()).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(t.step("ask").unwrap().results, json!({"by": "ops"}));
    assert_eq!(t.step("ask").unwrap().waiting_for, None);
    assert_eq!(
        t.step("act").unwrap().results,
        json!({"saw": {"by": "ops"}})
    );
    let moves: Vec<String> = h
        .engine
        .task_transitions(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.step_name.as_deref() == Some("ask"))
        .map(|e| e.to_state)
        .collect();
    assert_eq!(moves, ["pending", "in_progress", "waiting", "complete"]);
}

#[tokio::test]
async fn a_signal_sent_before_the_step_waits_is_kept_and_taken_when_it_does() {
    let h = setup().await;
    let id = create(&h, json!({"wait": {"signal": "approved"}})).await;
    assert_eq!(
        h.engine
            .signal(id, "approved", json!({"early": true}))
            .await
            .unwrap(),
        0,
        "nothing waits yet: kept"
    );
    h.drive(&handlers()).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(t.step("ask").unwrap().results, json!({"early": true}));
    // Taken once: a second task's step waits.
    let id2 = create(&h, json!({"wait": {"signal": "approved"}})).await;
    h.drive(&handlers()).await;
    assert_eq!(ask(&h, id2).await.status, StepState::Waiting);
    // Two signals before a wait: the oldest is taken, the other kept.
    let id3 = create(&h, json!({"wait": {"signal": "go"}})).await;
    h.engine.signal(id3, "go", json!(1)).await.unwrap();
    h.engine.signal(id3, "go", json!(2)).await.unwrap();
    h.drive(&handlers()).await;
    assert_eq!(ask(&h, id3).await.results, json!(1));
}

#[tokio::test]
async fn complete_step_and_fail_step_end_a_waiting_step_and_refuse_any_other() {
    let h = setup().await;
    let id = create(&h, json!({"wait": {}, "done_on": 3})).await;
    // Before the step waits: a conflict naming its state; unknown names: not found.
    let err = h
        .engine
        .complete_step(id, "ask", json!(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(m) if m.contains("pending") && m.contains("waiting")),
        "{err}"
    );
    assert!(matches!(
        h.engine.complete_step(id, "nope", json!(1)).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        h.engine.complete_step(999_999, "ask", json!(1)).await,
        Err(Error::NotFound(_))
    ));
    h.drive(&handlers()).await;
    // A retryable failure from outside: the handler runs again (attempt 2 waits again).
    h.engine
        .fail_step(id, "ask", "the approver asked for changes", false)
        .await
        .unwrap();
    let s = ask(&h, id).await;
    assert_eq!(s.status, StepState::Error);
    assert_eq!(
        s.error.as_ref().unwrap()["message"],
        json!("the approver asked for changes")
    );
    h.advance(Duration::from_secs(60));
    h.drive(&handlers()).await;
    let s = ask(&h, id).await;
    assert_eq!((s.status, s.attempts), (StepState::Waiting, 2));
    // Completed with no results: the wait's own stay.
    h.engine
        .complete_step(id, "ask", Value::Null)
        .await
        .unwrap();
    h.drive(&handlers()).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("ask").unwrap().results, json!({"asked": 2}));
    // A permanent failure from outside blocks the task.
    let id2 = create(&h, json!({"wait": {}})).await;
    h.drive(&handlers()).await;
    h.engine
        .fail_step(id2, "ask", "rejected", true)
        .await
        .unwrap();
    let t = h.engine.get_task(id2).await.unwrap();
    assert_eq!(t.status, TaskState::Error);
    assert_eq!(
        t.step("ask").unwrap().error.as_ref().unwrap()["kind"],
        json!("permanent")
    );
    // Bad input: refused, the step stays waiting.
    let id3 = create(&h, json!({"wait": {}})).await;
    h.drive(&handlers()).await;
    let err = h
        .engine
        .complete_step(id3, "ask", json!({"x": "a\u{0}b"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation(m) if m.contains("$.x")),
        "{err}"
    );
    assert!(matches!(
        h.engine.fail_step(id3, "ask", " ", false).await,
        Err(Error::Validation(_))
    ));
    assert_eq!(ask(&h, id3).await.status, StepState::Waiting);
}

#[tokio::test]
async fn complete_correlated_completes_every_step_waiting_with_that_id() {
    let h = setup().await;
    let a = create(&h, json!({"wait": {"correlation_id": "order-7"}})).await;
    let b = create(&h, json!({"wait": {"correlation_id": "order-7"}})).await;
    let c = create(&h, json!({"wait": {"correlation_id": "order-8"}})).await;
    h.drive(&handlers()).await;
    assert_eq!(
        ask(&h, a).await.waiting_for,
        Some(json!({"correlation_id": "order-7"}))
    );
    assert_eq!(
        h.engine
            .complete_correlated("order-7", json!({"paid": true}))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        h.engine
            .complete_correlated("order-9", json!({}))
            .await
            .unwrap(),
        0
    );
    h.drive(&handlers()).await;
    for id in [a, b] {
        let t = h.engine.get_task(id).await.unwrap();
        assert_eq!(t.status, TaskState::Complete);
        assert_eq!(t.step("ask").unwrap().results, json!({"paid": true}));
    }
    assert_eq!(ask(&h, c).await.status, StepState::Waiting);
}

#[tokio::test]
async fn a_wait_that_times_out_fails_as_retryable_and_its_handler_runs_again() {
    let h = setup().await;
    let id = create(
        &h,
        json!({"wait": {"signal": "approved", "timeout": 5}, "done_on": 2}),
    )
    .await;
    h.drive(&handlers()).await;
    let s = ask(&h, id).await;
    assert_eq!(s.status, StepState::Waiting);
    assert!(s.waiting_for.as_ref().unwrap()["timeout_at"].is_string());
    h.advance(Duration::from_secs(4));
    h.drive(&handlers()).await;
    assert_eq!(ask(&h, id).await.status, StepState::Waiting, "not yet");
    h.advance(Duration::from_secs(2));
    h.drive(&handlers()).await;
    let s = ask(&h, id).await;
    assert_eq!(s.attempts, 1);
    assert_eq!(s.status, StepState::Error, "{s:?}");
    let err = s.error.as_ref().unwrap();
    assert_eq!(err["message"], json!("waited 5 s for signal \"approved\""));
    assert_eq!(err["kind"], json!("timeout"));
    h.advance(Duration::from_secs(60));
    h.drive(&handlers()).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(t.step("ask").unwrap().results, json!({"answered_on": 2}));
    // The timed-out wait's signal, sent now, is kept (no step waits for it any more).
    let id2 = create(&h, json!({"wait": {"signal": "x"}})).await;
    assert_eq!(h.engine.signal(id2, "x", json!(null)).await.unwrap(), 0);
}

#[tokio::test]
async fn the_builtin_wait_handler_waits_from_yaml_alone_and_cancelling_ends_the_wait() {
    let h = Harness::new().await;
    h.register(
        r#"
name: release
steps:
  - {name: approve, handler: {callable: wait, initialization: {signal: approved, timeout_seconds: 86400, results: {asked: ops}}}}
  - {name: ship, dependencies: [approve], handler: {callable: wait}}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("release", json!({})))
        .await
        .unwrap();
    let r = Registry::with_builtins();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    let approve = t.step("approve").unwrap();
    assert_eq!(approve.status, StepState::Waiting);
    assert_eq!(approve.results, json!({"asked": "ops"}));
    assert_eq!(approve.waiting_for.as_ref().unwrap()["signal"], "approved");
    assert_eq!(
        h.engine
            .signal(id, "approved", json!({"by": "kim"}))
            .await
            .unwrap(),
        1
    );
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.step("ship").unwrap().status, StepState::Waiting);
    h.engine.cancel_task(id).await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Cancelled);
    assert_eq!(t.step("ship").unwrap().status, StepState::Cancelled);
    let err = h
        .engine
        .signal(id, "approved", json!(null))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(m) if m.contains("cancelled")),
        "{err}"
    );
    // A bad config is a template error naming the step.
    let bad = h
        .engine
        .register_template_yaml(
            "name: bad\nsteps:\n  - {name: w, handler: {callable: wait, initialization: {timeout_seconds: -1}}}\n",
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("timeout"), "{bad}");
}

#[tokio::test]
async fn a_wait_from_a_decision_or_a_malformed_wait_fails_the_step_permanently() {
    let h = setup().await;
    h.register(
        "name: choose\nsteps:\n  - {name: pick, type: decision}\n  - {name: left, dependencies: [pick]}\n",
    )
    .await;
    let mut r = handlers();
    r.register_fn(
        "pick",
        |_| async move { Ok(Wait::signal("x").into_value()) },
    );
    let id = h
        .engine
        .create_task(TaskRequest::new("choose", json!({})))
        .await
        .unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    let msg = t.step("pick").unwrap().error.as_ref().unwrap()["message"].clone();
    assert!(msg.as_str().unwrap().contains("returned a Wait"), "{msg}");
    let mut r = handlers();
    r.register_fn("ask", |_| async move {
        Ok(json!({"$wait": {"signal": "x", "timeout": "soon"}}))
    });
    let id = create(&h, json!({})).await;
    h.drive(&r).await;
    let s = ask(&h, id).await;
    assert_eq!(s.status, StepState::Error);
    let msg = s.error.as_ref().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("$wait") && msg.contains("timeout"), "{msg}");
}
