//! Template parsing and validation: every error names the template and the place.

use serde_json::json;
use tasker_conformance::Harness;
use tasker_core::{Error, TaskRequest, TaskTemplate, TemplateError};

fn parse_err(yaml: &str) -> TemplateError {
    TaskTemplate::from_yaml(yaml, None).expect_err("template should be rejected")
}

#[test]
fn yaml_syntax_error_reports_line_and_column() {
    let e = parse_err("name: broken\nstep_templates:\n  - name: a\n    depends_on_steps: [b\n");
    match &e {
        TemplateError::Syntax { line, column, .. } => {
            assert_eq!(*line, 5, "{e}");
            assert!(*column >= 1, "{e}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with("template YAML syntax error at line 5, column"),
        "{e}"
    );
}

#[test]
fn wrong_types_and_unknown_keys_name_the_path() {
    let e = parse_err("name: t\nstep_templates:\n  - name: a\n    default_retry_limit: lots\n");
    let msg = e.to_string();
    assert!(
        msg.contains("template t: step_templates[0].default_retry_limit:"),
        "{msg}"
    );
    let e = parse_err("name: t\nstep_templates:\n  - name: a\n    depends_on: [b]\n");
    let msg = e.to_string();
    assert!(
        msg.contains("step_templates[0]") && msg.contains("unknown field `depends_on`"),
        "{msg}"
    );
}

#[test]
fn duplicate_step_names_are_rejected() {
    let e = parse_err("name: dup\nstep_templates:\n  - {name: a}\n  - {name: b}\n  - {name: a}\n");
    assert_eq!(
        e.to_string(),
        "template default.dup@0.1.0: step name \"a\" appears more than once (step_templates[0] and step_templates[2])"
    );
}

#[test]
fn unknown_dependency_is_named() {
    let e = parse_err("name: t\nstep_templates:\n  - {name: a, depends_on_step: ghost}\n");
    assert_eq!(
        e.to_string(),
        "template default.t@0.1.0: step \"a\" depends on unknown step \"ghost\""
    );
}

#[test]
fn dependency_cycle_lists_the_steps_in_order() {
    let e = parse_err(
        "name: loop\nstep_templates:\n  - {name: start}\n  - {name: a, depends_on_steps: [start, c]}\n  - {name: b, depends_on_step: a}\n  - {name: c, depends_on_step: b}\n",
    );
    assert_eq!(
        e.to_string(),
        "template default.loop@0.1.0: dependency cycle: a -> c -> b -> a"
    );
    let e = parse_err("name: self\nstep_templates:\n  - {name: a, depends_on_step: a}\n");
    assert_eq!(
        e.to_string(),
        "template default.self@0.1.0: dependency cycle: a -> a"
    );
}

#[test]
fn retry_limit_below_one_is_rejected() {
    let e = parse_err("name: t\nstep_templates:\n  - {name: a, default_retry_limit: 0}\n");
    assert_eq!(
        e.to_string(),
        "template default.t@0.1.0: step \"a\": default_retry_limit must be at least 1, got 0"
    );
}

#[test]
fn bad_version_is_rejected() {
    let e = parse_err("name: t\nversion: '1.2'\nstep_templates:\n  - {name: a}\n");
    assert!(matches!(e, TemplateError::Version { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("template t: version \"1.2\" is not a semantic version"),
        "{e}"
    );
}

#[test]
fn empty_step_list_is_rejected() {
    let e = parse_err("name: t\nstep_templates: []\n");
    assert_eq!(
        e.to_string(),
        "template default.t@0.1.0: has no steps (step_templates / steps is empty)"
    );
}

#[test]
fn bad_backoff_and_timeout_are_named() {
    let e = parse_err("name: t\nstep_templates:\n  - {name: a, backoff: {multiplier: 0.5}}\n");
    assert!(
        e.to_string()
            .contains("step \"a\": backoff.multiplier must be >= 1"),
        "{e}"
    );
    let e = parse_err("name: t\nstep_templates:\n  - {name: a, timeout_seconds: -1}\n");
    assert!(
        e.to_string()
            .contains("step \"a\": timeout_seconds must be > 0"),
        "{e}"
    );
}

#[test]
fn invalid_json_schema_is_rejected() {
    let e = parse_err("name: t\nschema: {type: 12}\nstep_templates:\n  - {name: a}\n");
    assert!(matches!(e, TemplateError::Schema { .. }), "{e:?}");
}

#[test]
fn original_shape_maps_every_field() {
    let t = TaskTemplate::from_yaml(
        r#"
name: order_process
namespace_name: shop
version: 1.2.3
description: Process an order
task_handler_class: OrderProcess
module_namespace: Shop
concurrent: true
default_dependent_system: shop_db
step_templates:
  - name: validate
    description: Validate it
    handler_class: Shop::Validate
    handler_config: {strict: true}
    default_retryable: false
    dependent_system: shop_db
  - name: charge
    handler_class: Shop::Charge
    depends_on_step: validate
    default_retry_limit: 5
    backoff: {base_seconds: 0.5, multiplier: 3, max_seconds: 10, jitter: 0}
    timeout_seconds: 12.5
  - name: ship
    depends_on_steps: [charge, validate]
    skippable: true
"#,
        None,
    )
    .unwrap();
    assert_eq!(t.key(), "shop.order_process@1.2.3");
    let v = &t.steps[0];
    assert_eq!(
        (v.handler.as_str(), v.retryable, v.max_attempts),
        ("Shop::Validate", false, 1)
    );
    assert_eq!(*v.handler_config, json!({"strict": true}));
    let c = &t.steps[1];
    assert_eq!(
        (c.max_attempts, c.timeout_seconds, c.backoff.multiplier),
        (5, Some(12.5), 3.0)
    );
    let s = &t.steps[2];
    assert_eq!(
        (s.handler.as_str(), s.skippable, s.parents.clone()),
        ("ship", true, vec![1, 0])
    );
    assert_eq!(t.levels(), vec![0, 1, 2]);
}

#[test]
fn environment_overrides_merge_by_step_name() {
    let yaml = r#"
name: api
step_templates:
  - name: call
    handler_config: {url: "https://prod.example", timeout: 5}
environments:
  test:
    step_templates:
      - name: call
        handler_config: {url: "http://127.0.0.1:9"}
      - name: not_a_step
        handler_config: {ignored: true}
"#;
    let prod = TaskTemplate::from_yaml(yaml, None).unwrap();
    assert_eq!(prod.steps[0].handler_config["url"], "https://prod.example");
    let test = TaskTemplate::from_yaml(yaml, Some("test")).unwrap();
    assert_eq!(
        *test.steps[0].handler_config,
        json!({"url": "http://127.0.0.1:9", "timeout": 5})
    );
    assert_eq!(test.steps.len(), 1);
}

#[test]
fn newer_tasker_core_shape_is_accepted() {
    let t = TaskTemplate::from_yaml(
        r#"
name: etl
namespace_name: data
version: 2.0.0
steps:
  - name: extract
    handler: {callable: "Data::Extract", initialization: {source: s3}}
    retry: {retryable: true, max_attempts: 4, backoff_base_ms: 250, max_backoff_ms: 5000}
    timeout_seconds: 30
  - name: load
    handler: {callable: "Data::Load"}
    dependencies: [extract]
    retry: {retryable: false}
"#,
        None,
    )
    .unwrap();
    assert_eq!(t.key(), "data.etl@2.0.0");
    assert_eq!(t.steps[0].handler, "Data::Extract");
    assert_eq!(*t.steps[0].handler_config, json!({"source": "s3"}));
    assert_eq!(
        (
            t.steps[0].max_attempts,
            t.steps[0].backoff.base_seconds,
            t.steps[0].backoff.max_seconds
        ),
        (4, 0.25, 5.0)
    );
    assert_eq!(
        (t.steps[1].max_attempts, t.steps[1].parents.clone()),
        (1, vec![0])
    );
}

#[tokio::test]
async fn a_changed_body_under_the_same_version_is_a_new_revision_and_running_tasks_keep_theirs() {
    let h = Harness::new().await;
    let a = "name: t\nversion: 1.0.0\nstep_templates:\n  - {name: a}\n";
    let b = "name: t\nversion: 1.0.0\nstep_templates:\n  - {name: b}\n";
    let reg = |src: &'static str| {
        let e = h.engine.clone();
        async move {
            e.register_template_revision(TaskTemplate::from_yaml(src, None).unwrap())
                .await
                .unwrap()
        }
    };
    let r1 = reg(a).await;
    assert_eq!(
        (r1.key.as_str(), r1.revision, r1.replaced_revision),
        ("default.t@1.0.0", 1, None)
    );
    assert_eq!(reg(a).await, r1, "the same body again is a no-op");
    let old_task = h
        .engine
        .create_task(TaskRequest::new("t", json!({})))
        .await
        .unwrap();
    // Edited without a version bump (what a Rails app does when it boots after an edit).
    let r2 = reg(b).await;
    assert_eq!((r2.revision, r2.replaced_revision), (2, Some(1)));
    let new_task = h
        .engine
        .create_task(TaskRequest::new("t", json!({})))
        .await
        .unwrap();
    let step_names = |id| {
        let e = h.engine.clone();
        async move {
            e.get_task(id)
                .await
                .unwrap()
                .steps
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        step_names(old_task).await,
        ["a"],
        "a task keeps the body it was created with"
    );
    assert_eq!(
        step_names(new_task).await,
        ["b"],
        "new tasks use the latest revision"
    );
    // Another engine on the same database sees both revisions, the latest current.
    let other = h.reopen().await;
    let list: Vec<(String, i64, bool)> = other
        .templates()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.version, t.revision, t.current))
        .collect();
    assert_eq!(
        list,
        [
            ("1.0.0".to_owned(), 1, false),
            ("1.0.0".to_owned(), 2, true)
        ]
    );
    let id = other
        .create_task(TaskRequest::new("t", json!({})))
        .await
        .unwrap();
    assert_eq!(step_names(id).await, ["b"]);
}

#[tokio::test]
async fn strict_templates_refuse_a_changed_body_under_the_same_version() {
    let h = Harness::with(|o| o.strict_templates(true)).await;
    h.register("name: t\nversion: 1.0.0\nstep_templates:\n  - {name: a}\n")
        .await;
    let err = h
        .engine
        .register_template_yaml("name: t\nversion: 1.0.0\nstep_templates:\n  - {name: b}\n")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "template default.t@1.0.0 is already registered with a different body; register it under a new version (strict templates are on)"
    );
}

#[tokio::test]
async fn latest_picks_the_highest_semantic_version() {
    let h = Harness::new().await;
    for v in ["0.9.0", "0.10.0", "0.2.0"] {
        h.register(&format!(
            "name: t\nversion: {v}\nstep_templates:\n  - {{name: a}}\n"
        ))
        .await;
    }
    let id = h
        .engine
        .create_task(TaskRequest::new("t", json!({})))
        .await
        .unwrap();
    assert_eq!(h.engine.get_task(id).await.unwrap().version, "0.10.0");
    let id = h
        .engine
        .create_task(TaskRequest::new("t", json!({})).version("0.2.0"))
        .await
        .unwrap();
    assert_eq!(h.engine.get_task(id).await.unwrap().version, "0.2.0");
    let err = h
        .engine
        .create_task(TaskRequest::new("t", json!({})).version("9.9.9"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "template default.t has no version \"9.9.9\" (registered: 0.10.0, 0.2.0, 0.9.0)"
    );
    let err = h
        .engine
        .create_task(TaskRequest::new("nope", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[tokio::test]
async fn context_schema_violations_are_listed_with_their_paths() {
    let h = Harness::new().await;
    h.register(
        r#"
name: order
schema:
  type: object
  required: [order_id, customer]
  properties:
    order_id: {type: integer}
    customer:
      type: object
      required: [email]
      properties:
        email: {type: string}
    items: {type: array, items: {type: string}}
step_templates:
  - {name: a}
"#,
    )
    .await;
    let err = h
        .engine
        .create_task(TaskRequest::new(
            "order",
            json!({"order_id": "x", "customer": {}, "items": ["ok", 3]}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation(_)));
    let msg = err.to_string();
    assert!(
        msg.starts_with("task default.order@0.1.0: context does not match the template's schema:"),
        "{msg}"
    );
    for path in ["/order_id:", "/customer:", "/items/1:"] {
        assert!(msg.contains(path), "{path} missing from {msg}");
    }
    let err = h
        .engine
        .create_task(TaskRequest::new("order", json!([1, 2])))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("context must be a JSON object, got an array"),
        "{err}"
    );
    assert!(
        h.engine
            .list_tasks(&Default::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing created"
    );
    h.engine
        .create_task(TaskRequest::new(
            "order",
            json!({"order_id": 1, "customer": {"email": "a@b"}}),
        ))
        .await
        .unwrap();
}

#[test]
fn template_files_report_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, "name: t\nstep_templates:\n  - {name: a\n").unwrap();
    let e = TaskTemplate::from_path(&p, None).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("template file {}:", p.display())),
        "{e}"
    );
    assert!(e.contains("YAML syntax error"), "{e}");
    let missing = TaskTemplate::from_path(&dir.path().join("none.yaml"), None)
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("none.yaml") && missing.contains("No such file"),
        "{missing}"
    );
}
