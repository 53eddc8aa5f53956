//! Runs `examples/templates/order_fulfillment.yaml` with Rust handlers on the embedded SQLite
//! default and prints what happened.
//!
//! `cargo run -p tasker-core --example quickstart`

use std::time::Duration;

use serde_json::json;
use tasker_core::{
    Engine, EngineOptions, HandlerError, Registry, TaskRequest, Worker, WorkerOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = std::env::temp_dir().join(format!("tasker-quickstart-{}.db", std::process::id()));
    let engine =
        Engine::open_with(EngineOptions::default().url(format!("sqlite://{}", db.display())))
            .await?;
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/templates/order_fulfillment.yaml"
    );
    let key = engine.register_template_file(template.as_ref()).await?;
    println!("registered {key}");

    let mut handlers = Registry::new();
    handlers.register_fn("validate_order", |step| async move {
        let items = step.context["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let total: f64 = items
            .iter()
            .map(|i| i["qty"].as_f64().unwrap_or(0.0) * i["price"].as_f64().unwrap_or(0.0))
            .sum();
        Ok(json!({"order_id": step.context["order_id"], "total": total}))
    });
    handlers.register_fn("reserve_inventory", |step| async move {
        Ok(json!({"reserved": step.context["items"].as_array().map(|a| a.len()).unwrap_or(0)}))
    });
    handlers.register_fn("charge_payment", |step| async move {
        if step.attempt() == 1 {
            return Err(HandlerError::retryable("payment gateway timed out"));
        }
        Ok(json!({"charged": step.results["validate_order"]["total"], "attempt": step.attempt()}))
    });
    handlers.register_fn("ship_order", |step| async move {
        Ok(json!({
            "shipped": true,
            "charged": step.results["charge_payment"]["charged"],
            "reserved": step.results["reserve_inventory"]["reserved"],
        }))
    });

    let task_id = engine
        .create_task(TaskRequest::new(
            "order_fulfillment",
            json!({"order_id": 1001, "card": "tok_visa", "items": [{"sku": "book", "qty": 2, "price": 12.5}, {"sku": "pen", "qty": 1, "price": 3.0}]}),
        ).namespace("shop"))
        .await?;
    println!("created task {task_id}");

    let worker = Worker::new(engine.clone(), handlers, WorkerOptions::default());
    let task = worker
        .run_until_complete(task_id, Some(Duration::from_secs(30)))
        .await?;
    println!("task {} is {}", task.id, task.status);
    for s in &task.steps {
        println!(
            "  {:<18} {:<10} attempts={} results={}",
            s.name,
            s.status.as_str(),
            s.attempts,
            s.results
        );
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    if task.status != tasker_core::TaskState::Complete {
        std::process::exit(1);
    }
    Ok(())
}
