//! Templates in the original tasker-engine format (`tests/fixtures/original/`, written for
//! these tests to exercise every field of that format) register and behave as there: custom
//! events, schema defaults, formats, names with a slash, environments, the fields kept for the
//! original's Ruby classes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tasker_conformance::Harness;
use tasker_core::{
    Engine, Error, HandlerError, Registry, TaskRequest, TaskState, TaskTemplate, TemplateSource,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/original")
        .join(name)
}

async fn register(h: &Harness, name: &str, env: Option<&str>) -> String {
    let t = TaskTemplate::from_path(&fixture(name), env).unwrap_or_else(|e| panic!("{name}: {e}"));
    h.engine.register_template(t).await.unwrap()
}

/// Handlers for every `handler_class` of the fixtures: each returns its step name and sees
/// its parents; the checkout's payment step publishes its declared event.
fn registry(engine: &Engine, seen: Arc<Mutex<Vec<(String, Value)>>>) -> Registry {
    let mut r = Registry::new();
    for class in [
        "Ecommerce::StepHandlers::ValidateCartHandler",
        "Ecommerce::StepHandlers::UpdateInventoryHandler",
        "Ecommerce::StepHandlers::GiftNoteHandler",
        "Ecommerce::StepHandlers::ConfirmOrderHandler",
        "DataPipeline::StepHandlers::ExtractOrdersHandler",
        "DataPipeline::StepHandlers::ExtractUsersHandler",
        "DataPipeline::StepHandlers::TransformMetricsHandler",
        "ApiTask::StepHandler::CartFetchStepHandler",
        "ApiTask::StepHandler::ProductsFetchStepHandler",
        "ApiTask::StepHandler::ProductsValidateStepHandler",
    ] {
        let seen = seen.clone();
        r.register_fn(class, move |step| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((step.step_name.clone(), (*step.config).clone()));
                Ok(json!({"step": step.step_name, "parents": step.results.keys().collect::<Vec<_>>()}))
            }
        });
    }
    let e = engine.clone();
    r.register_fn(
        "Ecommerce::StepHandlers::ProcessPaymentHandler",
        move |step| {
            let e = e.clone();
            async move {
                e.publish_custom_event(&step, "payment.charged", json!({"amount": 42}))
                    .map_err(|err| HandlerError::permanent(err.to_string()))?;
                // Not declared by this template: refused with the list of what it declares.
                let refused = e
                    .publish_custom_event(&step, "analytics.report_ready", json!({}))
                    .unwrap_err();
                Ok(json!({"refused": refused.to_string()}))
            }
        },
    );
    let e = engine.clone();
    r.register_fn(
        "DataPipeline::StepHandlers::GenerateReportHandler",
        move |step| {
            let e = e.clone();
            async move {
                e.publish_custom_event(&step, "analytics.report_ready", json!({"rows": 3}))
                    .map_err(|err| HandlerError::permanent(err.to_string()))?;
                Ok(json!({"context_seen": *step.context}))
            }
        },
    );
    r
}

