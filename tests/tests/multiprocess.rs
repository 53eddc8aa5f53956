//! Scale-out on PostgreSQL with real processes and real signals: several worker processes on
//! one database, kill -9 in a loop (also in the middle of a fan-out), a database restart,
//! graceful SIGTERM.
//!
//! Every test needs PostgreSQL: they are `#[ignore]`d in a plain `cargo test` and run by
//! scripts/test.sh with `TASKER_TEST_BACKEND=postgres ... --include-ignored`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tasker_conformance::{backend, Harness};
use tasker_core::{Engine, StepState, TaskFilter, TaskRequest, TaskState};

const DIAMOND: &str = "name: diamond\nstep_templates:\n  - {name: A}\n  - {name: B, depends_on_step: A}\n  - {name: C, depends_on_step: A}\n  - {name: D, depends_on_steps: [B, C]}\n";

fn postgres_or_skip(test: &str) -> bool {
    assert_eq!(backend(), "postgres", "{test}: multi-process scale-out is a PostgreSQL feature; run with TASKER_TEST_BACKEND=postgres");
    true
}

struct Fleet {
    db: String,
    schema: Option<String>,
    log: PathBuf,
    lease_ms: u64,
    sleep_ms: u64,
    workers: Vec<Child>,
    spawned: usize,
    /// Extra arguments of every worker (`--forever`).
    extra: Vec<&'static str>,
}

impl Fleet {
    fn new(h: &Harness, dir: &Path, lease_ms: u64, sleep_ms: u64) -> Fleet {
        let (db, schema) = h.url();
        Fleet {
            db,
            schema,
            log: dir.join("runs.log"),
            lease_ms,
            sleep_ms,
            workers: Vec::new(),
            spawned: 0,
            extra: Vec::new(),
        }
    }

    fn spawn(&mut self) -> Child {
        self.spawned += 1;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasker-test-worker"));
        cmd.args(["--db", &self.db, "--log", self.log.to_str().unwrap()])
            .args([
                "--lease-ms",
                &self.lease_ms.to_string(),
                "--sleep-ms",
                &self.sleep_ms.to_string(),
            ])
            .args(["--worker-id", &format!("w{}", self.spawned)])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(s) = &self.schema {
            cmd.args(["--schema", s]);
        }
        cmd.spawn().expect("spawn test worker")
    }

    fn start(&mut self, n: usize) {
        for _ in 0..n {
            let c = self.spawn();
            self.workers.push(c);
        }
    }

