//! Event definition files (the original's `config/tasker/events/*.yml`): registered from a
//! directory or text, stored, known to processes opened later; any handler may publish a
//! defined event, and its payload is checked against the file's `payload_schema`.

use std::path::PathBuf;

use serde_json::{json, Value};
use tasker_conformance::Harness;
use tasker_core::{Error, EventSource, HandlerError, Registry, TaskRequest, TaskState};

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/original/events")
}

#[tokio::test]
async fn a_directory_of_definition_files_registers_in_file_then_entry_order() {
    let h = Harness::new().await;
    let defs = h
        .engine
        .register_events(EventSource::Path(&events_dir()))
        .await
        .unwrap();
    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "order.created",
            "order.cancelled",
            "payment.attempted",
            "refund.processed"
        ]
    );
    let created = &defs[0];
    assert_eq!(created.key, "order_created");
    assert_eq!(created.fired_by, ["OrderService", "CheckoutController"]);
    assert_eq!(created.payload_schema.len(), 5);
    assert!(created.source.as_deref().unwrap().ends_with("orders.yml"));
    let cancelled = &defs[1];
    assert_eq!(
        cancelled
            .payload_schema
            .iter()
            .map(|f| (f.key.as_str(), f.kind.as_str(), f.required))
            .collect::<Vec<_>>(),
        [
            ("order_id", "String", true),
            ("refund_amount", "Float", false)
        ]
    );

    // Stored: a process opened afterwards knows them, by name.
    let other = h.reopen().await;
    let stored = other.event_definitions().await.unwrap();
    assert_eq!(stored.len(), 4);
    assert_eq!(
        other.event_definition("refund.processed").unwrap().fired_by,
        ["RefundService"]
    );

    // Registered again with a change: replaced, not duplicated.
    h.engine
        .register_events(EventSource::Yaml(
            "events:\n  custom:\n    order_created:\n      constant: order.created\n      description: changed\n",
        ))
        .await
        .unwrap();
    let stored = h.reopen().await.event_definitions().await.unwrap();
    assert_eq!(stored.len(), 4);
    let c = stored.iter().find(|d| d.name == "order.created").unwrap();
    assert_eq!(
        (c.description.as_deref(), c.payload_schema.len()),
        (Some("changed"), 0)
    );
}

#[tokio::test]
async fn a_bad_file_registers_nothing_and_names_the_place() {
    let h = Harness::new().await;
    let err = h
        .engine
        .register_events(EventSource::Yaml(
            "events:\n  custom:\n    ok: {constant: a.ok}\n    bad: {constant: a.bad, payload_schema: {n: {type: Money, required: true}}}\n",
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation(_)), "{err}");
    assert!(
        err.to_string()
            .contains("events.custom.bad.payload_schema.n.type: unknown type \"Money\""),
        "{err}"
    );
    assert!(h.engine.event_definitions().await.unwrap().is_empty());
    let err = h
        .engine
        .register_events(EventSource::Path(&events_dir().join("missing.yml")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.yml"), "{err}");
}

/// A handler publishes a defined event its template does not declare; a payload that breaks
/// the schema is refused with every failing key, and the subscriber hears only the good one.
#[tokio::test]
async fn defined_events_are_published_by_any_handler_and_their_payloads_checked() {
    let h = Harness::new().await;
    h.engine
        .register_events(EventSource::Path(&events_dir()))
        .await
        .unwrap();
    h.register("name: checkout\nstep_templates:\n  - {name: place}\n")
        .await;
    let e = h.engine.clone();
    let mut r = Registry::new();
    r.register_fn("place", move |step| {
        let e = e.clone();
        async move {
            let refused = e
                .publish_custom_event(
                    &step,
                    "order.created",
                    json!({"order_id": 7, "order_total": "12.5", "timestamp": "now"}),
                )
                .unwrap_err()
                .to_string();
            e.publish_custom_event(
                &step,
                "order.created",
                json!({"order_id": "o-7", "order_total": 12.5, "items_count": 2,
                       "timestamp": "2026-12-07T10:00:00Z", "channel": "web"}),
            )
            .map_err(|err| HandlerError::permanent(err.to_string()))?;
            e.publish_custom_event(&step, "payment.attempted", json!("anything"))
                .map_err(|err| HandlerError::permanent(err.to_string()))?;
            let undeclared = e
                .publish_custom_event(&step, "order.lost", json!({}))
                .unwrap_err()
                .to_string();
            Ok(json!({"refused": refused, "undeclared": undeclared}))
        }
    });
    let mut events = h.engine.subscribe();
    let id = h
        .engine
        .create_task(TaskRequest::new("checkout", json!({})))
        .await
        .unwrap();
    h.drive(&r).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{t:#?}");
    let results = &t.steps[0].results;
    let refused = results["refused"].as_str().unwrap();
    for want in [
        "custom event order.created: the payload breaks its payload_schema",
        "/order_id: 7 is not String",
        "/order_total: \"12.5\" is not Float",
        "/items_count: required (Integer)",
        "/timestamp: \"now\" is not Time",
    ] {
        assert!(refused.contains(want), "{want}: {refused}");
    }
    assert!(
        results["undeclared"]
            .as_str()
            .unwrap()
            .contains("no event definition file defines it"),
        "{results}"
    );
    let mut heard: Vec<(String, Value)> = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if ev.is_custom() {
            heard.push((ev.name.to_string(), ev.metadata["payload"].clone()));
        }
    }
    assert_eq!(
        heard.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["order.created", "payment.attempted"]
    );
    assert_eq!(heard[0].1["channel"], "web", "keys beyond the schema pass");
}
