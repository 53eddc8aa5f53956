//! Property tests over bad input: random and mutated templates (YAML text and JSON documents)
//! and arbitrary handler results. Nothing may panic; every template error names the template
//! or the YAML position; every result a handler returns is stored and read back unchanged.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{json, Map, Value};
use tasker_conformance::Harness;
use tasker_core::{Claim, Outcome, Report, TaskRequest, TaskState, TaskTemplate};

/// CI runs a fixed seed (reproducible; a failure there is the code's, not the dice's);
/// `PROPTEST_RNG_SEED=<n>` or `TASKER_FUZZ_RANDOM=1` explores other cases.
fn seed() -> RngSeed {
    if std::env::var("TASKER_FUZZ_RANDOM").is_ok_and(|v| v == "1") {
        return RngSeed::Random;
    }
    match std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => RngSeed::Fixed(n),
        None => RngSeed::Fixed(0x7a5c_e12b),
    }
}

/// Template errors all start with "template " and then say where: a YAML position, the
/// template's name, or the file.
fn assert_placed(msg: &str) {
    assert!(msg.starts_with("template "), "unplaced error: {msg}");
    assert!(msg.len() > "template ".len() + 3, "empty error: {msg}");
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// Values a template field could plausibly hold, right or wrong.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any_json(),
        Just(json!("a")),
        Just(json!(["a", "b"])),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!("1.0")),
        Just(json!({"base_seconds": -1})),
        Just(json!({"type": "object", "required": ["x"]})),
    ]
}

const STEP_FIELDS: &[&str] = &[
    "name",
    "handler_class",
    "depends_on_step",
    "depends_on_steps",
    "default_retryable",
    "default_retry_limit",
    "skippable",
    "handler_config",
    "backoff",
    "timeout_seconds",
    "dependencies",
    "retry",
    "handler",
    "bogus_field",
];
const TOP_FIELDS: &[&str] = &[
    "name",
    "namespace_name",
    "version",
    "schema",
    "environments",
    "description",
    "bogus_field",
];

/// A valid template with some fields replaced by random values.
fn mutated_template() -> impl Strategy<Value = Value> {
    let base = json!({
        "name": "fuzzed",
        "version": "1.0.0",
        "step_templates": [
            {"name": "a"},
            {"name": "b", "depends_on_step": "a"},
            {"name": "c", "depends_on_steps": ["a", "b"], "default_retry_limit": 2},
        ]
    });
    (
        prop::collection::vec((0..3usize, 0..STEP_FIELDS.len(), field_value()), 0..4),
        prop::collection::vec((0..TOP_FIELDS.len(), field_value()), 0..3),
    )
        .prop_map(move |(step_muts, top_muts)| {
            let mut doc = base.clone();
            for (i, f, v) in step_muts {
                doc["step_templates"][i][STEP_FIELDS[f]] = v;
            }
            for (f, v) in top_muts {
                doc[TOP_FIELDS[f]] = v;
            }
            doc
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, rng_seed: seed(), .. ProptestConfig::default() })]

    #[test]
    fn random_yaml_text_never_panics_and_errors_are_placed(src in "[ -~\n]{0,200}") {
        if let Err(e) = TaskTemplate::from_yaml(&src, None) {
            assert_placed(&e.to_string());
        }
    }

    #[test]
    fn yaml_shaped_noise_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                Just("name: x".to_owned()),
                Just("step_templates:".to_owned()),
                Just("  - name: a".to_owned()),
                Just("    depends_on_step: a".to_owned()),
                Just("    default_retry_limit: 0".to_owned()),
                Just("  - {name: b, depends_on_steps: [a, b]}".to_owned()),
                Just("version: 1.x".to_owned()),
                Just("schema: {type: object, required: [q]}".to_owned()),
                "[ -~]{0,30}",
            ],
            0..12,
        )
    ) {
        if let Err(e) = TaskTemplate::from_yaml(&lines.join("\n"), Some("test")) {
            assert_placed(&e.to_string());
        }
    }

    #[test]
    fn mutated_templates_never_panic_and_errors_are_placed(doc in mutated_template()) {
        match TaskTemplate::from_value(doc.clone(), None) {
            Ok(t) => prop_assert!(!t.steps.is_empty()),
            Err(e) => {
                let msg = e.to_string();
                assert_placed(&msg);
                // Named by its name; a template whose name is missing or broken is `<unnamed>`.
                let want = match doc["name"].as_str() {
                    Some(n) => n.to_owned(), // as the name or the key namespace.name@version
                    None => "template <unnamed>: ".to_owned(),
                };
                prop_assert!(msg.contains(&want), "the error does not name the template: {msg} for {doc}");
            }
        }
    }

    #[test]
    fn any_json_document_as_a_template_never_panics(doc in any_json()) {
        if let Err(e) = TaskTemplate::from_value(doc, None) {
            assert_placed(&e.to_string());
        }
    }
}

