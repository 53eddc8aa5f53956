//! The store conformance suite: the store operations themselves, below the engine, as a table
//! of cases every backend must pass (River's `riverdrivertest.Exercise`). Each case gets a
//! fresh database: SQLite always; PostgreSQL too with `TASKER_TEST_BACKEND=postgres` and
//! `DATABASE_URL` (a fresh schema per case), as `scripts/test.sh` runs it.
//!
//! A case fails naming the backend, so a difference between the two is plain.
//!
//! Files: this one holds the table and runs it; `build.rs` makes the plans the cases apply,
//! `cases.rs` holds the cases.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

mod build;
mod cases;

use super::*;
use cases::*;

type CaseFn = for<'a> fn(&'a dyn Store) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The cases, by name.
const CASES: &[(&str, CaseFn)] = &[
    ("a plan inserts tasks and steps, ids in plan order", |s| {
        Box::pin(inserts_in_plan_order(s))
    }),
    (
        "a claim takes priority, then age, then id, for its handlers only",
        |s| Box::pin(claim_order(s)),
    ),
    (
        "a claim starts pending tasks and leaves the claim's transitions",
        |s| Box::pin(claim_effects(s)),
    ),
    (
        "a failed step claimed again goes error, pending, in progress",
        |s| Box::pin(reclaim_failed(s)),
    ),
    (
        "born steps are inserted as a claim leaves them, and only they are claimed",
        |s| Box::pin(born_steps(s)),
    ),
    (
        "a quiet claim runs only when the plan readies a step",
        |s| Box::pin(quiet_claim(s)),
    ),
    (
        "a step update at another version refuses the plan, nothing written",
        |s| Box::pin(stale_update(s)),
    ),
    (
        "a guard that no longer holds refuses the plan, nothing written",
        |s| Box::pin(stale_guard(s)),
    ),
    (
        "decrements ready a pending step when its last parent finishes",
        |s| Box::pin(decrements(s)),
    ),
    (
        "parking hides claimable steps, unparking brings them back",
        |s| Box::pin(parking(s)),
    ),
    (
        "task updates move counters and states; transitions read back in order",
        |s| Box::pin(task_updates(s)),
    ),
    (
        "leases: expired ones oldest first, extensions only at the attempt held",
        |s| Box::pin(leases(s)),
    ),
    (
        "a second task with the same idempotency key is a conflict",
        |s| Box::pin(idempotency(s)),
    ),
    (
        "reads: listings, counts, next times, state counts, parents' results",
        |s| Box::pin(reads(s)),
    ),
    (
        "event definitions are kept by name, a second one replacing the first",
        |s| Box::pin(event_definitions(s)),
    ),
    (
        "decisions and new steps of a task that exists are written and read back",
        |s| Box::pin(decisions_and_steps_of_a_task_that_exists(s)),
    ),
    (
        "fan-out instances share a position; the claim hands out their items; checkpoints",
        |s| Box::pin(fan_out_instances_and_checkpoints(s)),
    ),
];

#[tokio::test]
async fn every_store_passes_every_case() {
    for (name, case) in CASES {
        for (backend, store, _dir) in stores().await {
            eprintln!("store conformance [{backend}]: {name}");
            case(&*store).await;
        }
    }
}

/// PostgreSQL only: each composite type of the function files has the fields of its Rust
/// struct, in order (a record crosses the wire by position).
#[tokio::test]
async fn composite_types_match_their_structs() {
    let Some((url, schema)) = postgres_target() else {
        return;
    };
    let _store = postgres::PgStore::open(
        url.clone(),
        postgres::PgOptions {
            schema: Some(schema.clone()),
            max_connections: Some(2),
        },
    )
    .await
    .expect("open");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    for (ty, fields) in postgres::wire::composite_fields() {
        let attrs: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_attribute a JOIN pg_type t ON t.typrelid = a.attrelid \
             JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typname = $1 AND n.nspname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
        )
        .bind(ty)
        .bind(&schema)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(attrs, fields, "composite type {ty} and its struct differ");
    }
}

fn postgres_target() -> Option<(String, String)> {
    if std::env::var("TASKER_TEST_BACKEND").as_deref() != Ok("postgres") {
        return None;
    }
    let url =
        std::env::var("DATABASE_URL").expect("TASKER_TEST_BACKEND=postgres needs DATABASE_URL");
    let schema = format!("sc_{}_{:08x}", std::process::id(), rand::random::<u32>());
    Some((url, schema))
}

async fn stores() -> Vec<(&'static str, Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let mut out: Vec<(&'static str, Arc<dyn Store>, tempfile::TempDir)> = vec![(
        "sqlite",
        open(&url, &StoreOptions::default()).await.unwrap(),
        dir,
    )];
    if let Some((url, schema)) = postgres_target() {
        let opts = StoreOptions {
            schema: Some(schema),
            max_connections: Some(4),
            ..StoreOptions::default()
        };
        out.push((
            "postgres",
            open(&url, &opts).await.unwrap(),
            tempfile::tempdir().unwrap(),
        ));
    }
    out
}
