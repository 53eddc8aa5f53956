//! Fan-out: a `batchable` step returns items, its `batch_worker` child runs once per item
//! (each instance with its own attempts), and a `deferred_convergence` step gathers their
//! results as one list in item order; checkpoints carry an attempt's progress to the next.
//! Every scenario runs on each backend (`TASKER_TEST_BACKEND`).

use serde_json::{json, Value};
use tasker_conformance::Harness;
use tasker_core::{
    Batches, Error, HandlerError, Registry, StepState, TaskRequest, TaskState, TaskTemplate,
};

const CSV: &str = include_str!("../fixtures/tasker_core/batch_processing.yaml");
const INVENTORY: &str = include_str!("../fixtures/tasker_core/csv_inventory.yaml");

/// The fan-out template: `plan` splits `context.rows` into ranges of `context.size`.
fn fan_out(extra: &str) -> String {
    format!(
        r#"
name: fan
steps:
  - {{name: plan, type: batchable}}
  - name: work
    type: batch_worker
    dependencies: [plan]
    retry: {{max_attempts: 3}}
    backoff: {{base_seconds: 0, jitter: 0}}
{extra}
  - {{name: total, type: deferred_convergence, dependencies: [work]}}
"#
    )
}

fn handlers() -> Registry {
    let mut r = Registry::new();
    r.register_fn("plan", |step| async move {
        let rows = step.context["rows"].as_i64().unwrap();
        let size = step.context["size"].as_i64().unwrap();
        let items: Vec<Value> = (0..rows)
            .step_by(size as usize)
            .map(|start| json!({"start": start, "end": (start + size).min(rows)}))
            .collect();
        Ok(Batches::new(items)
            .results(json!({"rows": rows}))
            .into_value())
    });
    r.register_fn("work", |step| async move {
        let b = step.batch.clone().expect("an instance has its item");
        let (start, end) = (b["start"].as_i64().unwrap(), b["end"].as_i64().unwrap());
        Ok(json!({
            "index": step.batch_index,
            "name": step.step_name,
            "sum": (start..end).sum::<i64>(),
            "rows": step.results["plan"]["rows"],
        }))
    });
    r.register_fn("total", |step| async move {
        let list = step.results["work"].as_array().cloned().unwrap_or_default();
        let sum: i64 = list.iter().filter_map(|r| r["sum"].as_i64()).sum();
        let order: Vec<Value> = list.iter().map(|r| r["index"].clone()).collect();
        Ok(json!({"sum": sum, "order": order, "keys": step.results.keys().collect::<Vec<_>>()}))
    });
    r
}

/// [`handlers`] with `work` failing as `fail` says (None: it does its work).
fn failing(fail: fn(&tasker_core::StepContext) -> Option<HandlerError>) -> Registry {
    let mut r = handlers();
    let base = handlers();
    r.register_fn("work", move |step| {
        let base = base.clone();
        async move {
            match fail(&step) {
                Some(e) => Err(e),
                None => base.get("work").unwrap().call(&step).await,
            }
        }
    });
    r
}

async fn run(h: &Harness, rows: i64, size: i64, r: &Registry) -> tasker_core::TaskSnapshot {
    let id = h
        .engine
        .create_task(TaskRequest::new("fan", json!({"rows": rows, "size": size})))
        .await
        .unwrap();
    h.drive(r).await;
    h.engine.get_task(id).await.unwrap()
}

#[tokio::test]
async fn a_fan_out_runs_one_instance_per_item_and_the_convergence_gets_their_results_in_order() {
    let h = Harness::new().await;
    h.register(&fan_out("")).await;
    let t = run(&h, 100, 9, &handlers()).await;
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    // 12 instances named after the worker, then the convergence.
    let workers: Vec<&str> = t
        .steps
        .iter()
        .filter(|s| s.name.starts_with("work_"))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(workers.len(), 12);
    assert_eq!(workers[0], "work_001");
    assert_eq!(workers[11], "work_012");
    assert_eq!(t.steps.len(), 14);
    let total = &t.step("total").unwrap().results;
    assert_eq!(total["sum"], json!((0..100).sum::<i64>()));
    assert_eq!(total["order"], json!((0..12).collect::<Vec<_>>()));
    assert_eq!(total["keys"], json!(["work"]));
    let third = &t.step("work_003").unwrap().results;
    assert_eq!(third["index"], json!(2));
    assert_eq!(third["name"], json!("work_003"));
    assert_eq!(
        third["rows"],
        json!(100),
        "an instance sees its batchable parent's results"
    );
    assert_eq!(t.step("plan").unwrap().results, json!({"rows": 100}));
    let listed = h
        .engine
        .list_tasks(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.id == t.id)
        .unwrap();
    assert_eq!((listed.steps_done, listed.steps_total), (14, 14));
}

