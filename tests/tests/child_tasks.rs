//! Child tasks: a step returns `ChildTask(name, context)`, the engine creates that task linked
//! to it (`parent_task_id`, `parent_step`), the step is `waiting` until the child finishes,
//! and the child's end is the step's outcome. Every scenario runs on each backend
//! (`TASKER_TEST_BACKEND`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tasker_conformance::Harness;
use tasker_core::{Batches, ChildTask, HandlerError, Registry, StepState, TaskRequest, TaskState};

const ORDER: &str = r#"
name: order
steps:
  - {name: charge}
  - {name: ship, dependencies: [charge]}
"#;

const PAYMENT: &str = r#"
name: payment
namespace: billing
schema:
  type: object
  required: [amount]
  properties:
    amount: {type: integer}
steps:
  - {name: authorize, retry: {max_attempts: 1}}
  - {name: capture, dependencies: [authorize]}
"#;

/// `charge` asks for a `billing/payment` child with the order's amount; the payment steps
/// fail when `fail` says so (`authorize`, permanently).
fn handlers(fail: Arc<AtomicUsize>) -> Registry {
    let mut r = Registry::new();
    r.register_fn("charge", |step| async move {
        Ok(
            ChildTask::new("payment", json!({"amount": step.context["amount"]}))
                .namespace("billing")
                .into_value(),
        )
    });
    r.register_fn("ship", |step| async move {
        Ok(json!({"shipped_after": step.results["charge"]["results"]["capture"]}))
    });
    r.register_fn("authorize", move |step| {
        let fail = fail.clone();
        async move {
            if fail.load(Ordering::SeqCst) > 0 {
                fail.fetch_sub(1, Ordering::SeqCst);
                return Err(HandlerError::permanent("card declined"));
            }
            Ok(json!({"authorized": step.context["amount"]}))
        }
    });
    r.register_fn("capture", |step| async move {
        Ok(json!({"captured": step.results["authorize"]["authorized"]}))
    });
    r
}

async fn setup() -> Harness {
    let h = Harness::new().await;
    h.register(ORDER).await;
    h.register(PAYMENT).await;
    h
}

fn only(r: &Registry, names: &[&str]) -> Registry {
    let mut out = Registry::new();
    for n in names {
        let h = r.get(n).unwrap();
        out.register_fn(*n, move |step| {
            let h = h.clone();
            async move { h.call(&step).await }
        });
    }
    out
}

async fn create(h: &Harness, name: &str, context: Value) -> i64 {
    h.engine
        .create_task(TaskRequest::new(name, context))
        .await
        .unwrap()
}

async fn status(h: &Harness, task: i64) -> TaskState {
    h.engine.get_task(task).await.unwrap().status
}

async fn child_of(h: &Harness, task: i64, step: &str) -> i64 {
    h.engine
        .get_task(task)
        .await
        .unwrap()
        .step(step)
        .unwrap()
        .child_task_id
        .unwrap_or_else(|| panic!("step {step} of task {task} has no child"))
}