#[tokio::test]
async fn the_fixture_templates_register_and_run_on_this_backend() {
    let h = Harness::new().await;
    assert_eq!(
        register(&h, "ecommerce_checkout.yaml", None).await,
        "ecommerce.process_order@1.2.0"
    );
    assert_eq!(
        register(&h, "customer_analytics.yaml", None).await,
        "data_pipeline.customer_analytics@1.0.0"
    );
    assert_eq!(
        register(&h, "api_integration.yaml", Some("test")).await,
        "api_tests.api_task/integration_yaml_example@0.1.0"
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reg = registry(&h.engine, seen.clone());
    let mut events = h.engine.subscribe();

    let order = h
        .engine
        .create_task(
            TaskRequest::new(
                "process_order",
                json!({"cart_items": [{"product_id": 1, "quantity": 2, "price": 9.5}],
                       "customer_info": {"email": "ada@example.com"}}),
            )
            .namespace("ecommerce")
            .bypass(&["send_gift_note"]),
        )
        .await
        .unwrap();
    let analytics = h
        .engine
        .create_task(
            TaskRequest::new(
                "customer_analytics",
                json!({"date_range": {"start_date": "2026-01-01", "end_date": "2026-01-31"},
                       "notify": {}}),
            )
            .namespace("data_pipeline"),
        )
        .await
        .unwrap();
    let api = h
        .engine
        .create_task(
            TaskRequest::new("api_task/integration_yaml_example", json!({"cart_id": 1}))
                .namespace("api_tests"),
        )
        .await
        .unwrap();
    h.drive(&reg).await;

    // The checkout: every step ran in order, the bypassed one did not, events published once.
    let t = h.engine.get_task(order).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:#?}");
    assert_eq!(
        t.context["currency"], "USD",
        "a top-level default was filled in"
    );
    assert_eq!(
        t.context["customer_info"]["newsletter"], false,
        "a nested default too"
    );
    let confirm = &t.step("confirm_order").unwrap().results;
    let mut parents: Vec<&str> = confirm["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    parents.sort();
    assert_eq!(
        parents,
        ["process_payment", "send_gift_note", "update_inventory"]
    );
    let refused = t.step("process_payment").unwrap().results["refused"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        refused.contains("declares only order.confirmed, payment.charged")
            || refused.contains("declares only payment.charged, order.confirmed"),
        "{refused}"
    );

    // Analytics: the handler saw the completed context.
    let t = h.engine.get_task(analytics).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    let ctx = &t.step("generate_report").unwrap().results["context_seen"];
    assert_eq!(ctx["force_refresh"], false);
    assert_eq!(ctx["processing_mode"], "standard");
    assert_eq!(
        ctx["date_range"]["timezone"], "UTC",
        "nested default inside a given object"
    );
    assert_eq!(ctx["notify"]["channel"], "#analytics");
    assert_eq!(
        h.engine.get_task(analytics).await.unwrap().context,
        *ctx,
        "stored as completed"
    );

    // The API example: the name with a slash works, the `test` environment's config applied.
    let t = h.engine.get_task(api).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.name, "api_task/integration_yaml_example");
    let cfg = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(s, _)| s == "fetch_cart")
        .unwrap()
        .1
        .clone();
    assert_eq!(cfg["url"], "http://test.ecommerce.com/api/cart");
    assert_eq!(cfg["params"], json!({"cart_id": 1, "test_mode": true}));

    // Custom events: each delivered exactly once, with its payload.
    let mut custom = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.is_custom() {
            custom.push((e.name.to_string(), e.task_id, e.metadata["payload"].clone()));
        }
    }
    custom.sort_by_key(|c| c.0.clone());
    assert_eq!(
        custom,
        [
            (
                "analytics.report_ready".to_owned(),
                analytics,
                json!({"rows": 3})
            ),
            ("payment.charged".to_owned(), order, json!({"amount": 42})),
        ]
    );
}

#[tokio::test]
async fn the_original_fields_are_kept_and_listed() {
    let h = Harness::new().await;
    register(&h, "ecommerce_checkout.yaml", None).await;
    register(&h, "customer_analytics.yaml", None).await;
    let list = h.engine.templates().await.unwrap();
    let order = list.iter().find(|t| t.name == "process_order").unwrap();
    assert_eq!(order.compat["task_handler_class"], "OrderProcessingHandler");
    assert_eq!(order.compat["module_namespace"], "Ecommerce");
    assert_eq!(order.compat["concurrent"], true);
    assert_eq!(order.compat["default_dependent_system"], "ecommerce_system");
    assert_eq!(order.compat["named_steps"].as_array().unwrap().len(), 5);
    assert_eq!(
        order.compat["dependent_systems"]["process_payment"],
        "payment_gateway"
    );
    let names: Vec<&str> = order
        .custom_events
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["payment.charged", "order.confirmed"]);
    let analytics = list
        .iter()
        .find(|t| t.name == "customer_analytics")
        .unwrap();
    assert_eq!(analytics.custom_events.len(), 2);
    assert_eq!(
        analytics.custom_events[0].description.as_deref(),
        Some("The report has been generated")
    );
}

#[tokio::test]
async fn every_standard_format_is_checked_and_each_violation_is_listed_by_path() {
    let h = Harness::new().await;
    h.register(
        r#"
name: formats
schema:
  type: object
  properties:
    d: {type: string, format: date}
    dt: {type: string, format: date-time}
    t: {type: string, format: time}
    e: {type: string, format: email}
    u: {type: string, format: uri}
    id: {type: string, format: uuid}
    ip: {type: string, format: ipv4}
    ip6: {type: string, format: ipv6}
    host: {type: string, format: hostname}
step_templates:
  - {name: only}
"#,
    )
    .await;
    let good = json!({"d": "2026-11-26", "dt": "2026-11-26T10:00:00Z", "t": "10:00:00Z",
        "e": "ada@example.com", "u": "https://example.com/x", "id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "ip": "127.0.0.1", "ip6": "::1", "host": "example.com"});
    h.engine
        .create_task(TaskRequest::new("formats", good.clone()))
        .await
        .expect("valid values pass");
    for (field, bad) in [
        ("d", "not-a-date"),
        ("dt", "2026-13-45 25:00"),
        ("t", "25:61"),
        ("e", "no-at-sign"),
        ("u", "not a uri"),
        ("id", "1234"),
        ("ip", "999.1.1.1"),
        ("ip6", "not:an:ip::::x"),
        ("host", "-bad-.example..com"),
    ] {
        let mut ctx = good.clone();
        ctx[field] = json!(bad);
        let err = h
            .engine
            .create_task(TaskRequest::new("formats", ctx))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Validation(_)), "{field}: {err}");
        assert!(
            err.to_string().contains(&format!("/{field}:")),
            "{field}: {err}"
        );
    }
    // Several at once: each listed.
    let err = h
        .engine
        .create_task(TaskRequest::new("formats", json!({"d": "x", "e": "y"})))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/d:") && err.contains("/e:"), "{err}");
}

