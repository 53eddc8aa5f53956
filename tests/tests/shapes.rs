//! Shapes decided at run time: decision steps choose which of their children exist, and
//! deferred convergence steps gather whichever of their dependencies were created. Every
//! scenario runs on each backend (`TASKER_TEST_BACKEND`).

use std::time::Duration;

use serde_json::{json, Value};
use tasker_conformance::Harness;
use tasker_core::{
    Decision, Error, HandlerError, Registry, StepState, TaskRequest, TaskState, TaskTemplate,
};

const APPROVAL: &str = include_str!("../fixtures/tasker_core/conditional_approval.yaml");

/// The approval workflow's handlers: the decision routes by amount.
fn approval_handlers() -> Registry {
    let mut r = Registry::new();
    r.register_fn("validate_request", |step| async move {
        Ok(json!({"amount": step.context["amount"]}))
    });
    r.register_fn("routing_decision", |step| async move {
        let amount = step.results["validate_request"]["amount"].as_f64().unwrap();
        let large = step.config["thresholds"]["large"].as_f64().unwrap();
        let steps: Vec<&str> = if amount < 1000.0 {
            vec!["auto_approve"]
        } else if amount < large {
            vec!["manager_approval"]
        } else {
            vec!["manager_approval", "finance_review"]
        };
        Ok(Decision::new(steps)
            .results(json!({"amount": amount}))
            .into_value())
    });
    r.register_fn("approve", |step| async move {
        Ok(json!({"approved_by": step.step_name, "amount": step.results["routing_decision"]["amount"]}))
    });
    r.register_fn("finalize_approval", |step| async move {
        let mut names: Vec<&String> = step.results.keys().collect();
        names.sort();
        Ok(json!({"approvals": names}))
    });
    r
}

fn step_names(t: &tasker_core::TaskSnapshot) -> Vec<&str> {
    let mut v: Vec<&str> = t.steps.iter().map(|s| s.name.as_str()).collect();
    v.sort_unstable();
    v
}

async fn approval_task(h: &Harness, amount: f64) -> tasker_core::TaskSnapshot {
    let id = h
        .engine
        .create_task(
            TaskRequest::new("approval_routing", json!({"amount": amount}))
                .namespace("conditional_approval"),
        )
        .await
        .unwrap();
    h.drive(&approval_handlers()).await;
    h.engine.get_task(id).await.unwrap()
}

#[tokio::test]
async fn a_decision_creates_only_the_branch_it_chose_and_the_convergence_gathers_it() {
    let h = Harness::new().await;
    h.register(APPROVAL).await;
    let t = approval_task(&h, 250.0).await;
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(
        step_names(&t),
        [
            "auto_approve",
            "finalize_approval",
            "routing_decision",
            "validate_request"
        ],
        "the branches not taken are never created"
    );
    let fin = t.step("finalize_approval").unwrap();
    assert_eq!(fin.results, json!({"approvals": ["auto_approve"]}));
    assert_eq!(
        t.step("auto_approve").unwrap().results["amount"],
        json!(250.0),
        "children see the decision's own results"
    );
    assert_eq!(
        t.step("routing_decision").unwrap().results,
        json!({"amount": 250.0})
    );
}

#[tokio::test]
async fn a_decision_choosing_two_branches_runs_both_before_the_convergence() {
    let h = Harness::new().await;
    h.register(APPROVAL).await;
    let t = approval_task(&h, 9000.0).await;
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(
        step_names(&t),
        [
            "finalize_approval",
            "finance_review",
            "manager_approval",
            "routing_decision",
            "validate_request"
        ]
    );
    assert_eq!(
        t.step("finalize_approval").unwrap().results,
        json!({"approvals": ["finance_review", "manager_approval"]})
    );
    // The decision's completion says what it chose.
    let events = h.engine.task_transitions(t.id).await.unwrap();
    let decided = events
        .iter()
        .find(|e| e.step_name.as_deref() == Some("routing_decision") && e.to_state == "complete")
        .expect("the decision completed");
    assert_eq!(
        decided.metadata["decision"],
        json!(["manager_approval", "finance_review"])
    );
}

fn one_decision(yaml_extra: &str) -> String {
    format!(
        r#"
name: choose
step_templates:
  - {{name: pick, type: decision}}
  - {{name: left, depends_on_step: pick}}
  - {{name: right, depends_on_step: pick}}
{yaml_extra}"#
    )
}

fn registry_deciding(v: Value) -> Registry {
    let mut r = Registry::new();
    r.register_fn("pick", move |_| {
        let v = v.clone();
        async move { Ok(v) }
    });
    for n in ["left", "right", "after"] {
        r.register_fn(n, |step| async move { Ok(json!({"ran": step.step_name})) });
    }
    r
}