#[tokio::test]
async fn a_step_that_returns_a_child_task_waits_for_it_then_completes_with_its_results() {
    let h = setup().await;
    let r = handlers(Arc::default());
    let id = create(&h, "order", json!({"amount": 42})).await;
    // Only the parent's handler runs: the step waits, holding no lease; the child is pending.
    h.drive(&only(&r, &["charge", "ship"])).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::InProgress);
    assert_eq!(t.parent_task_id, None);
    let charge = t.step("charge").unwrap();
    assert_eq!(charge.status, StepState::Waiting, "{charge:?}");
    assert_eq!(charge.attempts, 1);
    assert_eq!(t.step("ship").unwrap().status, StepState::Pending);
    let child = charge
        .child_task_id
        .expect("the waiting step names its child");
    let template = h.engine.template(None, "order", None).await.unwrap();
    let text = tasker_core::diagram::mermaid(&template, Some(&t));
    assert!(
        text.contains(&format!(
            "charge<br/>waiting · attempts 1/3<br/>child task {child}"
        )),
        "{text}"
    );
    let c = h.engine.get_task(child).await.unwrap();
    assert_eq!(
        (c.namespace.as_str(), c.name.as_str()),
        ("billing", "payment")
    );
    assert_eq!(c.parent_task_id, Some(id));
    assert_eq!(c.parent_step.as_deref(), Some("charge"));
    assert_eq!(c.context, json!({"amount": 42}));
    assert_eq!(c.source_system, "child_task");
    assert_eq!(c.status, TaskState::Pending);

    h.drive(&r).await;
    let c = h.engine.get_task(child).await.unwrap();
    assert_eq!(c.status, TaskState::Complete);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    let charge = t.step("charge").unwrap();
    assert_eq!(charge.status, StepState::Complete);
    assert_eq!(
        charge.results,
        json!({"task_id": child, "status": "complete", "results": {
            "authorize": {"authorized": 42}, "capture": {"captured": 42}}})
    );
    assert_eq!(
        t.step("ship").unwrap().results,
        json!({"shipped_after": {"captured": 42}})
    );
    // The step's history: claimed, waiting, completed (one attempt).
    let moves: Vec<(Option<String>, String)> = h
        .engine
        .task_transitions(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.step_name.as_deref() == Some("charge"))
        .map(|e| (e.from_state, e.to_state))
        .collect();
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        moves,
        vec![
            (None, "pending".into()),
            (s("pending"), "in_progress".into()),
            (s("in_progress"), "waiting".into()),
            (s("waiting"), "complete".into()),
        ]
    );
    assert_eq!(
        StepState::event(Some(StepState::InProgress), StepState::Waiting),
        Some("step.waiting")
    );
}

#[tokio::test]
async fn a_failed_child_fails_its_parent_step_permanently_with_the_childs_error() {
    let h = setup().await;
    let r = handlers(Arc::new(AtomicUsize::new(1)));
    let id = create(&h, "order", json!({"amount": 7})).await;
    h.drive(&r).await;
    let child = child_of(&h, id, "charge").await;
    assert_eq!(status(&h, child).await, TaskState::Error);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Error, "{t:?}");
    let charge = t.step("charge").unwrap();
    assert_eq!(charge.status, StepState::Error);
    assert_eq!(
        charge.attempts, 1,
        "a child's failure is not retried by itself"
    );
    assert_eq!(charge.next_attempt_at, None);
    let err = charge.error.as_ref().unwrap();
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("child task {child}"))
            && msg.contains("billing/payment")
            && msg.contains("\"authorize\": card declined"),
        "{msg}"
    );
    assert_eq!(err["kind"], json!("permanent"));
    assert_eq!(err["detail"]["task_id"], json!(child));
    assert_eq!(
        err["detail"]["errors"]["authorize"]["message"],
        json!("card declined")
    );
    assert_eq!(t.step("ship").unwrap().status, StepState::Pending);
}

#[tokio::test]
async fn retrying_the_parent_step_creates_a_new_child_and_the_old_one_is_ignored() {
    let h = setup().await;
    let fail = Arc::new(AtomicUsize::new(1));
    let r = handlers(fail.clone());
    let id = create(&h, "order", json!({"amount": 5})).await;
    h.drive(&r).await;
    let first = child_of(&h, id, "charge").await;
    h.engine.retry_step(id, "charge").await.unwrap();
    h.drive(&r).await;
    let second = child_of(&h, id, "charge").await;
    assert!(second > first, "{first} then {second}");
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(t.step("charge").unwrap().results["task_id"], json!(second));
    // The first child, retried and completed now, no longer speaks for the step.
    h.engine.retry_step(first, "authorize").await.unwrap();
    h.drive(&r).await;
    assert_eq!(status(&h, first).await, TaskState::Complete);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.step("charge").unwrap().results["task_id"], json!(second));
}

#[tokio::test]
async fn a_child_task_that_cannot_be_created_fails_the_step_naming_why() {
    let h = setup().await;
    let mut r = handlers(Arc::default());
    r.register_fn("charge", |step| async move {
        Ok(match step.context["case"].as_str().unwrap() {
            "unknown" => ChildTask::new("refund", json!({})).into_value(),
            "schema" => ChildTask::new("payment", json!({"amount": "lots"}))
                .namespace("billing")
                .into_value(),
            _ => json!({"$child_task": {"name": "payment", "colour": "red"}}),
        })
    });
    for (case, says) in [
        ("unknown", "refund"),
        ("schema", "amount"),
        ("malformed", "colour"),
    ] {
        let id = create(&h, "order", json!({"case": case})).await;
        h.drive(&r).await;
        let t = h.engine.get_task(id).await.unwrap();
        let charge = t.step("charge").unwrap();
        assert_eq!(charge.status, StepState::Error, "{case}: {charge:?}");
        assert_eq!(charge.child_task_id, None, "{case}");
        let msg = charge.error.as_ref().unwrap()["message"].as_str().unwrap();
        assert!(
            msg.contains("charge") && msg.contains(says),
            "{case}: {msg}"
        );
        assert_eq!(charge.error.as_ref().unwrap()["kind"], json!("permanent"));
    }
}