#[tokio::test]
async fn a_fan_outs_instances_are_snapshotted_in_item_order_and_drawn_as_one_group() {
    let h = Harness::new().await;
    // continue_on_failure: every instance runs whatever the failed one does.
    h.register(&fan_out(
        "    batch_config: {failure_strategy: continue_on_failure}",
    ))
    .await;
    let r = failing(|step| (step.batch_index == Some(10)).then(|| HandlerError::permanent("bad")));
    let t = run(&h, 12, 1, &r).await;
    let instances: Vec<(String, Option<u32>)> = t
        .steps
        .iter()
        .filter(|s| s.instance_of.as_deref() == Some("work"))
        .map(|s| (s.name.clone(), s.batch_index))
        .collect();
    let expected: Vec<(String, Option<u32>)> = (0..12)
        .map(|i| (format!("work_{:03}", i + 1), Some(i)))
        .collect();
    assert_eq!(instances, expected, "in item order, each with its place");
    assert!(t.step("plan").unwrap().instance_of.is_none());
    let template = h.engine.template(None, "fan", None).await.unwrap();
    let text = tasker_core::diagram::mermaid(&template, Some(&t));
    assert!(
        text.contains("work ×12<br/>11 complete · 1 error"),
        "{text}"
    );
    assert!(text.contains("total<br/>complete"), "{text}");
    assert!(
        !text.contains("work_001"),
        "instances are not drawn one by one: {text}"
    );
    let g = tasker_core::diagram::graph(&template, Some(&t));
    let work = g.nodes.iter().find(|n| n.name == "work").unwrap();
    assert_eq!(work.instances.len(), 12);
    assert_eq!(
        work.status,
        Some(StepState::Error),
        "a group shows what needs attention"
    );
}

#[tokio::test]
async fn a_fan_out_with_no_items_runs_the_convergence_with_an_empty_list() {
    let h = Harness::new().await;
    h.register(&fan_out("")).await;
    let t = run(&h, 0, 5, &handlers()).await;
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    let mut names: Vec<&str> = t.steps.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["plan", "total"]);
    assert_eq!(t.step("total").unwrap().results["order"], json!([]));
}

#[tokio::test]
async fn a_fan_out_over_its_limit_fails_permanently_naming_both_numbers() {
    let h = Harness::new().await;
    h.register(&fan_out("    batch_config: {max_instances: 3}"))
        .await;
    let t = run(&h, 10, 2, &handlers()).await;
    assert_eq!(t.status, TaskState::Error);
    let plan = t.step("plan").unwrap();
    assert_eq!(plan.attempts, 1, "permanent: not retried");
    let msg = plan.error.as_ref().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("5 items") && msg.contains("at most 3"),
        "{msg}"
    );
    assert_eq!(t.steps.len(), 1, "no instance was created");
}