#[tokio::test]
async fn custom_event_names_follow_the_originals_rules() {
    let h = Harness::new().await;
    for (name, why) in [
        ("two words", "not an event name"),
        (
            "task_completed",
            "the lifecycle event is \"task.completed\"",
        ),
        ("step.completed", "lifecycle event"),
        ("task.mine", "reserved"),
    ] {
        let err = h
            .engine
            .register_template_yaml(&format!(
                "name: ev\ncustom_events: [{{name: {name}}}]\nstep_templates:\n  - {{name: a}}\n"
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("custom_events[0].name") && err.contains(why),
            "{name}: {err}"
        );
    }
    // A plain name, as the original's templates declare them (`data_extraction_started`), is
    // taken as written: only the original's Ruby `register_custom_event` asks for a dot.
    h.register("name: ev\ncustom_events: [{name: fulfilled}]\nstep_templates:\n  - {name: a}\n")
        .await;
}

#[tokio::test]
async fn a_newer_format_fan_out_step_is_checked_and_batch_config_belongs_to_batch_workers() {
    let h = Harness::new().await;
    // Fan-out steps load (tests/tests/fan_out.rs runs them); a batch_worker without its
    // batchable parent is refused, naming the step.
    let err = h
        .engine
        .register_template_yaml(
            "name: dyn\nsteps:\n  - {name: a}\n  - {name: choose, type: batch_worker, dependencies: [a]}\n",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"choose\"") && err.contains("the batchable step"),
        "{err}"
    );
    h.register("name: ok\nsteps:\n  - {name: a, type: standard}\n")
        .await;
    let err = h
        .engine
        .register_template_yaml(
            "name: dyn\nsteps:\n  - {name: a, batch_config: {max_instances: 10}}\n",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch_config is read on batch_worker steps only"),
        "batch_config on a standard step is refused, not ignored: {err}"
    );
}

/// The blog files' variants: plain event names, a TaskHandler `handler_config`, top-level keys
/// the original ignores. They register (the unknown keys kept, shown, and each named in a
/// warning), and the plain events are published and heard by their names as written.
#[tokio::test]
async fn the_blog_variants_register_with_warnings_and_their_plain_events_are_heard() {
    let h = Harness::new().await;
    let path = fixture("monitored_pipeline.yaml");
    let r = h
        .engine
        .register_source(TemplateSource::File(&path))
        .await
        .unwrap();
    assert_eq!(r.key, "blog_examples.monitored_pipeline@1.0.0");
    assert_eq!(
        r.warnings,
        [
            // In the order of the keys' names (the document's mapping is sorted).
            "unknown key `monitoring`: kept (compat.unknown_keys), no effect here",
            "unknown key `retry_strategies`: kept (compat.unknown_keys), no effect here",
        ]
    );
    let listed = h.engine.templates().await.unwrap();
    let t = listed
        .iter()
        .find(|t| t.name == "monitored_pipeline")
        .unwrap();
    assert_eq!(t.compat["handler_config"]["monitoring"]["sla_seconds"], 45);
    assert_eq!(
        t.compat["unknown_keys"]["retry_strategies"]["source_timeout"]["retry_limit"],
        5
    );
    assert_eq!(
        t.compat["unknown_keys"]["monitoring"]["step_duration_alert_ms"]["extract"],
        5000
    );
    let names: Vec<&str> = t.custom_events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "data_extraction_started",
            "data_extraction_completed",
            "pipeline.milestone_reached"
        ]
    );
    // The nested `retry_limit` under `retry_strategies` changed no step.
    let def = TaskTemplate::from_path(&path, None).unwrap();
    assert_eq!(def.steps[0].max_attempts, 3);
    assert_eq!(def.steps[1].max_attempts, 2);

    let mut r = Registry::new();
    let e = h.engine.clone();
    r.register_fn("Pipeline::ExtractHandler", move |step| {
        let e = e.clone();
        async move {
            for name in ["data_extraction_started", "data_extraction_completed"] {
                e.publish_custom_event(&step, name, json!({"rows": 7}))
                    .map_err(|err| HandlerError::permanent(err.to_string()))?;
            }
            Ok(json!({"rows": 7}))
        }
    });
    r.register_fn("Pipeline::LoadHandler", |step| async move {
        Ok(json!({"loaded": step.results["extract"]["rows"]}))
    });
    let mut events = h.engine.subscribe();
    let id = h
        .engine
        .create_task(TaskRequest::new("monitored_pipeline", json!({})).namespace("blog_examples"))
        .await
        .unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:#?}");
    let mut heard = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if ev.is_custom() {
            heard.push((ev.name.to_string(), ev.metadata["payload"]["rows"].clone()));
        }
    }
    assert_eq!(
        heard,
        [
            ("data_extraction_started".to_owned(), json!(7)),
            ("data_extraction_completed".to_owned(), json!(7)),
        ]
    );
}