    /// Waits for every worker to exit on its own (nothing left to do). A worker that dies of
    /// a signal or exits non-zero fails the test: only the test kills workers, and it replaces
    /// them.
    async fn wait(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for w in &mut self.workers {
            loop {
                if let Some(status) = w.try_wait().unwrap() {
                    assert!(status.success(), "worker failed: {status}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = w.kill();
                    panic!("workers did not finish within {limit:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// One run of a step as the log tells it.
#[derive(Debug, Default, Clone)]
struct Run {
    start: u128,
    end: Option<u128>,
}

/// (task, step) -> runs in start order.
fn runs(log: &Path) -> HashMap<(i64, String), Vec<Run>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out: HashMap<(i64, String), HashMap<(u32, u32), Run>> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 6, "torn log line {line:?}");
        let (task, step, attempt, pid, t): (i64, String, u32, u32, u128) = (
            f[1].parse().unwrap(),
            f[2].to_owned(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
            f[5].parse().unwrap(),
        );
        if f[0] == "ckpt" {
            continue;
        }
        let run = out
            .entry((task, step))
            .or_default()
            .entry((attempt, pid))
            .or_default();
        match f[0] {
            "start" => run.start = t,
            "end" => run.end = Some(t),
            other => panic!("bad log line {other}"),
        }
    }
    out.into_iter()
        .map(|(k, v)| {
            let mut v: Vec<Run> = v.into_values().collect();
            v.sort_by_key(|r| r.start);
            (k, v)
        })
        .collect()
}

/// (task, step) -> the highest checkpoint (`chunks`) each attempt logged having saved.
fn checkpoints(log: &Path) -> HashMap<(i64, String), HashMap<u32, i64>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out: HashMap<(i64, String), HashMap<u32, i64>> = HashMap::new();
    for f in text.lines().map(|l| l.split(' ').collect::<Vec<_>>()) {
        if f[0] == "ckpt" {
            let e = out
                .entry((f[1].parse().unwrap(), f[2].to_owned()))
                .or_default()
                .entry(f[3].parse().unwrap())
                .or_default();
            *e = (*e).max(f[5].parse().unwrap());
        }
    }
    out
}

async fn create_diamonds(engine: &Engine, n: usize) -> Vec<i64> {
    engine.register_template_yaml(DIAMOND).await.unwrap();
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let reqs = chunk
            .iter()
            .map(|i| TaskRequest::new("diamond", json!({"wf": i})))
            .collect();
        ids.extend(engine.create_tasks(reqs).await.unwrap());
    }
    ids
}

/// Every task complete with the right result; every step ran at least once and no more times
/// than it has attempts; every attempt but the last ended by lease expiry (the handlers never
/// fail, so only a dead worker makes an attempt fail); no two runs of a step overlapped.
/// Returns how many attempts ended by lease expiry.
async fn verify(engine: &Engine, ids: &[i64], log: &Path) -> usize {
    let runs = runs(log);
    let complete = engine
        .list_tasks(&TaskFilter {
            oldest_first: false,
            state: Some(TaskState::Complete),
            limit: Some(ids.len() as i64 + 10),
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    assert_eq!(complete, ids.len(), "every task completes");
    let mut expired_total = 0;
    for &id in ids {
        let t = engine.get_task(id).await.unwrap();
        assert_eq!(t.step("D").unwrap().results, json!({"d": 5}), "task {id}");
        let mut expired: HashMap<i64, i64> = HashMap::new();
        if t.steps.iter().any(|s| s.attempts > 1) {
            for r in engine.transitions(id).await.unwrap() {
                if r.to_state == "error" {
                    assert!(
                        r.metadata.contains("lease_expired"),
                        "task {id}: unexpected failure {}",
                        r.metadata
                    );
                    *expired.entry(r.step_id.unwrap()).or_default() += 1;
                }
            }
        }
        for s in &t.steps {
            assert_eq!(s.status, StepState::Complete);
            let rs = runs.get(&(id, s.name.clone())).cloned().unwrap_or_default();
            let lost = expired.get(&s.id).copied().unwrap_or(0);
            let what = format!(
                "task {id} step {}: {} attempts, {lost} expired, runs {rs:?}",
                s.name, s.attempts
            );
            assert!(rs.iter().any(|r| r.end.is_some()), "{what}");
            assert!(rs.len() as i64 <= s.attempts, "{what}");
            assert_eq!(s.attempts, lost + 1, "{what}");
            for pair in rs.windows(2) {
                if let Some(end) = pair[0].end {
                    assert!(pair[1].start >= end, "ran twice at once: {what}");
                }
            }
            expired_total += lost as usize;
        }
    }
    expired_total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: TASKER_TEST_BACKEND=postgres cargo test --test multiprocess -- --include-ignored"]
async fn four_workers_complete_2000_diamonds_without_running_a_step_twice() {
    if !postgres_or_skip("four_workers") {
        return;
    }
    let h = Harness::real_time().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = create_diamonds(&h.engine, 2000).await;
    let mut fleet = Fleet::new(&h, dir.path(), 30_000, 0);
    fleet.start(4);
    fleet.wait(Duration::from_secs(180)).await;
    let expired = verify(&h.engine, &ids, &fleet.log).await;
    assert_eq!(expired, 0, "no worker died, no lease expired");
    let total: usize = runs(&fleet.log).values().map(|r| r.len()).sum();
    assert_eq!(total, 8000, "each of the 8,000 steps ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: TASKER_TEST_BACKEND=postgres cargo test --test multiprocess -- --include-ignored"]
async fn kill_9_in_a_loop_loses_no_task_and_dead_workers_steps_rerun_after_lease_expiry() {
    if !postgres_or_skip("kill_9") {
        return;
    }
    let h = Harness::real_time().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = create_diamonds(&h.engine, 800).await;
    let mut fleet = Fleet::new(&h, dir.path(), 1_000, 40);
    fleet.start(4);
    let mut kills = 0;
    let mut i = 0;
    while kills < 24 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let victim = &mut fleet.workers[i % 4];
        i += 1;
        if victim.try_wait().unwrap().is_some() {
            // Finished on its own: nothing left for it. Restart only while work remains.
            let left = h
                .engine
                .list_tasks(&TaskFilter {
                    oldest_first: false,
                    state: Some(TaskState::Complete),
                    limit: Some(10_000),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len();
            if left == ids.len() {
                break;
            }
        } else {
            assert!(Command::new("kill")
                .args(["-9", &victim.id().to_string()])
                .status()
                .unwrap()
                .success());
            victim.wait().unwrap();
            kills += 1;
        }
        let replacement = fleet.spawn();
        fleet.workers[(i - 1) % 4] = replacement;
    }
    assert!(
        kills >= 20,
        "only {kills} kills happened: the run finished too fast to test recovery"
    );
    fleet.wait(Duration::from_secs(180)).await;
    let expired = verify(&h.engine, &ids, &fleet.log).await;
    assert!(
        expired > 0,
        "the killed workers held steps: some attempts must have expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: TASKER_TEST_BACKEND=postgres cargo test --test multiprocess -- --include-ignored"]
async fn workers_reconnect_after_postgres_restarts_mid_run() {
    if !postgres_or_skip("restart") {
        return;
    }
    let (Ok(pgdata), Ok(pgbin)) = (
        std::env::var("TASKER_PGDATA"),
        std::env::var("TASKER_PGBIN"),
    ) else {
        panic!("this test restarts the server: it needs TASKER_PGDATA and TASKER_PGBIN (scripts/test.sh sets them)");
    };
    let h = Harness::real_time().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = create_diamonds(&h.engine, 600).await;
    let mut fleet = Fleet::new(&h, dir.path(), 5_000, 20);
    fleet.start(2);
    // Restart as soon as the first tasks are done: mid-run.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = h
            .engine
            .list_tasks(&TaskFilter {
                oldest_first: false,
                state: Some(TaskState::Complete),
                limit: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap()
            .len();
        assert!(done < ids.len(), "restart must happen mid-run");
        if done > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no task completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &format!("{pgbin}/pg_ctl"),
            "-D",
            &pgdata,
            "-m",
            "fast",
            "-w",
            "restart",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl restart failed");
    fleet.wait(Duration::from_secs(180)).await;
    // This process's pool reconnects too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match h.engine.get_task(ids[0]).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the database: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    verify(&h.engine, &ids, &fleet.log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: TASKER_TEST_BACKEND=postgres cargo test --test multiprocess -- --include-ignored"]
async fn sigterm_lets_in_flight_steps_finish_and_leaves_no_lease() {
    if !postgres_or_skip("sigterm") {
        return;
    }
    let h = Harness::real_time().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = create_diamonds(&h.engine, 50).await;
    let mut fleet = Fleet::new(&h, dir.path(), 30_000, 300);
    fleet.start(1);
    // Wait until the worker is running steps, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs(&fleet.log).is_empty() {
        assert!(Instant::now() < deadline, "the worker never started a step");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = fleet.workers[0].id();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = fleet.workers[0].wait().unwrap();
    assert!(status.success(), "graceful stop exits 0: {status}");
    let log = runs(&fleet.log);
    for ((task, step), rs) in &log {
        assert!(
            rs.iter().all(|r| r.end.is_some()),
            "task {task} step {step} was cut off: {rs:?}"
        );
    }
    let mut running = 0;
    for &id in &ids {
        let t = h.engine.get_task(id).await.unwrap();
        running += t
            .steps
            .iter()
            .filter(|s| s.status == StepState::InProgress)
            .count();
    }
    assert_eq!(
        running, 0,
        "no step left in progress (no lease left behind)"
    );
    // A new worker finishes the rest; every step ran exactly once.
    fleet.workers.clear();
    fleet.start(1);
    fleet.wait(Duration::from_secs(120)).await;
    assert_eq!(verify(&h.engine, &ids, &fleet.log).await, 0);
}

const FAN_OUT: &str = "name: fan\nsteps:\n  - {name: plan, type: batchable}\n  - {name: work, type: batch_worker, dependencies: [plan], retry: {max_attempts: 50}}\n  - {name: total, type: deferred_convergence, dependencies: [work]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: TASKER_TEST_BACKEND=postgres cargo test --test multiprocess -- --include-ignored"]
async fn kill_9_in_the_middle_of_a_fan_out_of_200_runs_every_instance_once_at_a_time_from_its_checkpoint(
) {
    if !postgres_or_skip("kill_9_fan_out") {
        return;
    }
    let h = Harness::real_time().await;
    let dir = tempfile::tempdir().unwrap();
    h.engine.register_template_yaml(FAN_OUT).await.unwrap();
    let id = h
        .engine
        .create_task(TaskRequest::new("fan", json!({"items": 200})))
        .await
        .unwrap();
    // Each instance runs 4 chunks of 30 ms; leases of 2 s (heartbeats every 667 ms: a worker
    // loop stalled a second on this 2-core box while CI runs must not lose a live lease, which
    // would let a second run overlap the first); three workers of 8 slots.
    let mut fleet = Fleet::new(&h, dir.path(), 2_000, 120);
    fleet.start(3);
    let mut kills = 0;
    let mut i = 0;
    while kills < 8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let slot = i % 3;
        i += 1;
        let victim = &mut fleet.workers[slot];
        if victim.try_wait().unwrap().is_some() {
            if h.engine.get_task(id).await.unwrap().status.is_finished() {
                break;
            }
        } else {
            // Kill it in the middle of an instance: once it logged a checkpoint short of the end.
            let pid = victim.id().to_string();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read_to_string(&fleet.log)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    f[0] == "ckpt" && f[4] == pid && f[5] != "4"
                })
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap()
                .success());
            victim.wait().unwrap();
            kills += 1;
        }
        fleet.workers[slot] = fleet.spawn();
    }
    assert!(
        kills >= 6,
        "only {kills} kills: the fan-out finished too fast to test recovery"
    );
    fleet.wait(Duration::from_secs(180)).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{:?}", t.step("total"));
    let total = &t.step("total").unwrap().results;
    assert_eq!(
        total["entries"],
        json!(200),
        "one entry per item, in item order, none lost"
    );
    // Every instance: complete, attempts = lease expiries + 1, no two runs at once.
    let log = runs(&fleet.log);
    let mut expired: HashMap<i64, i64> = HashMap::new();
    for r in h.engine.transitions(id).await.unwrap() {
        if r.to_state == "error" {
            assert!(
                r.metadata.contains("lease_expired"),
                "unexpected failure {}",
                r.metadata
            );
            *expired.entry(r.step_id.unwrap()).or_default() += 1;
        }
    }
    let ckpts = checkpoints(&fleet.log);
    let instances: Vec<_> = t.steps.iter().filter(|s| s.instance_of.is_some()).collect();
    assert_eq!(instances.len(), 200);
    for s in instances {
        assert_eq!(s.status, StepState::Complete, "{}", s.name);
        let rs = log.get(&(id, s.name.clone())).cloned().unwrap_or_default();
        let lost = expired.get(&s.id).copied().unwrap_or(0);
        let what = format!(
            "{}: {} attempts, {lost} expired, runs {rs:?}",
            s.name, s.attempts
        );
        assert_eq!(s.attempts, lost + 1, "{what}");
        assert!(rs.len() as i64 <= s.attempts, "{what}");
        for pair in rs.windows(2) {
            if let Some(end) = pair[0].end {
                assert!(pair[1].start >= end, "ran twice at once: {what}");
            }
        }
        // The last attempt started from what the earlier ones saved: at least what they logged
        // (a save is logged after it commits, so a kill may leave one save unlogged).
        let from = s.results["resumed_from"].as_i64().unwrap();
        let saved = ckpts
            .get(&(id, s.name.clone()))
            .map(|a| {
                a.iter()
                    .filter(|(&n, _)| n < s.attempts as u32)
                    .map(|(_, &c)| c)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        assert!(
            saved <= from && from <= saved + 1,
            "resumed from {from}, saved {saved}: {what}"
        );
    }
    assert!(
        expired.values().sum::<i64>() > 0,
        "the killed workers held instances"
    );
    assert!(
        total["resumed"].as_i64().unwrap() > 0,
        "some instance was killed after a checkpoint and resumed from it: {total}"
    );
    eprintln!(
        "fan-out of 200: {kills} kills, {} lease expiries, {} instances resumed from a checkpoint",
        expired.values().sum::<i64>(),
        total["resumed"]
    );
}

const TREE: &str = "name: tree\nsteps:\n  - {name: plan, type: batchable}\n  - {name: spawn, type: batch_worker, dependencies: [plan], retry: {max_attempts: 50}}\n  - {name: gather, type: deferred_convergence, dependencies: [spawn]}\n";
const LEAF: &str = "name: leaf_task\nsteps:\n  - {name: leaf, retry: {max_attempts: 50}}\n  - {name: leaf2, dependencies: [leaf], retry: {max_attempts: 50}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: TASKER_TEST_BACKEND=postgres cargo test --test multiprocess -- --include-ignored"]
async fn sixty_child_tasks_across_three_workers_with_six_kills_are_created_once_and_reach_their_parent(
) {
    if !postgres_or_skip("child_tasks_across_workers") {
        return;
    }
    let h = Harness::real_time().await;
    let dir = tempfile::tempdir().unwrap();
    h.engine.register_template_yaml(TREE).await.unwrap();
    h.engine.register_template_yaml(LEAF).await.unwrap();
    // `plan` (the fan-out's batchable step) is the fan-out test's: `items` items.
    let id = h
        .engine
        .create_task(TaskRequest::new("tree", json!({"items": 60})))
        .await
        .unwrap();
    let mut fleet = Fleet::new(&h, dir.path(), 1_000, 150);
    fleet.start(3);
    // Kill a worker now and then while children run and hand their outcomes to the parent.
    for kill in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let slot = kill % 3;
        let victim = &mut fleet.workers[slot];
        if victim.try_wait().unwrap().is_none() {
            assert!(Command::new("kill")
                .args(["-9", &victim.id().to_string()])
                .status()
                .unwrap()
                .success());
            victim.wait().unwrap();
        }
        fleet.workers[slot] = fleet.spawn();
    }
    fleet.wait(Duration::from_secs(180)).await;
    let t = h.engine.get_task(id).await.unwrap();
    assert_eq!(t.status, TaskState::Complete, "{:?}", t.step("gather"));
    assert_eq!(t.step("gather").unwrap().results["entries"], json!(60));
    // One child per instance, whatever the kills: the child is created with the step's
    // `waiting`, in one transaction, and a lost attempt created none.
    let children = h
        .engine
        .list_tasks(&TaskFilter {
            name: Some("leaf_task".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(children.len(), 60, "one child per instance");
    let mut seen = std::collections::HashSet::new();
    let mut expired = 0;
    for s in t.steps.iter().filter(|s| s.instance_of.is_some()) {
        assert_eq!(s.status, StepState::Complete, "{}", s.name);
        let kid = s.child_task_id.unwrap();
        assert_eq!(s.results["task_id"], json!(kid));
        assert!(seen.insert(kid), "{} shares its child", s.name);
        let c = h.engine.get_task(kid).await.unwrap();
        assert_eq!(c.status, TaskState::Complete);
        assert_eq!(c.parent_task_id, Some(id));
        assert_eq!(c.parent_step.as_deref(), Some(s.name.as_str()));
        expired += h
            .engine
            .transitions(kid)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.metadata.contains("lease_expired"))
            .count();
    }
    assert!(children.iter().all(|c| c.parent_task_id == Some(id)));
    assert!(expired > 0, "the killed workers held child steps");
    eprintln!("60 child tasks: {expired} child steps lost to a killed worker and run again");
}

const GATED: &str =
    "name: gated\nsteps:\n  - {name: gate}\n  - {name: after, dependencies: [gate]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: TASKER_TEST_BACKEND=postgres cargo test --test multiprocess -- --include-ignored"]
async fn signals_racing_waits_across_processes_are_never_lost_and_waiting_steps_survive_kill_9() {
    if !postgres_or_skip("signals_across_workers") {
        return;
    }
    let h = Harness::real_time().await;
    let dir = tempfile::tempdir().unwrap();
    h.engine.register_template_yaml(GATED).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(
            h.engine
                .create_task(TaskRequest::new("gated", json!({"i": i})))
                .await
                .unwrap(),
        );
    }
    // The first third is signalled before any worker runs: those signals are kept.
    for &id in &ids[..20] {
        assert_eq!(
            h.engine
                .signal(id, "open", json!({"task": id}))
                .await
                .unwrap(),
            0
        );
    }
    // `gate` sleeps up to 200 ms before it waits: the second third is signalled while the
    // gates run (before or after each waits, whichever comes first).
    let mut fleet = Fleet::new(&h, dir.path(), 1_000, 200);
    fleet.start(2);
    for &id in &ids[20..40] {
        h.engine
            .signal(id, "open", json!({"task": id}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The last third waits; kill -9 every worker: a waiting step holds no lease to lose.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut waiting = 0;
        for &id in &ids[40..] {
            let t = h.engine.get_task(id).await.unwrap();
            waiting += (t.step("gate").unwrap().status == StepState::Waiting) as usize;
        }
        if waiting == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} of 20 gates waiting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in &mut fleet.workers {
        let _ = Command::new("kill")
            .args(["-9", &w.id().to_string()])
            .status();
        let _ = w.wait();
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await; // past a lease
    for &id in &ids[40..] {
        let t = h.engine.get_task(id).await.unwrap();
        assert_eq!(
            t.step("gate").unwrap().status,
            StepState::Waiting,
            "task {id}"
        );
        assert_eq!(
            h.engine
                .signal(id, "open", json!({"task": id}))
                .await
                .unwrap(),
            1
        );
    }
    fleet.workers = vec![fleet.spawn(), fleet.spawn()];
    fleet.wait(Duration::from_secs(120)).await;
    for &id in &ids {
        let t = h.engine.get_task(id).await.unwrap();
        assert_eq!(t.status, TaskState::Complete, "task {id}: {:?}", t.steps);
        let gate = t.step("gate").unwrap();
        assert_eq!(gate.attempts, 1, "task {id}: the gate ran once");
        assert_eq!(
            gate.results,
            json!({"task": id}),
            "task {id}: its own signal"
        );
        assert_eq!(
            t.step("after").unwrap().results,
            json!({"got": {"task": id}})
        );
    }
}

/// A schedule's tasks as (tick, created_at) in ms, from their idempotency keys.
async fn ticks_of(engine: &Engine, schedule: &str) -> Vec<(i64, i64)> {
    let ms = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    let mut out = Vec::new();
    let all = engine
        .list_tasks(&TaskFilter {
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();
    for t in all {
        let s = engine.get_task(t.id).await.unwrap();
        if s.initiator != schedule || s.source_system != "schedule" {
            continue;
        }
        let key = s.idempotency_key.unwrap();
        // `schedule:NAME:2026-12-07T02:00:00Z`: the tick is the last 20 characters.
        let tick = &key[key.len() - 20..];
        out.push((ms(tick), ms(&s.created_at)));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: TASKER_TEST_BACKEND=postgres cargo test --test multiprocess -- --include-ignored"]
async fn three_workers_fire_a_one_second_schedule_once_per_tick_and_catch_up_after_all_were_down() {
    if !postgres_or_skip("schedules_across_workers") {
        return;
    }
    let h = Harness::real_time().await;
    let dir = tempfile::tempdir().unwrap();
    // Nobody runs `beat`: the tasks stay pending, every tick's task is counted.
    h.engine
        .register_template_yaml("name: pulse\nstep_templates:\n  - {name: beat}\n")
        .await
        .unwrap();
    for (name, catch_up) in [("all", "all"), ("latest", "latest"), ("none", "none")] {
        let spec = tasker_core::schedule::ScheduleSpec {
            overlap: tasker_core::schedule::Overlap::Allow,
            catch_up: catch_up.parse().unwrap(),
            ..tasker_core::schedule::ScheduleSpec::new(name, "pulse", "* * * * * *")
        };
        h.engine.create_schedule(spec).await.unwrap();
    }
    let mut fleet = Fleet::new(&h, dir.path(), 2_000, 0);
    fleet.extra = vec!["--forever"];
    fleet.start(3);
    tokio::time::sleep(Duration::from_secs(20)).await;
    for w in &mut fleet.workers {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    fleet.workers.clear();
    let stopped = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarted = chrono::Utc::now().timestamp_millis();
    fleet.start(3);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for w in &mut fleet.workers {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    fleet.workers.clear();
    let gaps = |ticks: &[(i64, i64)]| -> Vec<(i64, i64)> {
        ticks
            .windows(2)
            .filter(|w| w[1].0 - w[0].0 != 1000)
            .map(|w| (w[0].0, w[1].0))
            .collect()
    };
    let all = ticks_of(&h.engine, "all").await;
    let latest = ticks_of(&h.engine, "latest").await;
    let none = ticks_of(&h.engine, "none").await;
    // While the workers ran, every tick made exactly one task (one key per tick, and none
    // skipped): 20 s of ticks, give or take the first workers' start.
    assert!(all.len() >= 20, "{} ticks", all.len());
    for (name, t) in [("all", &all), ("latest", &latest), ("none", &none)] {
        let mut uniq: Vec<i64> = t.iter().map(|x| x.0).collect();
        uniq.dedup();
        assert_eq!(uniq.len(), t.len(), "{name}: a tick made two tasks");
        assert!(
            t.iter().any(|x| x.0 > restarted),
            "{name} fired after the restart"
        );
        let g = gaps(t);
        if name == "all" {
            assert!(g.is_empty(), "all: every missed tick caught up, gaps {g:?}");
        } else {
            // One gap, across the outage only: ticks passed over while no process ran.
            assert_eq!(g.len(), 1, "{name}: gaps {g:?}");
            assert!(
                g[0].0 <= stopped && g[0].1 >= stopped,
                "{name}: gap {g:?} outside the outage"
            );
            assert!(
                g[0].1 - g[0].0 >= 3000,
                "{name}: gap {g:?} too short for a 5 s outage"
            );
        }
    }
    // `all` made the missed ticks' tasks late, at the restart; `none` made none late.
    let late = |t: &[(i64, i64)]| t.iter().filter(|x| x.1 - x.0 > 2_500).count();
    assert!(late(&all) >= 2, "all: {} late tasks", late(&all));
    assert_eq!(late(&none), 0, "none fires only on-time ticks");
    assert!(
        late(&latest) <= 1,
        "latest fires at most the one latest missed tick late"
    );
}