#[tokio::test]
async fn each_instance_retries_on_its_own_and_an_exhausted_one_blocks_the_task_until_retried() {
    let h = Harness::new().await;
    h.register(&fan_out("")).await;
    let r = failing(|step| match step.batch_index {
        // The second instance fails once, then succeeds.
        Some(1) if step.key.attempt == 1 => Some(HandlerError::retryable("flaky")),
        // The fourth fails for good until an operator retries it.
        Some(3) if step.key.attempt < 10 && !step.context["fixed"].as_bool().unwrap_or(false) => {
            Some(HandlerError::permanent("bad row"))
        }
        _ => None,
    });
    let t = run(&h, 10, 2, &r).await;
    assert_eq!(t.status, TaskState::Error, "{t:?}");
    // Both failed in one batch: the exhausted one blocks the task, so the flaky one's retry
    // waits (fail_fast: nothing new starts), as for any exhausted step.
    assert_eq!(t.step("work_004").unwrap().status, StepState::Error);
    assert_eq!(t.step("work_002").unwrap().attempts, 1);
    assert_eq!(t.step("work_005").unwrap().status, StepState::Complete);
    assert_eq!(t.step("total").unwrap().status, StepState::Pending);
    // The operator retries the failed instance by its name; the task completes.
    h.engine.retry_step(t.id, "work_004").await.unwrap();
    h.drive(&handlers()).await;
    let t = h.engine.get_task(t.id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(
        t.step("work_002").unwrap().attempts,
        2,
        "retried on its own"
    );
    assert_eq!(
        t.step("work_004").unwrap().attempts,
        1,
        "the operator's retry starts afresh"
    );
    assert_eq!(t.step("total").unwrap().results["sum"], json!(45));
}

#[tokio::test]
async fn under_continue_on_failure_the_convergence_runs_with_the_failed_instances_marked() {
    let h = Harness::new().await;
    h.register(&fan_out(
        "    batch_config: {failure_strategy: continue_on_failure}",
    ))
    .await;
    let mut r = failing(|step| match step.batch_index {
        // The second instance fails once, then succeeds: retries still happen.
        Some(1) if step.key.attempt == 1 => Some(HandlerError::retryable("flaky")),
        // The fourth is out of attempts after three.
        Some(3) => Some(HandlerError::retryable("row 7 is malformed")),
        // The fifth fails permanently at once.
        Some(4) => Some(HandlerError::permanent("row 9 is missing")),
        _ => None,
    });
    // The convergence fails for good once, so the task stops in `error` with the instances'
    // failures in place, for the operator checks below.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    r.register_fn("total", move |step| {
        let first = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        async move {
            if first {
                return Err(HandlerError::permanent("not yet"));
            }
            let list = step.results["work"].as_array().cloned().unwrap();
            let failed: Vec<Value> = list
                .iter()
                .filter_map(|e| e.get("$failed").map(|f| f["message"].clone()))
                .collect();
            let sum: i64 = list.iter().filter_map(|e| e["sum"].as_i64()).sum();
            Ok(json!({"entries": list.len(), "failed": failed, "sum": sum}))
        }
    });
    let t = run(&h, 10, 2, &r).await;
    assert_eq!(t.status, TaskState::Error, "{t:?}");
    assert_eq!(
        t.step("total").unwrap().status,
        StepState::Error,
        "the convergence ran"
    );
    // The instances' failures are final: operators cannot change an instance counted as
    // finished (its convergence already has its failure).
    for e in [
        h.engine.retry_step(t.id, "work_004").await.unwrap_err(),
        h.engine.cancel_step(t.id, "work_005").await.unwrap_err(),
        h.engine
            .set_step_retry_limit(t.id, "work_004", 5)
            .await
            .unwrap_err(),
        h.engine
            .resolve_step_manually(t.id, "work_004", json!({}))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(e.to_string().contains("continue_on_failure"), "{e}");
    }
    h.engine.retry_step(t.id, "total").await.unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(t.id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    let total = &t.step("total").unwrap().results;
    assert_eq!(
        total["entries"],
        json!(5),
        "one entry per item, failed ones included"
    );
    assert_eq!(
        total["failed"],
        json!(["row 7 is malformed", "row 9 is missing"])
    );
    assert_eq!(total["sum"], json!((0..6).sum::<i64>()), "rows 0..6 summed");
    let fourth = t.step("work_004").unwrap();
    assert_eq!((fourth.status, fourth.attempts), (StepState::Error, 3));
    assert_eq!(
        t.step("work_005").unwrap().attempts,
        1,
        "permanent: not retried"
    );
    assert_eq!(t.step("work_002").unwrap().attempts, 2);
    let failed = h
        .engine
        .transitions(t.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|x| {
            serde_json::from_str::<Value>(&x.metadata).unwrap()["continue_on_failure"]
                == json!(true)
        })
        .count();
    assert_eq!(
        failed, 2,
        "each tolerated failure says so on its transition"
    );
}