#[tokio::test]
async fn strict_templates_refuse_unknown_keys_naming_each() {
    let h = Harness::with(|o| o.strict_templates(true)).await;
    let err = h
        .engine
        .register_template_file(&fixture("monitored_pipeline.yaml"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`retry_strategies`")
            && err.contains("`monitoring`")
            && err.contains("strict templates are on"),
        "{err}"
    );
    // Nothing unknown: strict or not, the same.
    h.engine
        .register_template_file(&fixture("earliest_class_name.yaml"))
        .await
        .unwrap();
}

/// An unknown key that would change what runs if ignored is an error naming what to write:
/// the other format's name for a dependency, a handler or retries, a near miss of a known key.
/// Any other unknown key, at any depth, is a warning naming its place.
#[tokio::test]
async fn unknown_keys_that_would_change_what_runs_are_errors_the_rest_warnings() {
    let h = Harness::new().await;
    for (step, why) in [
        (
            "{name: b, dependencies: [a]}",
            "`depends_on_step` / `depends_on_steps`",
        ),
        (
            "{name: b, depends_on: a}",
            "`dependencies` in tasker-core's",
        ),
        ("{name: b, handler: {callable: X}}", "`handler_class`"),
        (
            "{name: b, default_retry_limt: 5}",
            "did you mean `default_retry_limit`?",
        ),
        (
            "{name: b, backoff: {base_secnds: 2}}",
            "did you mean `base_seconds`?",
        ),
    ] {
        let err = h
            .engine
            .register_template_yaml(&format!(
                "name: u\nstep_templates:\n  - {{name: a}}\n  - {step}\n"
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("step_templates[1]") && err.contains(why),
            "{step}: {err}"
        );
    }
    let err = h
        .engine
        .register_template_yaml("name: u\nsteps:\n  - {name: a, depends_on_steps: [b]}\n")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("steps[0]") && err.contains("`dependencies`"),
        "{err}"
    );

    let r = h
        .engine
        .register_source(TemplateSource::Yaml(
            "name: u\nowner: data-team\nstep_templates:\n  - {name: a, sla: {minutes: 5}}\n",
        ))
        .await
        .unwrap();
    assert_eq!(
        r.warnings,
        [
            "unknown key `owner`: kept (compat.unknown_keys), no effect here",
            "unknown key `step_templates[0].sla`: kept (compat.unknown_keys), no effect here",
        ]
    );
    let t = h.engine.templates().await.unwrap();
    let u = t.iter().find(|t| t.name == "u").unwrap();
    assert_eq!(
        u.compat["unknown_keys"]["step_templates[0].sla"]["minutes"],
        5
    );
    assert_eq!(u.compat["unknown_keys"]["owner"], "data-team");
}

/// The earliest files: `class_name` for the TaskHandler class, no namespace or version.
#[tokio::test]
async fn the_earliest_files_shape_registers_without_warnings() {
    let h = Harness::new().await;
    let path = fixture("earliest_class_name.yaml");
    let r = h
        .engine
        .register_source(TemplateSource::File(&path))
        .await
        .unwrap();
    assert_eq!(r.key, "default.simple_dummy_task@0.1.0");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let t = h.engine.templates().await.unwrap();
    assert_eq!(t[0].compat["class_name"], "DummyTaskHandler");
    assert_eq!(t[0].compat["named_steps"], json!(["step_one", "step_two"]));
}