async fn run_choose(h: &Harness, decision: Value) -> tasker_core::TaskSnapshot {
    let id = h
        .engine
        .create_task(TaskRequest::new("choose", json!({})))
        .await
        .unwrap();
    h.drive(&registry_deciding(decision)).await;
    h.engine.get_task(id).await.unwrap()
}

#[tokio::test]
async fn a_decision_naming_a_step_outside_its_children_fails_permanently_naming_them() {
    let h = Harness::new().await;
    h.register(&one_decision("")).await;
    let t = run_choose(&h, Decision::new(["middle"]).into_value()).await;
    assert_eq!(t.status, TaskState::Error);
    let pick = t.step("pick").unwrap();
    assert_eq!(pick.status, StepState::Error);
    assert_eq!(pick.attempts, 1, "permanent: not retried");
    let msg = pick.error.as_ref().unwrap()["message"].as_str().unwrap();
    assert!(
        msg.contains("\"middle\"") && msg.contains("left, right"),
        "{msg}"
    );
    assert_eq!(step_names(&t), ["pick"]);
}

#[tokio::test]
async fn a_decision_step_returning_plain_results_fails_and_a_plain_step_may_not_decide() {
    let h = Harness::new().await;
    h.register(&one_decision("  - {name: after, depends_on_step: left}\n"))
        .await;
    let t = run_choose(&h, json!({"route": "left"})).await;
    let msg = t.step("pick").unwrap().error.as_ref().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("must return a Decision") && msg.contains("left, right"),
        "{msg}"
    );

    let mut r = registry_deciding(Decision::new(["left"]).into_value());
    r.register_fn("left", |_| async move {
        Ok(Decision::new(["after"]).into_value())
    });
    let id = h
        .engine
        .create_task(TaskRequest::new("choose", json!({})))
        .await
        .unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    let left = t.step("left").unwrap();
    assert_eq!(left.status, StepState::Error);
    let msg = left.error.as_ref().unwrap()["message"].as_str().unwrap();
    assert!(
        msg.contains("only a step of type: decision may decide"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_decision_choosing_nothing_completes_the_task_without_its_branches() {
    let h = Harness::new().await;
    h.register(&one_decision(
        "  - {name: after, type: deferred_convergence, depends_on_steps: [left, right]}\n",
    ))
    .await;
    let t = run_choose(&h, Decision::new(Vec::<String>::new()).into_value()).await;
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(step_names(&t), ["pick"]);
}

#[tokio::test]
async fn nested_decisions_decide_in_turn() {
    let h = Harness::new().await;
    h.register(
        r#"
name: nested
step_templates:
  - {name: outer, type: decision}
  - {name: inner, type: decision, depends_on_step: outer}
  - {name: other, depends_on_step: outer}
  - {name: x, depends_on_step: inner}
  - {name: y, depends_on_step: inner}
  - {name: join, type: deferred_convergence, depends_on_steps: [x, y, other]}
"#,
    )
    .await;
    let mut r = Registry::new();
    r.register_fn("outer", |_| async {
        Ok(Decision::new(["inner"]).into_value())
    });
    r.register_fn("inner", |_| async { Ok(Decision::new(["y"]).into_value()) });
    for n in ["other", "x", "y"] {
        r.register_fn(n, |step| async move { Ok(json!(step.step_name)) });
    }
    r.register_fn("join", |step| async move {
        Ok(json!(step.results.keys().cloned().collect::<Vec<_>>()))
    });
    let id = h
        .engine
        .create_task(TaskRequest::new("nested", json!({})))
        .await
        .unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(step_names(&t), ["inner", "join", "outer", "y"]);
    assert_eq!(t.step("join").unwrap().results, json!(["y"]));
}

#[tokio::test]
async fn a_convergence_waits_until_every_decision_above_it_has_decided() {
    let h = Harness::new().await;
    h.register(
        r#"
name: two_decisions
step_templates:
  - {name: d1, type: decision}
  - {name: d2, type: decision}
  - {name: a, depends_on_step: d1}
  - {name: b, depends_on_step: d2}
  - {name: join, type: deferred_convergence, depends_on_steps: [a, b]}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("two_decisions", json!({})))
        .await
        .unwrap();
    // d1 decides and `a` runs while d2 fails and waits for its next attempt.
    let mut r = Registry::new();
    r.register_fn("d1", |_| async { Ok(Decision::new(["a"]).into_value()) });
    r.register_fn("d2", |_| async {
        Err::<Value, _>(HandlerError::retry_after(
            "not yet",
            Duration::from_secs(60),
        ))
    });
    r.register_fn("a", |_| async { Ok(json!("a")) });
    r.register_fn("b", |_| async { Ok(json!("b")) });
    r.register_fn("join", |step| async move {
        Ok(json!(step.results.keys().cloned().collect::<Vec<_>>()))
    });
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::InProgress);
    assert_eq!(step_names(&t), ["a", "d1", "d2"], "join waits for d2");
    assert_eq!(t.step("a").unwrap().status, StepState::Complete);

    // The failed decision's next attempt decides.
    r.register_fn("d2", |_| async { Ok(Decision::new(["b"]).into_value()) });
    h.advance(Duration::from_secs(61));
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(t.step("join").unwrap().results, json!(["a", "b"]));
}

/// A `choose` task whose decision failed permanently: the task is in `error`.
async fn exhausted_decision() -> (Harness, Registry, i64) {
    let h = Harness::new().await;
    h.register(&one_decision("")).await;
    let mut r = registry_deciding(json!(null));
    r.register_fn("pick", |_| async {
        Err::<Value, _>(HandlerError::permanent("down"))
    });
    let id = h
        .engine
        .create_task(TaskRequest::new("choose", json!({})))
        .await
        .unwrap();
    h.drive(&r).await;
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Error
    );
    (h, r, id)
}