#[tokio::test]
async fn lowering_a_waiting_instances_retry_limit_under_continue_on_failure_lets_the_convergence_run(
) {
    let h = Harness::new().await;
    h.register(
        "name: fan\nsteps:\n  - {name: plan, type: batchable}\n  - name: work\n    type: batch_worker\n    dependencies: [plan]\n    retry: {max_attempts: 3}\n    backoff: {base_seconds: 600, jitter: 0}\n    batch_config: {failure_strategy: continue_on_failure}\n  - {name: total, type: deferred_convergence, dependencies: [work]}\n",
    )
    .await;
    let mut r = failing(|step| {
        (step.batch_index == Some(1)).then(|| HandlerError::retryable("upstream down"))
    });
    r.register_fn("total", |step| async move {
        let list = step.results["work"].as_array().cloned().unwrap();
        Ok(json!({"failed": list.iter().filter(|e| e.get("$failed").is_some()).count(), "n": list.len()}))
    });
    let t = run(&h, 6, 2, &r).await;
    assert_eq!(
        t.step("work_002").unwrap().status,
        StepState::Error,
        "waiting 600 s for its retry"
    );
    assert_eq!(
        t.step("total").unwrap().status,
        StepState::Pending,
        "it waits for work_002"
    );
    // No attempts left under the new limit: a tolerated failure at once, not a blocked task.
    h.engine
        .set_step_retry_limit(t.id, "work_002", 1)
        .await
        .unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(t.id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(
        t.step("total").unwrap().results,
        json!({"failed": 1, "n": 3})
    );
    assert_eq!(t.step("work_002").unwrap().attempts, 1);
}

#[tokio::test]
async fn tasker_cores_csv_layout_with_continue_on_failure_aggregates_the_batches_that_worked() {
    let h = Harness::new().await;
    h.register(INVENTORY).await;
    let mut r = Registry::new();
    r.register_fn(
        "CsvProcessing::StepHandlers::CsvAnalyzerHandler",
        |step| async move {
            let size = step.config["batch_size"].as_i64().unwrap();
            let rows = step.context["rows"].as_i64().unwrap();
            let ranges: Vec<Value> = (0..rows)
                .step_by(size as usize)
                .map(|s| json!({"start_cursor": s, "end_cursor": (s + size).min(rows)}))
                .collect();
            Ok(Batches::new(ranges)
                .results(json!({"total_rows": rows}))
                .into_value())
        },
    );
    r.register_fn(
        "csv_processing.step_handlers.process_csv_batch",
        |step| async move {
            let b = step.batch.clone().unwrap();
            if b["start_cursor"] == json!(400) {
                return Err(HandlerError::retryable("row 431: price is not a number"));
            }
            let n = b["end_cursor"].as_i64().unwrap() - b["start_cursor"].as_i64().unwrap();
            Ok(json!({"processed": n, "operation": step.config["operation"]}))
        },
    );
    r.register_fn(
        "csv_processing.step_handlers.aggregate_csv_results",
        |step| async move {
            let list = step.results["process_csv_batch"]
                .as_array()
                .cloned()
                .unwrap();
            let processed: i64 = list.iter().filter_map(|e| e["processed"].as_i64()).sum();
            let failed: Vec<usize> = (0..list.len())
                .filter(|&i| list[i].get("$failed").is_some())
                .collect();
            Ok(json!({"processed": processed, "failed_batches": failed}))
        },
    );
    let id = h
        .engine
        .create_task(
            TaskRequest::new("csv_inventory_analyzer", json!({"rows": 1000}))
                .namespace("csv_processing"),
        )
        .await
        .unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    let agg = &t.step("aggregate_csv_results").unwrap().results;
    assert_eq!(agg, &json!({"processed": 800, "failed_batches": [2]}));
    let bad = t.step("process_csv_batch_003").unwrap();
    assert_eq!(
        (bad.status, bad.attempts),
        (StepState::Error, 2),
        "its retry ran first"
    );
}

#[tokio::test]
async fn cancelling_one_instance_cancels_it_and_its_convergence_not_its_siblings() {
    let h = Harness::new().await;
    h.register(&fan_out("")).await;
    let r = failing(|step| match step.batch_index {
        Some(1) => Some(HandlerError::permanent("bad row")),
        // Fails once: waits for its retry while the task is blocked.
        Some(2) if step.key.attempt == 1 => Some(HandlerError::retryable("flaky")),
        _ => None,
    });
    let t = run(&h, 6, 2, &r).await;
    assert_eq!(t.status, TaskState::Error, "{t:?}");
    assert_eq!(
        t.step("work_003").unwrap().status,
        StepState::Error,
        "waiting for its retry"
    );
    h.engine.cancel_step(t.id, "work_002").await.unwrap();
    let t = h.engine.get_task(t.id).await.unwrap();
    assert_eq!(t.step("work_002").unwrap().status, StepState::Cancelled);
    assert_eq!(
        t.step("total").unwrap().status,
        StepState::Cancelled,
        "it depends on every instance"
    );
    assert_eq!(t.step("work_001").unwrap().status, StepState::Complete);
    assert_eq!(
        t.step("work_003").unwrap().status,
        StepState::Error,
        "a sibling, not a dependent"
    );
    h.drive(&r).await;
    let t = h.engine.get_task(t.id).await.unwrap();
    assert_eq!(
        t.step("work_003").unwrap().status,
        StepState::Complete,
        "its retry ran"
    );
    assert_eq!(
        t.status,
        TaskState::Complete,
        "cancelled steps count as finished: {t:?}"
    );
}

#[tokio::test]
async fn a_checkpoint_is_seen_by_the_next_attempt_and_after_an_operator_retry() {
    let h = Harness::new().await;
    h.register(
        "name: resumable\nsteps:\n  - {name: copy, retry: {max_attempts: 2}, backoff: {base_seconds: 0, jitter: 0}}\n",
    )
    .await;
    let engine = h.engine.clone();
    let mut r = Registry::new();
    r.register_fn("copy", move |step| {
        let engine = engine.clone();
        async move {
            let done = step
                .checkpoint
                .as_ref()
                .map_or(0, |c| c["done"].as_i64().unwrap());
            let next = done + 10;
            engine
                .save_checkpoint(&step.key, &json!({"done": next}))
                .await
                .map_err(|e| HandlerError::retryable(e.to_string()))?;
            if next < 40 {
                return Err(HandlerError::retryable(format!("stopped at {next}")));
            }
            Ok(json!({"resumed_from": done}))
        }
    });
    let id = h
        .engine
        .create_task(TaskRequest::new("resumable", json!({})))
        .await
        .unwrap();
    h.drive(&r).await;
    // Two attempts: 0 -> 10, 10 -> 20; then out of attempts.
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Error);
    h.engine.retry_step(id, "copy").await.unwrap();
    h.drive(&r).await;
    // The operator's retry starts from 20: 20 -> 30, 30 -> 40.
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    assert_eq!(t.step("copy").unwrap().results, json!({"resumed_from": 30}));
}

