//! The host driver as a language binding sees it: jobs from `next`, `started` and `finished`
//! from the host, the driver deciding the rest (timeouts from the handler's start, shutdown,
//! built-in handlers, events). These scenarios are what a new binding must get right.

use std::time::{Duration, Instant};

use serde_json::json;
use tasker_conformance::Harness;
use tasker_core::{
    FailureKind, HostDriver, HostOptions, Outcome, Registry, RunMode, StepFailure, StepState,
    TaskRequest, TaskState,
};

fn host_opts(handlers: &[&str], mode: RunMode) -> HostOptions {
    HostOptions {
        concurrency: 2,
        mode,
        host_handlers: handlers.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Collects jobs from the driver until `n` arrived (or panics after 10 s).
async fn take_jobs(d: &HostDriver, n: usize) -> Vec<tasker_core::Job> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut jobs = Vec::new();
    while jobs.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} jobs arrived",
            jobs.len()
        );
        let b = d.next(Duration::from_millis(50)).await;
        assert!(!b.done, "the run ended early");
        jobs.extend(b.jobs);
    }
    jobs
}

#[tokio::test]
async fn a_host_runs_a_task_through_next_started_and_finished() {
    let h = Harness::real_time().await;
    h.register(
        "name: two\nstep_templates:\n  - {name: a, handler_class: py}\n  - {name: b, handler_class: py, depends_on_step: a}\n",
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("two", json!({"n": 20})))
        .await
        .unwrap();
    let d = HostDriver::start(
        h.engine.clone(),
        Registry::new(),
        HostOptions {
            events: true,
            ..host_opts(&["py"], RunMode::UntilTask(id))
        },
    );
    let mut events = Vec::new();
    loop {
        let b = d.next(Duration::from_millis(100)).await;
        events.extend(b.events.iter().map(|e| e.name.to_string()));
        for job in b.jobs {
            d.started(job.key);
            let sum: i64 = job.results.values().map(|v| v.as_i64().unwrap()).sum();
            d.finished(
                job.key,
                Outcome::Complete(json!(sum + job.context["n"].as_i64().unwrap())),
            );
        }
        if b.done {
            break;
        }
    }
    let stats = d.join().await.unwrap();
    assert_eq!((stats.completed, stats.failed), (2, 0));
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete);
    assert_eq!(t.step("b").unwrap().results, json!(40));
    assert_eq!(events.iter().filter(|n| **n == "step.completed").count(), 2);
    // The task's last transition, then the original's workflow event derived from it.
    assert_eq!(
        events[events.len() - 2..],
        ["task.completed", "workflow.task_completed"]
    );
    assert_eq!(
        events
            .iter()
            .filter(|n| **n == "step.before_handle")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_timeout_counts_from_the_handlers_start_not_from_the_claim() {
    let h = Harness::real_time().await;
    h.register(
        "name: t\nstep_templates:\n  - {name: a, handler_class: py, timeout_seconds: 0.3, default_retry_limit: 1}\n",
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("t", json!({})))
        .await
        .unwrap();
    let d = HostDriver::start(
        h.engine.clone(),
        Registry::new(),
        host_opts(&["py"], RunMode::UntilTask(id)),
    );
    let job = take_jobs(&d, 1).await.remove(0);
    // The host is busy: the job waits 0.5 s before its handler starts. Not a timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.started(job.key);
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.finished(job.key, Outcome::Complete(json!("in time")));
    d.join().await.unwrap();
    assert_eq!(
        h.engine.get_task(id).await.unwrap().status,
        TaskState::Complete
    );

    // A handler that runs past its limit is failed by the driver; its late result is ignored.
    let id = h
        .engine
        .create_task(TaskRequest::new("t", json!({})))
        .await
        .unwrap();
    let d = HostDriver::start(
        h.engine.clone(),
        Registry::new(),
        host_opts(&["py"], RunMode::UntilTask(id)),
    );
    let job = take_jobs(&d, 1).await.remove(0);
    d.started(job.key);
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.engine.get_task_state(id).await.unwrap() != TaskState::Error {
        assert!(Instant::now() < deadline, "the timeout was not enforced");
        assert!(d.next(Duration::from_millis(20)).await.jobs.is_empty());
    }
    assert!(t0.elapsed() >= Duration::from_millis(300));
    d.finished(job.key, Outcome::Complete(json!("too late")));
    d.join().await.unwrap();
    let s = h.engine.get_task(id).await.unwrap();
    let a = s.step("a").unwrap();
    assert_eq!(a.status, StepState::Error);
    assert_eq!(a.results, json!(null), "the late result was not recorded");
    assert_eq!(a.error.as_ref().unwrap()["kind"], "timeout");
}

#[tokio::test]
async fn shutdown_hands_back_unstarted_jobs_and_reports_running_ones_after_the_grace() {
    let h = Harness::real_time().await;
    h.register(
        "name: one\nstep_templates:\n  - {name: a, handler_class: py, default_retry_limit: 1}\n",
    )
    .await;
    let ids = h
        .engine
        .create_tasks((0..5).map(|_| TaskRequest::new("one", json!({}))).collect())
        .await
        .unwrap();
    let d = HostDriver::start(
        h.engine.clone(),
        Registry::new(),
        HostOptions {
            shutdown_grace: Duration::from_millis(200),
            ..host_opts(&["py"], RunMode::Forever)
        },
    );
    // Two slots: two jobs reach the host; one starts, the other never does. Three more wait in
    // the driver's prefetch.
    let jobs = take_jobs(&d, 2).await;
    d.started(jobs[0].key);
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.shutdown();
    loop {
        if d.next(Duration::from_millis(50)).await.done {
            break;
        }
    }
    d.join().await.unwrap();
    let mut kinds = Vec::new();
    for id in &ids {
        let a = h.engine.get_task(*id).await.unwrap().steps.remove(0);
        assert!(
            a.status != StepState::InProgress,
            "no step is left to its lease"
        );
        kinds.push((
            a.status,
            a.attempts,
            a.error.map(|e| e["kind"].as_str().unwrap().to_owned()),
        ));
    }
    kinds.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(
        kinds,
        vec![
            // The one that ran: its (only) attempt counts.
            (StepState::Error, 1, Some("worker_shutdown".to_owned())),
            // Never started: the attempt was given back.
            (StepState::Pending, 0, None),
            (StepState::Pending, 0, None),
            (StepState::Pending, 0, None),
            (StepState::Pending, 0, None),
        ],
    );
    assert_eq!(
        FailureKind::Released,
        StepFailure::worker_shutdown(false).kind
    );
}

#[tokio::test]
async fn built_in_handlers_run_in_the_driver_beside_the_hosts_own() {
    let h = Harness::real_time().await;
    h.register(
        r#"
name: mixed
step_templates:
  - {name: sh, handler_class: command, handler_config: {command: "printf '{\"x\": 2}'"}}
  - {name: host, handler_class: py, depends_on_step: sh}
"#,
    )
    .await;
    let id = h
        .engine
        .create_task(TaskRequest::new("mixed", json!({})))
        .await
        .unwrap();
    let d = HostDriver::start(
        h.engine.clone(),
        Registry::with_builtins(),
        host_opts(&["py"], RunMode::UntilTask(id)),
    );
    let job = take_jobs(&d, 1).await.remove(0);
    assert_eq!(job.handler, "py", "the command step never reached the host");
    d.started(job.key);
    d.finished(
        job.key,
        Outcome::Complete(json!({"saw": job.results["sh"]})),
    );
    while !d.next(Duration::from_millis(50)).await.done {}
    d.join().await.unwrap();
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.step("host").unwrap().results, json!({"saw": {"x": 2}}));
}