/// Equal as JSON: numbers by value. PostgreSQL's `jsonb` keeps numbers as `numeric`, so a
/// whole float such as `5.98e16` comes back written as an integer: the same JSON number.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Arbitrary handler results are stored and handed to the children unchanged.
#[test]
fn arbitrary_handler_results_round_trip_through_the_store() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        rng_seed: seed(),
        ..ProptestConfig::default()
    });
    let h = rt.block_on(Harness::new());
    rt.block_on(h.register(
        "name: pair\nstep_templates:\n  - {name: first}\n  - {name: second, depends_on_step: first}\n",
    ));
    let claim = Claim {
        worker_id: "fuzz".into(),
        max: 1,
        handlers: None,
    };
    runner
        .run(&any_json(), |value| {
            rt.block_on(async {
                let id = h
                    .engine
                    .create_task(TaskRequest::new("pair", json!({})))
                    .await
                    .unwrap();
                let job = h.claim("fuzz", 1).await.remove(0);
                assert_eq!(job.task_id(), id);
                let c = h
                    .engine
                    .report(
                        &[Report {
                            key: job.key,
                            outcome: Outcome::Complete(value.clone()),
                        }],
                        Some(&claim),
                    )
                    .await
                    .expect("a report never fails the transaction, whatever the results");
                if let Some(path) = tasker_core::engine::decide::nul_path(&value) {
                    // Not storable on PostgreSQL: refused alike on every backend, the step
                    // failed for good with the place named.
                    assert!(c.jobs.is_empty());
                    let t = h.engine.get_task(id).await.unwrap();
                    assert_eq!(t.status, TaskState::Error);
                    let err = t.step("first").unwrap().error.clone().unwrap();
                    assert!(err["message"].as_str().unwrap().contains(&path), "{err}");
                    return;
                }
                let next = c.jobs.into_iter().next().expect("the child is claimed");
                assert!(
                    same_json(&next.results["first"], &value),
                    "the child sees it unchanged: {} vs {value}",
                    next.results["first"]
                );
                h.engine
                    .report(
                        &[Report {
                            key: next.key,
                            outcome: Outcome::Complete(Value::Null),
                        }],
                        None,
                    )
                    .await
                    .unwrap();
                let t = h.engine.get_task(id).await.unwrap();
                assert_eq!(t.status, TaskState::Complete);
                assert!(same_json(&t.step("first").unwrap().results, &value));
            });
            Ok(())
        })
        .unwrap();
}

/// Text PostgreSQL cannot store (a NUL character) is refused with the place named, on both
/// backends alike; a failure message holding one is still recorded.
#[tokio::test]
async fn nul_characters_are_refused_with_their_path_and_failures_are_still_recorded() {
    let h = Harness::new().await;
    h.register("name: one\nstep_templates:\n  - {name: only}\n")
        .await;
    let err = h
        .engine
        .create_task(TaskRequest::new("one", json!({"a": ["ok", "bad\u{0}"]})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("$.context.a[1]"), "{err}");
    let id = h
        .engine
        .create_task(TaskRequest::new("one", json!({})))
        .await
        .unwrap();
    let job = h.claim("nul", 1).await.remove(0);
    h.engine
        .report(
            &[Report {
                key: job.key,
                outcome: Outcome::Failed(tasker_core::StepFailure::permanent("boom\u{0}!")),
            }],
            None,
        )
        .await
        .unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(
        t.step("only").unwrap().error.as_ref().unwrap()["message"],
        "boom\u{fffd}!"
    );
    let err = h
        .engine
        .resolve_step_manually(id, "only", json!({"x": "\u{0}"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("$.x"), "{err}");
}
