//! Schedules: a template run on a cron pattern. Ticks are fired by `fire_due_schedules` (what
//! every worker's and `tasker serve`'s schedule loop calls) on a clock the tests move by hand;
//! every scenario runs on each backend (`TASKER_TEST_BACKEND`). The processes racing for ticks
//! are in `multiprocess.rs`.

use std::time::Duration;

use serde_json::json;
use tasker_conformance::Harness;
use tasker_core::schedule::{CatchUp, Overlap, ScheduleSpec};
use tasker_core::{Error, TaskFilter, TaskState};

const REPORT: &str = r#"
name: report
namespace: reports
schema:
  type: object
  properties:
    region: {type: string}
  additionalProperties: false
steps:
  - {name: build}
"#;

async fn setup() -> Harness {
    let h = Harness::new().await;
    h.register(REPORT).await;
    h
}

fn every_second(name: &str) -> ScheduleSpec {
    ScheduleSpec {
        namespace: Some("reports".into()),
        context: json!({"region": "eu"}),
        ..ScheduleSpec::new(name, "report", "* * * * * *")
    }
}

/// Task ids of the schedule's tasks, oldest first.
async fn tasks_of(h: &Harness, schedule: &str) -> Vec<i64> {
    let all = h
        .engine
        .list_tasks(&TaskFilter {
            oldest_first: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    for t in all {
        let s = h.engine.get_task(t.id).await.unwrap();
        if s.source_system == "schedule" && s.initiator == schedule {
            out.push(t.id);
        }
    }
    out
}

async fn tick(h: &Harness, secs: u64) {
    h.advance(Duration::from_secs(secs));
    h.engine.fire_due_schedules().await.unwrap();
}

#[tokio::test]
async fn a_schedule_makes_one_task_per_tick_named_after_it() {
    let h = setup().await;
    let info = h.engine.create_schedule(every_second("eu")).await.unwrap();
    assert_eq!(info.namespace, "reports");
    assert_eq!(
        info.next_run_at.as_deref(),
        Some("2023-11-14T22:13:21.000Z")
    );
    assert_eq!(
        (info.overlap.as_str(), info.catch_up.as_str()),
        ("skip", "latest")
    );
    // Nothing is due yet.
    h.engine.fire_due_schedules().await.unwrap();
    assert!(tasks_of(&h, "eu").await.is_empty());
    tick(&h, 1).await;
    // Fired again at the same time: the tick was taken.
    h.engine.fire_due_schedules().await.unwrap();
    let ids = tasks_of(&h, "eu").await;
    assert_eq!(ids.len(), 1);
    let t = h.engine.get_task(ids[0]).await.unwrap();
    assert_eq!(t.context, json!({"region": "eu"}));
    assert_eq!(t.reason, "schedule \"eu\": tick 2023-11-14T22:13:21Z");
    assert_eq!(
        t.idempotency_key.as_deref(),
        Some("schedule:eu:2023-11-14T22:13:21Z")
    );
    let info = h.engine.get_schedule("eu").await.unwrap();
    assert_eq!((info.fired, info.last_task_id), (1, Some(ids[0])));
    assert_eq!(
        info.last_run_at.as_deref(),
        Some("2023-11-14T22:13:21.000Z")
    );
    assert_eq!(
        info.next_run_at.as_deref(),
        Some("2023-11-14T22:13:22.000Z")
    );
}

#[tokio::test]
async fn overlap_skip_passes_over_ticks_while_the_previous_task_runs_and_allow_does_not() {
    let h = setup().await;
    h.engine
        .create_schedule(every_second("skip"))
        .await
        .unwrap();
    h.engine
        .create_schedule(ScheduleSpec {
            overlap: Overlap::Allow,
            ..every_second("allow")
        })
        .await
        .unwrap();
    for _ in 0..3 {
        tick(&h, 1).await;
    }
    assert_eq!(
        tasks_of(&h, "skip").await.len(),
        1,
        "its first task is unfinished"
    );
    assert_eq!(tasks_of(&h, "allow").await.len(), 3);
    assert_eq!(h.engine.get_schedule("skip").await.unwrap().skipped, 2);
    // Its task done, the next tick fires again.
    let mut r = tasker_core::Registry::new();
    r.register_fn("build", |_| async { Ok(json!({})) });
    h.drive(&r).await;
    tick(&h, 1).await;
    assert_eq!(tasks_of(&h, "skip").await.len(), 2);
}

#[tokio::test]
async fn a_previous_task_that_failed_does_not_hold_up_a_skip_schedule() {
    let h = setup().await;
    h.engine
        .create_schedule(every_second("after_failure"))
        .await
        .unwrap();
    tick(&h, 1).await;
    let mut r = tasker_core::Registry::new();
    r.register_fn("build", |_| async {
        Err(tasker_core::HandlerError::permanent(
            "the report server is gone",
        ))
    });
    h.drive(&r).await;
    let ids = tasks_of(&h, "after_failure").await;
    assert_eq!(
        h.engine.get_task(ids[0]).await.unwrap().status,
        TaskState::Error
    );
    tick(&h, 1).await;
    assert_eq!(tasks_of(&h, "after_failure").await.len(), 2);
}

#[tokio::test]
async fn overlap_cancel_previous_cancels_the_unfinished_task_before_the_next() {
    let h = setup().await;
    h.engine
        .create_schedule(ScheduleSpec {
            overlap: Overlap::CancelPrevious,
            ..every_second("latest_only")
        })
        .await
        .unwrap();
    tick(&h, 1).await;
    tick(&h, 1).await;
    let ids = tasks_of(&h, "latest_only").await;
    assert_eq!(ids.len(), 2);
    let first = h.engine.get_task(ids[0]).await.unwrap();
    assert_eq!(first.status, TaskState::Cancelled);
    assert_eq!(
        h.engine.get_task(ids[1]).await.unwrap().status,
        TaskState::Pending
    );
    let why = h.engine.transitions(ids[0]).await.unwrap();
    assert!(
        why.iter()
            .any(|t| t.metadata.contains("schedule_cancel_previous")),
        "{why:?}"
    );
}

#[tokio::test]
async fn catch_up_policies_after_every_process_was_down() {
    let h = setup().await;
    for (name, catch_up) in [
        ("all", CatchUp::All),
        ("latest", CatchUp::Latest),
        ("none", CatchUp::None),
    ] {
        h.engine
            .create_schedule(ScheduleSpec {
                cron: "*/10 * * * * *".into(),
                overlap: Overlap::Allow,
                catch_up,
                ..every_second(name)
            })
            .await
            .unwrap();
    }
    // Ticks at :30, :40, :50, :00, :10 pass with nobody firing; fired 5 s after the last.
    tick(&h, 55).await;
    assert_eq!(tasks_of(&h, "all").await.len(), 5);
    assert_eq!(tasks_of(&h, "latest").await.len(), 1);
    assert!(
        tasks_of(&h, "none").await.is_empty(),
        "5 s late is not on time"
    );
    let latest = h.engine.get_schedule("latest").await.unwrap();
    assert_eq!((latest.fired, latest.skipped), (1, 4));
    assert_eq!(
        latest.last_run_at.as_deref(),
        Some("2023-11-14T22:14:10.000Z")
    );
    // On time again: every policy fires the next tick.
    tick(&h, 5).await;
    assert_eq!(tasks_of(&h, "none").await.len(), 1);
    assert_eq!(tasks_of(&h, "all").await.len(), 6);
}

#[tokio::test]
async fn a_paused_schedule_makes_nothing_and_resumes_from_its_next_tick() {
    let h = setup().await;
    h.engine.create_schedule(every_second("p")).await.unwrap();
    let info = h.engine.pause_schedule("p").await.unwrap();
    assert!(info.paused && info.next_run_at.is_none());
    tick(&h, 5).await;
    assert!(tasks_of(&h, "p").await.is_empty());
    let info = h.engine.resume_schedule("p").await.unwrap();
    assert_eq!(
        info.next_run_at.as_deref(),
        Some("2023-11-14T22:13:26.000Z")
    );
    tick(&h, 1).await;
    assert_eq!(
        tasks_of(&h, "p").await.len(),
        1,
        "paused ticks are not caught up"
    );
    h.engine.delete_schedule("p").await.unwrap();
    assert!(h.engine.list_schedules().await.unwrap().is_empty());
    tick(&h, 1).await;
    assert_eq!(tasks_of(&h, "p").await.len(), 1);
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_what_is_wrong_and_nothing_is_stored() {
    let h = setup().await;
    let bad = |f: fn(&mut ScheduleSpec)| {
        let mut s = every_second("bad");
        f(&mut s);
        s
    };
    let cases: Vec<(ScheduleSpec, &str)> = vec![
        (bad(|s| s.cron = "* * *".into()), "has 3 fields"),
        (bad(|s| s.cron = "* 99 * * *".into()), "not a valid pattern"),
        (
            bad(|s| s.timezone = "Moon/Base".into()),
            "\"Moon/Base\" is not an IANA",
        ),
        (
            bad(|s| s.template = "nope".into()),
            "no template named \"nope\"",
        ),
        (bad(|s| s.context = json!({"region": 7})), "context"),
        (bad(|s| s.name = " ".into()), "name must not be empty"),
    ];
    for (spec, want) in cases {
        let e = h.engine.create_schedule(spec).await.unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
    }
    assert!(h.engine.list_schedules().await.unwrap().is_empty());
    h.engine
        .create_schedule(every_second("twice"))
        .await
        .unwrap();
    let e = h
        .engine
        .create_schedule(every_second("twice"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    for e in [
        h.engine.pause_schedule("ghost").await.unwrap_err(),
        h.engine.delete_schedule("ghost").await.unwrap_err(),
        h.engine.get_schedule("ghost").await.unwrap_err(),
    ] {
        assert!(
            matches!(&e, Error::NotFound(m) if m.contains("\"ghost\"")),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn a_templates_schedules_block_creates_its_schedules_and_a_new_revision_updates_them() {
    let h = setup().await;
    let yaml = |cron: &str| {
        format!(
            r#"
name: nightly_export
namespace: exports
version: 1.0.0
schedules:
  - name: export_berlin   # a comment
    cron: "{cron}"
    timezone: Europe/Berlin
    context: {{full: true}}
    overlap: allow
    catch_up: none
steps:
  - {{name: export}}
"#
        )
    };
    h.register(&yaml("0 2 * * *")).await;
    let s = h.engine.get_schedule("export_berlin").await.unwrap();
    assert_eq!(s.origin, "exports.nightly_export@1.0.0");
    assert_eq!(
        (s.namespace.as_str(), s.version.as_deref()),
        ("exports", Some("1.0.0"))
    );
    assert_eq!((s.overlap.as_str(), s.catch_up.as_str()), ("allow", "none"));
    // 02:00 in Berlin in November is 01:00 UTC.
    assert_eq!(s.next_run_at.as_deref(), Some("2023-11-15T01:00:00.000Z"));
    assert_eq!(s.context, json!({"full": true}));
    h.register(&yaml("30 3 * * *")).await;
    let s = h.engine.get_schedule("export_berlin").await.unwrap();
    assert_eq!(s.cron, "30 3 * * *");
    assert_eq!(s.next_run_at.as_deref(), Some("2023-11-15T02:30:00.000Z"));
    // A bad block refuses the template, naming the schedule's place.
    let e = h
        .engine
        .register_template_yaml(&yaml("0 25 * * *"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("schedules[0]"), "{e}");
}

#[tokio::test]
async fn two_engines_firing_the_same_ticks_make_one_task_each() {
    let h = setup().await;
    h.engine
        .create_schedule(ScheduleSpec {
            overlap: Overlap::Allow,
            catch_up: CatchUp::All,
            ..every_second("shared")
        })
        .await
        .unwrap();
    let other = h.reopen().await;
    for _ in 0..5 {
        h.advance(Duration::from_secs(1));
        let (a, b) = tokio::join!(h.engine.fire_due_schedules(), other.fire_due_schedules());
        a.unwrap();
        b.unwrap();
    }
    assert_eq!(tasks_of(&h, "shared").await.len(), 5);
    assert_eq!(h.engine.get_schedule("shared").await.unwrap().fired, 5);
}