#[tokio::test]
async fn a_template_with_a_broken_builtin_config_is_refused_by_the_engine() {
    let h = Harness::new().await;
    let err = h
        .engine
        .register_template_yaml(
            "name: bad\nstep_templates:\n  - {name: s, handler_class: command, handler_config: {}}\n",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("step \"s\""), "{err}");
}

#[tokio::test]
async fn three_lanes_share_the_slots_and_each_outcome_reaches_the_lane_holding_its_job() {
    let h = Harness::real_time().await;
    h.register("name: one\nstep_templates:\n  - {name: a, handler_class: py}\n")
        .await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            h.engine
                .create_task(TaskRequest::new("one", json!({ "i": i })))
                .await
                .unwrap(),
        );
    }
    let d = HostDriver::start(
        h.engine.clone(),
        Registry::new(),
        HostOptions {
            concurrency: 3,
            lanes: Some(3),
            ..host_opts(&["py"], RunMode::UntilIdle)
        },
    );
    // The host holds what it was handed and finishes it newest first, so outcomes come back
    // in another order than the jobs left their lanes.
    let mut held: Vec<tasker_core::Job> = Vec::new();
    let mut most_held = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "an outcome did not reach its lane"
        );
        let b = d.next(Duration::from_millis(50)).await;
        held.extend(b.jobs);
        most_held = most_held.max(held.len());
        while let Some(job) = held.pop() {
            d.started(job.key);
            d.finished(job.key, Outcome::Complete(json!(job.context["i"])));
        }
        if b.done {
            break;
        }
    }
    let stats = d.join().await.unwrap();
    assert_eq!((stats.completed, stats.failed, stats.stale), (30, 0, 0));
    assert!(
        most_held <= 3,
        "the lanes together handed out {most_held} jobs for 3 slots"
    );
    for (i, id) in ids.into_iter().enumerate() {
        let t = h.engine.get_task(id).await.unwrap();
        assert_eq!(t.status, TaskState::Complete);
        let a = t.step("a").unwrap();
        assert_eq!((a.attempts, a.results.clone()), (1, json!(i)));
    }
}