#[tokio::test]
async fn only_the_attempt_that_holds_a_step_may_save_its_checkpoint() {
    let h = Harness::new().await;
    h.register("name: one\nsteps:\n  - {name: s}\n").await;
    let id = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    let job = h.claim("w", 1).await.remove(0);
    h.engine
        .save_checkpoint(&job.key, &json!({"at": 1}))
        .await
        .unwrap();
    let mut stale = job.key;
    stale.attempt += 1;
    let e = h
        .engine
        .save_checkpoint(&stale, &json!({"at": 2}))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    let e = h
        .engine
        .save_checkpoint(&job.key, &json!({"bad": "a\u{0}b"}))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Validation(_)), "{e}");
    let _ = id;
}

#[tokio::test]
async fn tasker_cores_decision_then_batch_layout_runs_the_branch_it_chose() {
    let h = Harness::new().await;
    h.register(CSV).await;
    let mut r = Registry::new();
    r.register_fn("start", |step| async move {
        Ok(step.context["numbers"].clone())
    });
    r.register_fn("evens", |step| async move {
        let n = step.results["ddb_diamond_start"].as_array().unwrap();
        Ok(json!(n
            .iter()
            .filter(|x| x.as_i64().unwrap() % 2 == 0)
            .collect::<Vec<_>>()))
    });
    r.register_fn("odds", |step| async move {
        let n = step.results["ddb_diamond_start"].as_array().unwrap();
        Ok(json!(n
            .iter()
            .filter(|x| x.as_i64().unwrap() % 2 == 1)
            .collect::<Vec<_>>()))
    });
    r.register_fn("route", |step| async move {
        let e = step.results["branch_evens"].as_array().unwrap().len();
        let o = step.results["branch_odds"].as_array().unwrap().len();
        let pick = if e >= o {
            "even_batch_analyzer"
        } else {
            "odd_batch_analyzer"
        };
        Ok(tasker_core::Decision::new([pick]).into_value())
    });
    r.register_fn("analyze", |step| async move {
        let size = step.config["batch_size"].as_u64().unwrap() as usize;
        let nums: Vec<Value> = step.context["numbers"].as_array().unwrap().clone();
        let odd = step.step_name.starts_with("odd");
        let mine: Vec<Value> = nums
            .into_iter()
            .filter(|x| (x.as_i64().unwrap() % 2 == 1) == odd)
            .collect();
        Ok(Batches::new(mine.chunks(size).map(|c| json!(c))).into_value())
    });
    r.register_fn("sum", |step| async move {
        Ok(json!(step
            .batch
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .sum::<i64>()))
    });
    r.register_fn("aggregate", |step| async move {
        let (name, list) = step.results.iter().next().unwrap();
        Ok(json!({"from": name, "sums": list}))
    });
    let id = h
        .engine
        .create_task(
            TaskRequest::new(
                "diamond_decision_batch_processor",
                json!({"numbers": [1, 3, 5, 7, 2, 4]}),
            )
            .namespace("combined_workflow_test"),
        )
        .await
        .unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:?}");
    let agg = &t.step("aggregate_odd_results").unwrap().results;
    assert_eq!(agg, &json!({"from": "process_odd_batch", "sums": [4, 12]}));
    assert!(
        t.step("even_batch_analyzer").is_none(),
        "the branch not taken never exists"
    );
    assert!(t.step("process_odd_batch_002").is_some());
}