#[tokio::test]
async fn cancelling_a_task_cancels_its_children_and_theirs() {
    let h = setup().await;
    h.register(
        r#"
name: layered
steps:
  - {name: outer}
"#,
    )
    .await;
    let mut r = handlers(Arc::default());
    // `outer` asks for an `order`, whose `charge` asks for a `payment`.
    r.register_fn("outer", |_| async move {
        Ok(ChildTask::new("order", json!({"amount": 1})).into_value())
    });
    let id = create(&h, "layered", json!({})).await;
    h.drive(&only(&r, &["outer", "charge"])).await;
    let order = child_of(&h, id, "outer").await;
    let payment = child_of(&h, order, "charge").await;
    assert_eq!(
        h.engine.get_task(payment).await.unwrap().parent_task_id,
        Some(order)
    );
    h.engine.cancel_task(id).await.unwrap();
    for (task, step) in [(id, "outer"), (order, "charge")] {
        let t = h.engine.get_task(task).await.unwrap();
        assert_eq!(t.status, TaskState::Cancelled, "task {task}");
        assert_eq!(t.step(step).unwrap().status, StepState::Cancelled);
    }
    let p = h.engine.get_task(payment).await.unwrap();
    assert_eq!(p.status, TaskState::Cancelled);
    assert!(
        p.steps.iter().all(|s| s.status == StepState::Cancelled),
        "{p:?}"
    );
    // Nothing is left to run.
    assert_eq!(h.drive(&r).await, 0);
}

#[tokio::test]
async fn a_cancelled_child_fails_its_parent_step() {
    let h = setup().await;
    let r = handlers(Arc::default());
    let id = create(&h, "order", json!({"amount": 3})).await;
    h.drive(&only(&r, &["charge"])).await;
    let child = child_of(&h, id, "charge").await;
    h.engine.cancel_task(child).await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    let charge = t.step("charge").unwrap();
    assert_eq!(charge.status, StepState::Error);
    let msg = charge.error.as_ref().unwrap()["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("child task {child}")) && msg.contains("cancelled"),
        "{msg}"
    );
    assert_eq!(t.status, TaskState::Error);
}

#[tokio::test]
async fn a_waiting_step_can_be_resolved_by_an_operator_and_its_child_then_changes_nothing() {
    let h = setup().await;
    let r = handlers(Arc::default());
    let id = create(&h, "order", json!({"amount": 9})).await;
    h.drive(&only(&r, &["charge"])).await;
    let child = child_of(&h, id, "charge").await;
    h.engine
        .resolve_step_manually(id, "charge", json!({"capture": "by hand"}))
        .await
        .unwrap();
    h.drive(&r).await;
    assert_eq!(status(&h, child).await, TaskState::Complete);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    let charge = t.step("charge").unwrap();
    assert_eq!(charge.status, StepState::ResolvedManually);
    assert_eq!(charge.results, json!({"capture": "by hand"}));
    // Retrying a waiting step is refused: it has not failed.
    let id2 = create(&h, "order", json!({"amount": 9})).await;
    h.drive(&only(&r, &["charge"])).await;
    let err = h.engine.retry_step(id2, "charge").await.unwrap_err();
    assert!(err.to_string().contains("waiting"), "{err}");
}