#[tokio::test]
async fn an_operator_retry_of_an_exhausted_decision_lets_it_decide() {
    let (h, mut r, id) = exhausted_decision().await;
    r.register_fn("pick", |_| async {
        Ok(Decision::new(["right"]).into_value())
    });
    h.engine.retry_step(id, "pick").await.unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(step_names(&t), ["pick", "right"]);
    // A decided decision is not decided again.
    let err = h.engine.retry_step(id, "pick").await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
}

#[tokio::test]
async fn resolving_a_failed_decision_by_hand_takes_no_branch() {
    let (h, _r, id) = exhausted_decision().await;
    h.engine
        .resolve_step_manually(id, "pick", json!({"by": "operator"}))
        .await
        .unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(step_names(&t), ["pick"]);
}

#[tokio::test]
async fn a_step_below_a_decision_cannot_be_bypassed_at_creation() {
    let h = Harness::new().await;
    h.register(&one_decision("").replace(
        "{name: left, depends_on_step: pick}",
        "{name: left, depends_on_step: pick, skippable: true}",
    ))
    .await;
    let err = h
        .engine
        .create_task(TaskRequest::new("choose", json!({})).bypass(&["left"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation(m) if m.contains("a decision above it")),
        "{err}"
    );
}

#[test]
fn templates_with_run_time_shapes_are_checked_at_registration() {
    let err = |yaml: &str| TaskTemplate::from_yaml(yaml, None).unwrap_err().to_string();
    let e = err("name: t\nstep_templates:\n  - {name: d, type: decision}\n");
    assert!(
        e.contains("step \"d\"") && e.contains("needs steps that depend on it"),
        "{e}"
    );
    let e = err("name: t\nsteps:\n  - {name: c, type: deferred_convergence}\n");
    assert!(e.contains("no possible input"), "{e}");
    let e = err("name: t\nsteps:\n  - {name: b, type: batchable}\n");
    assert!(
        e.contains("needs a batch_worker step that depends on it"),
        "{e}"
    );
    let e = err("name: t\nsteps:\n  - {name: b, type: branching}\n");
    assert!(
        e.contains("unknown variant") && e.contains("decision"),
        "{e}"
    );
    // The real format's shape loads: which steps exist at the start.
    let t = TaskTemplate::from_yaml(APPROVAL, None).unwrap();
    let start: Vec<&str> = t
        .steps
        .iter()
        .filter(|s| s.created_at_start)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(start, ["validate_request", "routing_decision"]);
}

#[tokio::test]
async fn a_command_step_decides_with_the_decision_shape_on_its_stdout() {
    let h = Harness::new().await;
    h.register(
        r#"
name: choose_by_command
step_templates:
  - name: pick
    type: decision
    handler_class: command
    handler_config: {command: "printf '{\"$decision\": [\"right\"], \"results\": {\"why\": \"cli\"}}'"}
  - {name: left, depends_on_step: pick, handler_class: command, handler_config: {command: "echo left"}}
  - {name: right, depends_on_step: pick, handler_class: command, handler_config: {command: "echo right"}}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("choose_by_command", json!({})))
        .await
        .unwrap();
    h.drive(&Registry::with_builtins()).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(step_names(&t), ["pick", "right"]);
    assert_eq!(t.step("pick").unwrap().results, json!({"why": "cli"}));
}