#[test]
fn fan_out_templates_are_checked_at_registration() {
    let bad = |yaml: &str, want: &str| {
        let e = TaskTemplate::from_yaml(yaml, None).expect_err(yaml);
        let m = e.to_string();
        assert!(m.contains(want), "{m}\n  wanted: {want}");
    };
    bad(
        "name: t\nsteps:\n  - {name: a}\n  - {name: w, type: batch_worker, dependencies: [a]}\n",
        "a batch_worker step needs exactly one dependency, the batchable step",
    );
    bad(
        "name: t\nsteps:\n  - {name: p, type: batchable}\n  - {name: a, dependencies: [p]}\n",
        "a batchable step needs a batch_worker step that depends on it",
    );
    bad(
        "name: t\nsteps:\n  - {name: p, type: batchable}\n  - {name: w, type: batch_worker, dependencies: [p], batch_config: {max_instances: 0}}\n",
        "a fan-out limit below 1",
    );
    bad(
        "name: t\nsteps:\n  - {name: a, batch_config: {batch_size: 3}}\n",
        "batch_config is read on batch_worker steps only",
    );
    bad(
        "name: t\nsteps:\n  - {name: p, type: batchable}\n  - {name: w, type: batch_worker, dependencies: [p]}\n  - {name: w_002}\n",
        "step \"w_002\" has such a name",
    );
    bad(
        "name: t\nsteps:\n  - {name: p, type: batchable}\n  - {name: w, type: batch_worker, dependencies: [p], batch_config: {failure_strategy: keep_going}}\n",
        "keep_going",
    );
    let t = TaskTemplate::from_yaml(
        "name: t\nsteps:\n  - {name: p, type: batchable}\n  - {name: w, type: batch_worker, dependencies: [p], batch_config: {failure_strategy: continue_on_failure}}\n",
        None,
    )
    .expect("continue_on_failure is accepted");
    assert!(t.steps[1].tolerates_failure());
    // The original format takes the same names.
    TaskTemplate::from_yaml(
        "name: t\nstep_templates:\n  - {name: p, type: batchable}\n  - {name: w, type: batch_worker, depends_on_step: p, batch_config: {max_instances: 5}}\n  - {name: c, type: deferred_convergence, depends_on_step: w}\n",
        None,
    )
    .expect("valid");
}