#[tokio::test]
async fn each_fan_out_instance_can_run_a_child_task_and_the_convergence_gets_them_in_order() {
    let h = setup().await;
    h.register(
        r#"
name: payouts
steps:
  - {name: split, type: batchable}
  - {name: pay, type: batch_worker, dependencies: [split]}
  - {name: report, type: deferred_convergence, dependencies: [pay]}
"#,
    )
    .await;
    let mut r = handlers(Arc::default());
    r.register_fn("split", |_| async move {
        Ok(Batches::new((1..=5).map(|n| json!(n * 10))).into_value())
    });
    r.register_fn("pay", |step| async move {
        Ok(
            ChildTask::new("payment", json!({"amount": step.batch.clone().unwrap()}))
                .namespace("billing")
                .into_value(),
        )
    });
    r.register_fn("report", |step| async move {
        let list = step.results["pay"].as_array().cloned().unwrap();
        let got: Vec<Value> = list
            .iter()
            .map(|r| r["results"]["capture"]["captured"].clone())
            .collect();
        Ok(json!({"captured": got}))
    });
    let id = create(&h, "payouts", json!({})).await;
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(
        t.step("report").unwrap().results,
        json!({"captured": [10, 20, 30, 40, 50]})
    );
    let kids: Vec<i64> = t
        .instances_of("pay")
        .map(|s| s.child_task_id.unwrap())
        .collect();
    assert_eq!(kids.len(), 5);
    let third = h.engine.get_task(kids[2]).await.unwrap();
    assert_eq!(third.parent_step.as_deref(), Some("pay_003"));
}

#[tokio::test]
async fn a_child_that_finished_while_its_parent_was_not_told_is_found_by_the_sweep() {
    // As a process that crashed between the child's last commit and its parent's leaves it.
    let h = Harness::with(|o| o.settle_children_at_commit(false)).await;
    h.register(ORDER).await;
    h.register(PAYMENT).await;
    let r = handlers(Arc::default());
    let id = create(&h, "order", json!({"amount": 11})).await;
    h.drive(&r).await;
    let child = child_of(&h, id, "charge").await;
    assert_eq!(status(&h, child).await, TaskState::Complete);
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.step("charge").unwrap().status, StepState::Waiting);
    // The next sweep (every 5 s) finds it.
    h.advance(Duration::from_secs(1));
    h.drive(&r).await;
    assert_eq!(
        h.engine
            .get_task(id)
            .await
            .unwrap()
            .step("charge")
            .unwrap()
            .status,
        StepState::Waiting
    );
    h.advance(Duration::from_secs(5));
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(t.step("charge").unwrap().results["task_id"], json!(child));
}

#[tokio::test]
async fn a_decision_step_may_not_return_a_child_task() {
    let h = setup().await;
    h.register(
        r#"
name: choose
steps:
  - {name: pick, type: decision}
  - {name: left, dependencies: [pick]}
"#,
    )
    .await;
    let mut r = handlers(Arc::default());
    r.register_fn("pick", |_| async move {
        Ok(ChildTask::new("order", json!({})).into_value())
    });
    let id = create(&h, "choose", json!({})).await;
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    let pick = t.step("pick").unwrap();
    assert_eq!(pick.status, StepState::Error);
    assert!(
        pick.error.as_ref().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("returned a ChildTask"),
        "{pick:?}"
    );
    assert_eq!(pick.child_task_id, None);
}

#[tokio::test]
async fn a_template_that_creates_itself_as_a_child_stops_at_the_depth_limit() {
    let h = setup().await;
    h.register("name: forever\nsteps:\n  - {name: again}\n")
        .await;
    let mut r = Registry::new();
    r.register_fn("again", |_| async move {
        Ok(ChildTask::new("forever", json!({})).into_value())
    });
    let root = create(&h, "forever", json!({})).await;
    h.drive(&r).await;
    // 32 levels of children below the root; the deepest one's step fails, and every task
    // above it fails in turn through its waiting step.
    let mut chain = vec![root];
    while let Some(kid) = h
        .engine
        .get_task(*chain.last().unwrap())
        .await
        .unwrap()
        .step("again")
        .unwrap()
        .child_task_id
    {
        chain.push(kid);
    }
    assert_eq!(chain.len(), tasker_core::engine::child::MAX_DEPTH + 1);
    let deepest = h.engine.get_task(*chain.last().unwrap()).await.unwrap();
    let msg = deepest.step("again").unwrap().error.as_ref().unwrap()["message"].clone();
    assert!(msg.as_str().unwrap().contains("at most 32"), "{msg}");
    assert_eq!(status(&h, root).await, TaskState::Error);
}
