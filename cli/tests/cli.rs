//! End-to-end tests of the real `tasker` binary: subcommands, exit codes, JSON output, the
//! built-in `command` handler (retries, retry_after, permanent exit codes, timeouts) and the
//! `http` handler against a local HTTP server started by the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("t.db").display())
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tasker(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tasker"))
            .arg("--db")
            .arg(self.db())
            .args(args)
            .env_remove("TASKER_DATABASE_URL")
            .current_dir(self.dir.path())
            .output()
            .expect("run tasker")
    }

    /// `tasker run FILE --json ...`, returning (exit code, snapshot).
    fn run_json(&self, file: &Path, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["run", file.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = self.tasker(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), v)
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn step<'v>(task: &'v Value, name: &str) -> &'v Value {
    task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_offline_example_runs_with_a_retry_and_progress() {
    let env = Env::new();
    let example = repo().join("examples/cli/etl_pipeline.yaml");
    let out = env.tasker(&[
        "run",
        example.to_str().unwrap(),
        "--context",
        r#"{"region": "emea"}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("load_warehouse: attempt 1/3 failed: exit code 75: warehouse busy"),
        "{text}"
    );
    assert!(text.contains("next attempt at"), "{text}");
    assert!(
        text.contains("task 1 examples.etl_pipeline@1.0.0: complete"),
        "{text}"
    );
    assert!(text.contains("STEP") && text.contains("ATTEMPTS"), "{text}");

    let status = env.tasker(&["status", "1", "--json"]);
    let t: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(t["status"], "complete");
    assert_eq!(step(&t, "load_warehouse")["attempts"], 2);
    assert_eq!(
        step(&t, "load_warehouse")["results"],
        json!({"loaded": true, "total": 100, "customers": 3, "attempt": 2})
    );
    assert_eq!(step(&t, "extract")["results"]["rows"], 4);
    assert_eq!(step(&t, "report")["results"], "daily report sent");
}

#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL=... cargo test -p tasker-cli -- --ignored (scripts/test.sh runs it)"]
fn the_example_runs_on_postgresql_with_a_worker_process() {
    let url = std::env::var("DATABASE_URL")
        .expect("this test needs DATABASE_URL (scripts/test.sh starts a PostgreSQL)");
    let env = Env::new();
    let schema = format!("cli_{}", std::process::id());
    let example = repo().join("examples/cli/etl_pipeline.yaml");
    let tasker = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tasker"))
            .args(["--db", &url, "--schema", &schema])
            .args(args)
            .current_dir(env.dir.path())
            .output()
            .unwrap()
    };
    let out = tasker(&["run", example.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(step(&t, "load_warehouse")["attempts"], 2);
    // A task created here and finished by a separate worker process.
    let id = stdout(&tasker(&[
        "create",
        "etl_pipeline",
        "--namespace",
        "examples",
    ]))
    .trim()
    .to_owned();
    let out = tasker(&["worker", "--until-idle", "--poll-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t: Value = serde_json::from_slice(&tasker(&["status", &id, "--json"]).stdout).unwrap();
    assert_eq!(t["status"], "complete");
}

#[test]
fn json_output_has_the_snapshot_shape() {
    let env = Env::new();
    let f = env.file("echo.yaml", "name: echo\nstep_templates:\n  - name: hello\n    handler_class: command\n    handler_config: {command: [\"echo\", \"hi there\"]}\n");
    let (code, t) = env.run_json(&f, &["--context", r#"{"who": "you"}"#]);
    assert_eq!(code, 0);
    for key in [
        "id",
        "name",
        "namespace",
        "version",
        "status",
        "context",
        "steps",
        "created_at",
        "completed_at",
    ] {
        assert!(t.get(key).is_some(), "missing {key} in {t}");
    }
    assert_eq!(
        (
            t["name"].clone(),
            t["namespace"].clone(),
            t["version"].clone()
        ),
        (json!("echo"), json!("default"), json!("0.1.0"))
    );
    assert_eq!(t["context"], json!({"who": "you"}));
    let s = step(&t, "hello");
    for key in ["name", "status", "attempts", "results", "error"] {
        assert!(s.get(key).is_some(), "missing {key} in {s}");
    }
    assert_eq!(s["results"], "hi there");
}

#[test]
fn command_steps_read_their_input_on_stdin() {
    let env = Env::new();
    let f = env.file(
        "stdin.yaml",
        r#"
name: stdin
step_templates:
  - name: first
    handler_class: command
    handler_config: {command: "echo '{\"n\": 41}'"}
  - name: second
    handler_class: command
    depends_on_step: first
    handler_config:
      command: ["cat"]
"#,
    );
    let (code, t) = env.run_json(
        &f,
        &["--context", r#"{"k": "it's \"quoted\" $(rm -rf /)"}"#],
    );
    assert_eq!(code, 0);
    let input = &step(&t, "second")["results"];
    assert_eq!(input["step"], "second");
    assert_eq!(input["attempt"], 1);
    assert_eq!(input["task_id"], t["id"]);
    assert_eq!(input["context"]["k"], "it's \"quoted\" $(rm -rf /)");
    assert_eq!(input["results"]["first"], json!({"n": 41}));
}

#[test]
fn a_command_fan_out_gets_each_item_on_stdin_and_status_shows_it_as_one_group() {
    let env = Env::new();
    let f = env.file(
        "fan.yaml",
        r#"
name: fan
steps:
  - name: plan
    type: batchable
    handler: {callable: command, initialization: {command: "echo '{\"$batches\": [\"a\", \"b\", \"c\", \"d\"]}'"}}
  - name: work
    type: batch_worker
    dependencies: [plan]
    batch_config: {failure_strategy: continue_on_failure}
    handler:
      callable: command
      initialization:
        permanent_exit_codes: [3]
        command: "input=$(cat); case \"$input\" in *'\"batch\":\"c\"'*) echo 'c is broken' >&2; exit 3;; esac; echo \"$input\""
  - name: total
    type: deferred_convergence
    dependencies: [work]
    handler: {callable: command, initialization: {command: ["cat"]}}
"#,
    );
    let (code, t) = env.run_json(&f, &[]);
    assert_eq!(code, 0, "{t}");
    let seen = &step(&t, "total")["results"]["results"]["work"];
    let list = seen.as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(
        (&list[0]["batch"], &list[0]["batch_index"]),
        (&json!("a"), &json!(0))
    );
    assert_eq!(list[3]["step"], "work_004");
    assert_eq!(list[2]["$failed"]["message"], "exit code 3: c is broken");
    let out = env.tasker(&["status", &t["id"].to_string()]);
    let text = stdout(&out);
    assert!(
        text.contains("work ×4") && text.contains("3 complete, 1 error"),
        "{text}"
    );
    assert!(
        text.contains("  work_003") && text.contains("c is broken"),
        "{text}"
    );
    assert!(
        !text.contains("work_001"),
        "complete instances are summed up: {text}"
    );
}

#[test]
fn a_command_step_runs_a_child_task_and_status_shows_the_link_both_ways() {
    let env = Env::new();
    let child = env.file(
        "payment.yaml",
        r#"
name: payment
namespace: billing
steps:
  - name: capture
    handler: {callable: command, initialization: {command: ["cat"]}}
"#,
    );
    let out = env.tasker(&["templates", "register", child.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let f = env.file(
        "order.yaml",
        r#"
name: order
steps:
  - name: charge
    handler:
      callable: command
      initialization:
        command: "echo '{\"$child_task\": {\"name\": \"payment\", \"namespace\": \"billing\", \"context\": {\"amount\": 12}}}'"
  - name: ship
    dependencies: [charge]
    handler: {callable: command, initialization: {command: ["cat"]}}
"#,
    );
    let (code, t) = env.run_json(&f, &[]);
    assert_eq!(code, 0, "{t}");
    let charge = step(&t, "charge");
    let kid = charge["child_task_id"]
        .as_i64()
        .expect("the step names its child");
    assert_eq!(charge["results"]["task_id"], kid);
    // The child's `command` step read the child's context on stdin.
    assert_eq!(
        charge["results"]["results"]["capture"]["context"],
        json!({"amount": 12})
    );
    let text = stdout(&env.tasker(&["status", &t["id"].to_string()]));
    assert!(text.contains(&format!("child task {kid}")), "{text}");
    let text = stdout(&env.tasker(&["status", &kid.to_string()]));
    assert!(
        text.contains(&format!("child task of task {} (its step charge)", t["id"])),
        "{text}"
    );
}

#[test]
fn a_wait_step_from_yaml_is_approved_by_tasker_signal_and_completed_by_tasker_complete() {
    let env = Env::new();
    let f = env.file(
        "release.yaml",
        r#"
name: release
steps:
  - {name: approve, handler: {callable: wait, initialization: {signal: approved}}}
  - {name: deploy, dependencies: [approve], handler: {callable: wait}}
  - name: announce
    dependencies: [deploy]
    handler: {callable: command, initialization: {command: ["cat"]}}
"#,
    );
    let out = env.tasker(&["templates", "register", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.tasker(&["create", "release"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().rsplit(' ').next().unwrap().to_string();
    let work = || {
        let out = env.tasker(&["worker", "--until-idle"]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    work();
    let text = stdout(&env.tasker(&["status", &id]));
    assert!(
        text.contains("approve") && text.contains("waiting"),
        "{text}"
    );
    // Completing a step that is not waiting names its state.
    let out = env.tasker(&["complete", &id, "deploy"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pending"), "{}", stderr(&out));
    let out = env.tasker(&["signal", &id, "approved", "--payload", r#"{"by": "kim"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("completed 1 step"),
        "{}",
        stdout(&out)
    );
    work();
    let out = env.tasker(&["complete", &id, "deploy", "--results", r#"{"version": 3}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    work();
    let out = env.tasker(&["status", &id, "--json"]);
    let t: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(t["status"], "complete", "{t}");
    assert_eq!(step(&t, "approve")["results"], json!({"by": "kim"}));
    let seen = &step(&t, "announce")["results"]["results"];
    assert_eq!(seen["deploy"], json!({"version": 3}));
}

#[test]
fn failing_task_exits_1_and_permanent_exit_codes_are_not_retried() {
    let env = Env::new();
    let f = env.file(
        "perm.yaml",
        r#"
name: perm
step_templates:
  - name: charge
    handler_class: command
    handler_config:
      command: "echo 'card declined' >&2; exit 3"
      permanent_exit_codes: [3]
  - name: ship
    handler_class: command
    depends_on_step: charge
    handler_config: {command: "true"}
"#,
    );
    let (code, t) = env.run_json(&f, &[]);
    assert_eq!(code, 1);
    assert_eq!(t["status"], "error");
    let charge = step(&t, "charge");
    assert_eq!(charge["attempts"], 1);
    assert_eq!(charge["error"]["kind"], "permanent");
    assert_eq!(charge["error"]["message"], "exit code 3: card declined");
    assert_eq!(step(&t, "ship")["status"], "pending");
}

#[test]
fn flaky_command_is_retried_with_backoff() {
    let env = Env::new();
    let f = env.file(
        "flaky.yaml",
        r#"
name: flaky
step_templates:
  - name: flaky
    handler_class: command
    default_retry_limit: 3
    backoff: {base_seconds: 0.2, multiplier: 2, jitter: 0}
    handler_config:
      command: 'if [ "$TASKER_ATTEMPT" -lt 3 ]; then echo "try $TASKER_ATTEMPT failed" >&2; exit 1; fi; echo done'
"#,
    );
    let t0 = Instant::now();
    let (code, t) = env.run_json(&f, &[]);
    let took = t0.elapsed();
    assert_eq!(code, 0);
    assert_eq!(step(&t, "flaky")["attempts"], 3);
    // Backoff after attempt 1 is 0.4 s, after attempt 2 0.8 s.
    assert!(took >= Duration::from_millis(1200), "{took:?}");
}

#[test]
fn retry_after_printed_by_a_failing_command_is_honoured() {
    let env = Env::new();
    let f = env.file(
        "ra.yaml",
        r#"
name: ra
step_templates:
  - name: limited
    handler_class: command
    backoff: {base_seconds: 0}
    handler_config:
      command: 'if [ "$TASKER_ATTEMPT" = 1 ]; then echo "{\"retry_after\": 0.7, \"error\": \"rate limited\"}"; exit 1; fi; echo ok'
"#,
    );
    let t0 = Instant::now();
    let (code, t) = env.run_json(&f, &[]);
    assert_eq!(code, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    let id = t["id"].to_string();
    let hist = env.tasker(&["status", &id, "--json"]);
    assert!(hist.status.success());
    assert_eq!(step(&t, "limited")["attempts"], 2);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let env = Env::new();
    let pidfile = env.dir.path().join("bg.pid");
    let f = env.file(
        "slow.yaml",
        &format!(
            r#"
name: slow
step_templates:
  - name: sleepy
    handler_class: command
    timeout_seconds: 0.5
    default_retryable: false
    handler_config:
      command: "sleep 30 & echo $! > {}; wait"
"#,
            pidfile.display()
        ),
    );
    let t0 = Instant::now();
    let (code, t) = env.run_json(&f, &[]);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(code, 1);
    assert_eq!(step(&t, "sleepy")["error"]["kind"], "timeout");
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    // Dead means gone, or a zombie waiting for init to reap it.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .chars()
                    .next()
                    != Some('Z')
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(), "background child {pid} survived the timeout");
}

#[test]
fn bad_input_exits_2_and_names_the_place() {
    let env = Env::new();
    let syntax = env.file("syntax.yaml", "name: t\nstep_templates:\n  - {name: a\n");
    let out = env.tasker(&["run", syntax.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:4:1", syntax.display()))
            || err.contains(&format!("{}:", syntax.display())),
        "{err}"
    );
    assert!(err.contains("YAML syntax error"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let cycle = env.file("cycle.yaml", "name: c\nstep_templates:\n  - {name: a, depends_on_step: b, handler_class: command, handler_config: {command: 'true'}}\n  - {name: b, depends_on_step: a, handler_class: command, handler_config: {command: 'true'}}\n");
    let out = env.tasker(&["run", cycle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("dependency cycle: a -> b -> a"),
        "{}",
        stderr(&out)
    );

    let url = env.file("url.yaml", "name: u\nstep_templates:\n  - name: call\n    handler_class: http\n    handler_config: {url: 'not a url/{{context.id}}'}\n");
    let out = env.tasker(&["run", url.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("step \"call\": handler_config.url: invalid URL"),
        "{err}"
    );

    let cmd = env.file("cmd.yaml", "name: k\nstep_templates:\n  - name: x\n    handler_class: command\n    handler_config: {cmd: ls}\n");
    let out = env.tasker(&["run", cmd.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("step \"x\": handler_config: unknown field `cmd`"),
        "{}",
        stderr(&out)
    );

    let schema = env.file("schema.yaml", "name: s\nschema: {type: object, required: [id], properties: {id: {type: integer}}}\nstep_templates:\n  - {name: x, handler_class: command, handler_config: {command: 'true'}}\n");
    let out = env.tasker(&[
        "run",
        schema.to_str().unwrap(),
        "--context",
        r#"{"id": "seven"}"#,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/id: \"seven\" is not of type \"integer\""),
        "{}",
        stderr(&out)
    );
    let out = env.tasker(&["run", schema.to_str().unwrap(), "--context", "{nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--context: invalid JSON"),
        "{}",
        stderr(&out)
    );
    let out = env.tasker(&[
        "run",
        schema.to_str().unwrap(),
        "--context",
        "@missing.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read missing.json"),
        "{}",
        stderr(&out)
    );

    let foreign = env.file(
        "foreign.yaml",
        "name: f\nstep_templates:\n  - {name: x, handler_class: MyApp::Charge}\n",
    );
    let out = env.tasker(&["run", foreign.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("x (handler \"MyApp::Charge\")"),
        "{}",
        stderr(&out)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["--db", "mysql://x", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--db: unsupported database URL"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn every_operator_subcommand_works_on_a_shared_database() {
    let env = Env::new();
    let f = env.file(
        "ops.yaml",
        r#"
name: ops
version: 2.0.0
step_templates:
  - name: first
    handler_class: command
    handler_config: {command: "echo 1"}
  - name: second
    handler_class: command
    depends_on_step: first
    default_retryable: false
    handler_config:
      command: 'test -f go || { echo "no go file" >&2; exit 1; }; echo 2'
  - name: third
    handler_class: command
    depends_on_step: second
    handler_config: {command: "echo 3"}
"#,
    );
    let out = env.tasker(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.tasker(&["templates", "register", f.to_str().unwrap()]);
    assert_eq!(
        stdout(&out).trim(),
        "registered default.ops@2.0.0 (revision 1)"
    );
    let out = env.tasker(&["templates", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "ops");
    assert_eq!(list[0]["steps"], 3);

    let out = env.tasker(&["create", "ops", "--context", "{}"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    let cancel_me = stdout(&env.tasker(&["create", "ops", "--version", "2.0.0"]))
        .trim()
        .to_owned();
    let out = env.tasker(&["cancel", &cancel_me]);
    assert_eq!(stdout(&out).trim(), format!("task {cancel_me} cancelled"));

    // The worker runs what it can: `second` fails (no go file) and blocks the task.
    let out = env.tasker(&["worker", "--until-idle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t: Value = serde_json::from_slice(&env.tasker(&["status", &id, "--json"]).stdout).unwrap();
    assert_eq!(t["status"], "error");
    assert_eq!(
        step(&t, "second")["error"]["message"],
        "exit code 1: no go file"
    );

    let out = env.tasker(&["list", "--status", "error", "--json"]);
    let errs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(errs.as_array().unwrap().len(), 1);
    let out = env.tasker(&["list", "--status", "sideways"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.tasker(&["list", "--name", "ops"]);
    assert!(stdout(&out).contains("default.ops@2.0.0"));
    assert_eq!(stdout(&out).lines().count(), 3, "header and two tasks");

    let diagram = stdout(&env.tasker(&["diagram", &id]));
    assert!(diagram.starts_with("flowchart TD"), "{diagram}");
    assert!(
        diagram.contains("s0 --> s1") && diagram.contains("style s1 fill:#c62828"),
        "{diagram}"
    );
    let out = env.tasker(&["diagram", f.to_str().unwrap()]);
    assert!(stdout(&out).contains("s1 --> s2"));

    // Operator fixes the cause and retries the step; the worker finishes the task.
    std::fs::write(env.dir.path().join("go"), "").unwrap();
    let out = env.tasker(&["retry", &id, "second"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.tasker(&["worker", "--until-idle"]).status.success());
    let t: Value = serde_json::from_slice(&env.tasker(&["status", &id, "--json"]).stdout).unwrap();
    assert_eq!(t["status"], "complete");
    assert_eq!(step(&t, "third")["results"], 3);

    // Resolve: a fresh task's first step resolved by hand with results.
    let id2 = stdout(&env.tasker(&["create", "ops"])).trim().to_owned();
    let out = env.tasker(&["resolve", &id2, "first", "--results", r#"{"by": "hand"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.tasker(&["status", &id2]);
    assert!(
        stdout(&out).contains("first   resolved_manually"),
        "{}",
        stdout(&out)
    );
    let out = env.tasker(&["retry", &id2, "first"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("only a step in error can be retried"),
        "{}",
        stderr(&out)
    );
    let out = env.tasker(&["status", "424242"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "tasker: error: task 424242 does not exist"
    );
}

#[test]
fn idempotency_key_returns_the_same_task() {
    let env = Env::new();
    let f = env.file("one.yaml", "name: one\nstep_templates:\n  - {name: x, handler_class: command, handler_config: {command: 'echo $TASKER_TASK_ID'}}\n");
    let (_, a) = env.run_json(&f, &["--idempotency-key", "k1"]);
    let (_, b) = env.run_json(&f, &["--idempotency-key", "k1"]);
    assert_eq!(a["id"], b["id"]);
    assert_eq!(a["idempotency_key"], "k1");
}

#[test]
fn tasker_schedule_commands_and_a_worker_firing_a_templates_schedules_block() {
    let env = Env::new();
    let f = env.file(
        "tick.yaml",
        r#"
name: tick
schedules:
  - {name: every_second, cron: "* * * * * *", overlap: allow}
step_templates:
  - {name: x, handler_class: command, handler_config: {command: "true"}}
"#,
    );
    let out = env.tasker(&["templates", "register", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.tasker(&["schedule", "create", "bad", "tick", "* * *"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("has 3 fields"), "{}", stderr(&out));
    let out = env.tasker(&[
        "schedule",
        "create",
        "nightly",
        "tick",
        "0 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--catch-up",
        "none",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("next run"), "{}", stdout(&out));
    let out = env.tasker(&["schedule", "pause", "nightly"]);
    assert!(stdout(&out).contains("paused"), "{}", stdout(&out));
    // A worker fires the template's schedule while it runs.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["--db", &env.db(), "worker"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    unsafe_kill(child.id(), "TERM");
    child.wait().unwrap();
    let out = env.tasker(&["schedule", "list", "--json"]);
    let all: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(all[0]["name"], "every_second", "{all}");
    assert!(all[0]["fired"].as_i64().unwrap() >= 1, "{all}");
    assert_eq!(all[0]["origin"], "default.tick@0.1.0", "{all}");
    assert_eq!(all[1]["paused"], true, "{all}");
    assert_eq!(all[1]["fired"], 0, "{all}");
    let text = stdout(&env.tasker(&["schedule", "list"]));
    assert!(
        text.contains("paused") && text.contains("Europe/Berlin"),
        "{text}"
    );
    let out = env.tasker(&["schedule", "delete", "nightly"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.tasker(&["schedule", "resume", "nightly"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no schedule named \"nightly\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn worker_stops_cleanly_on_sigterm() {
    let env = Env::new();
    let f = env.file("w.yaml", "name: w\nstep_templates:\n  - {name: x, handler_class: command, handler_config: {command: 'sleep 0.3; echo done'}}\n");
    assert!(env
        .tasker(&["templates", "register", f.to_str().unwrap()])
        .status
        .success());
    let id = stdout(&env.tasker(&["create", "w"])).trim().to_owned();
    let child = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["--db", &env.db(), "worker"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step is running, then ask the worker to stop: it finishes the step first.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t: Value =
            serde_json::from_slice(&env.tasker(&["status", &id, "--json"]).stdout).unwrap();
        if step(&t, "x")["status"] == "in_progress" {
            break;
        }
        assert!(Instant::now() < deadline, "step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe_kill(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 steps completed"),
        "{}",
        stderr(&out)
    );
    let t: Value = serde_json::from_slice(&env.tasker(&["status", &id, "--json"]).stdout).unwrap();
    assert_eq!(t["status"], "complete");
}

fn unsafe_kill(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

// ---- http ------------------------------------------------------------------------------------

/// A canned response: status, extra headers, body.
type Reply = (u16, Vec<(String, String)>, String);

/// A tiny HTTP/1.1 server on 127.0.0.1 answering each path from a script of replies (the last
/// one repeats), recording every request.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String, HashMap<String, String>, String)>>>,
}

impl Server {
    fn start(script: HashMap<&'static str, Vec<Reply>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let script = Arc::new(Mutex::new(script));
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let parts: Vec<&str> = line.split_whitespace().collect();
                if parts.len() < 2 {
                    continue;
                }
                let (method, target) = (parts[0].to_owned(), parts[1].to_owned());
                let mut headers = HashMap::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let path = target.split('?').next().unwrap().to_owned();
                log.lock().unwrap().push((
                    method,
                    target.clone(),
                    headers,
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                let reply = {
                    let script = script.lock().unwrap();
                    let mut counts = counts.lock().unwrap();
                    let n = counts.entry(path.clone()).or_default();
                    let replies = script.get(path.as_str());
                    let r = replies.map(|rs| rs[(*n).min(rs.len() - 1)].clone());
                    *n += 1;
                    r.unwrap_or((404, vec![], "no such path".into()))
                };
                let (status, extra, body) = reply;
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in extra {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                resp.push_str(&body);
                let _ = stream.write_all(resp.as_bytes());
            }
        });
        Server { port, seen }
    }

    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.1.split('?').next() == Some(path))
            .count()
    }
}

fn ok(body: &str) -> Reply {
    (
        200,
        vec![("Content-Type".into(), "application/json".into())],
        body.into(),
    )
}

#[test]
fn http_steps_cover_success_retry_after_and_permanent_statuses() {
    let server = Server::start(HashMap::from([
        ("/orders/42", vec![ok(r#"{"id": 42, "total": 99.5}"#)]),
        (
            "/charge",
            vec![
                (
                    429,
                    vec![("Retry-After".into(), "1".into())],
                    "slow down".into(),
                ),
                ok(r#"{"charged": true}"#),
            ],
        ),
        (
            "/notify",
            vec![
                (503, vec![], "maintenance".into()),
                (200, vec![], "sent".into()),
            ],
        ),
    ]));
    let env = Env::new();
    let example = repo().join("examples/cli/http_order.yaml");
    let t0 = Instant::now();
    let (code, t) = env.run_json(
        &example,
        &[
            "--context",
            &format!(
                r#"{{"base_url": "http://127.0.0.1:{}", "order_id": 42, "token": "s3cret"}}"#,
                server.port
            ),
        ],
    );
    assert_eq!(code, 0, "{t}");
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 not honoured: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        step(&t, "fetch_order")["results"],
        json!({"id": 42, "total": 99.5})
    );
    assert_eq!(step(&t, "charge")["results"], json!({"charged": true}));
    assert_eq!(step(&t, "charge")["attempts"], 2);
    assert_eq!(
        step(&t, "notify")["results"],
        json!({"status": 200, "body": "sent"})
    );
    assert_eq!(step(&t, "notify")["attempts"], 2);
    assert_eq!(server.hits("/charge"), 2);
    let seen = server.seen.lock().unwrap();
    let charge = seen.iter().find(|r| r.1 == "/charge").unwrap();
    assert_eq!(charge.0, "POST");
    assert_eq!(charge.2["authorization"], "Bearer s3cret");
    let body: Value = serde_json::from_str(&charge.3).unwrap();
    assert_eq!(
        body,
        json!({"order_id": 42, "amount": 99.5, "note": "order 42"})
    );
}

#[test]
fn http_retry_after_as_an_http_date_is_honoured() {
    let when = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let server = Server::start(HashMap::from([(
        "/x",
        vec![
            (429, vec![("Retry-After".into(), when)], "later".into()),
            ok("{\"ok\": 1}"),
        ],
    )]));
    let env = Env::new();
    let f = env.file(
        "date.yaml",
        &format!("name: d\nstep_templates:\n  - name: x\n    handler_class: http\n    backoff: {{base_seconds: 0}}\n    handler_config: {{url: 'http://127.0.0.1:{}/x'}}\n", server.port),
    );
    let t0 = Instant::now();
    let (code, t) = env.run_json(&f, &[]);
    assert_eq!(code, 0);
    assert_eq!(step(&t, "x")["attempts"], 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn http_404_is_permanent_and_connection_refused_is_retried() {
    let server = Server::start(HashMap::new());
    let env = Env::new();
    let f = env.file(
        "fail.yaml",
        &format!(
            r#"
name: fail
step_templates:
  - name: missing
    handler_class: http
    handler_config: {{url: "http://127.0.0.1:{}/nothing"}}
"#,
            server.port
        ),
    );
    let (code, t) = env.run_json(&f, &[]);
    assert_eq!(code, 1);
    let m = step(&t, "missing");
    assert_eq!(
        (m["attempts"].clone(), m["error"]["kind"].clone()),
        (json!(1), json!("permanent"))
    );
    assert!(
        m["error"]["message"].as_str().unwrap().contains("HTTP 404"),
        "{m}"
    );

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let f = env.file(
        "refused.yaml",
        &format!(
            "name: refused\nstep_templates:\n  - name: down\n    handler_class: http\n    default_retry_limit: 2\n    backoff: {{base_seconds: 0.05}}\n    handler_config: {{url: 'http://127.0.0.1:{closed}/'}}\n"
        ),
    );
    let (code, t) = env.run_json(&f, &[]);
    assert_eq!(code, 1);
    let d = step(&t, "down");
    assert_eq!(
        (d["attempts"].clone(), d["error"]["kind"].clone()),
        (json!(2), json!("retryable"))
    );
    assert!(
        d["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request failed"),
        "{d}"
    );
}

#[test]
fn an_unreachable_database_is_reported_at_once_with_the_drivers_reason() {
    let env = Env::new();
    for (url, reason) in [
        ("postgres://app@127.0.0.1:1/x", "Connection refused"),
        (
            "postgres://app@nosuchhost.invalid:5432/x",
            "nosuchhost.invalid",
        ),
    ] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_tasker"))
            .args(["--db", url, "status", "1"])
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(reason), "{url}: {err}");
        assert!(
            !err.contains("pool timed out"),
            "{url}: the real cause is hidden: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: took {:?} to fail",
            started.elapsed()
        );
    }
}

#[test]
fn editing_a_template_without_a_version_bump_makes_a_new_revision() {
    let env = Env::new();
    let yaml = |n: u32| {
        format!("name: iterate\nstep_templates:\n  - {{name: a, handler_class: command, handler_config: {{command: \"printf {n}\"}}}}\n")
    };
    let p = env.file("p.yaml", &yaml(1));
    let (code, t) = env.run_json(&p, &[]);
    assert_eq!((code, step(&t, "a")["results"].clone()), (0, json!(1)));
    std::fs::write(&p, yaml(2)).unwrap();
    let out = env.tasker(&["run", p.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("registered as revision 2"),
        "the new revision is announced: {}",
        stderr(&out)
    );
    let t: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(step(&t, "a")["results"], json!(2), "the new body ran");
    let list = env.tasker(&["templates", "list", "--json"]);
    let list: Value = serde_json::from_str(&stdout(&list)).unwrap();
    let revs: Vec<(i64, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["revision"].as_i64().unwrap(),
                t["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(revs, [(1, false), (2, true)]);
    // Strict mode refuses the next edit with the reason, exit 2.
    std::fs::write(&p, yaml(3)).unwrap();
    let out = env.tasker(&["--strict-templates", "run", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("strict templates are on"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_template_keys_are_warned_about_on_stderr_and_refused_with_strict_templates() {
    let env = Env::new();
    let f = env.file(
        "monitored.yaml",
        "name: monitored\n# the original ignores these\nmonitoring: {sla_seconds: 45}\nstep_templates:\n  - {name: a, handler_class: command, handler_config: {command: 'true'}}\n",
    );
    assert!(env.tasker(&["migrate"]).status.success());
    let out = env.tasker(&["templates", "register", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "tasker: template default.monitored@0.1.0: unknown key `monitoring`: kept (compat.unknown_keys), no effect here (--strict-templates refuses this)"
    );
    let out = env.tasker(&["templates", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list[0]["compat"]["unknown_keys"]["monitoring"]["sla_seconds"],
        45
    );

    let out = env.tasker(&["--strict-templates", "run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown key `monitoring`")
            && stderr(&out).contains("strict templates are on"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn event_definition_files_register_and_list_and_a_bad_one_exits_2() {
    let env = Env::new();
    std::fs::create_dir(env.dir.path().join("events")).unwrap();
    env.file(
        "events/orders.yml",
        "---\nevents:\n  custom:\n    order_shipped:\n      constant: \"order.shipped\"\n      description: \"Fired when an order ships\"\n      payload_schema:\n        order_id: { type: \"String\", required: true }\n        carrier: { type: \"String\" }\n      fired_by: [\"ShippingService\"]\n",
    );
    assert!(env.tasker(&["migrate"]).status.success());
    let out = env.tasker(&["events", "register", "events"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("registered order.shipped (events/orders.yml)"),
        "{}",
        stdout(&out)
    );
    let out = env.tasker(&["events", "list"]);
    assert!(
        stdout(&out).contains("order.shipped")
            && stdout(&out).contains("payload: order_id, carrier?"),
        "{}",
        stdout(&out)
    );
    let out = env.tasker(&["events", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["fired_by"], serde_json::json!(["ShippingService"]));

    let bad = env.file(
        "bad.yml",
        "events:\n  custom:\n    x: {constant: shipped}\n",
    );
    let out = env.tasker(&["events", "register", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("events.custom.x.constant: \"shipped\" must contain a '.'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn operators_pause_rerun_retry_in_bulk_and_prune_from_the_command_line() {
    let env = Env::new();
    let f = env.file(
        "flow.yaml",
        r#"
name: flow
step_templates:
  - name: fetch
    handler_class: command
    handler_config: {command: "echo 1"}
  - name: load
    handler_class: command
    depends_on_step: fetch
    default_retryable: false
    handler_config:
      command: 'test -f go || { echo "warehouse down" >&2; exit 1; }; echo 2'
"#,
    );
    assert!(env
        .tasker(&["templates", "register", f.to_str().unwrap()])
        .status
        .success());
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "flow"];
        args.extend_from_slice(extra);
        stdout(&env.tasker(&args)).trim().to_owned()
    };
    let paused = create(&["--priority", "5"]);
    assert_eq!(
        stdout(&env.tasker(&["pause", &paused])).trim(),
        format!("task {paused} paused")
    );
    assert!(env.tasker(&["worker", "--until-idle"]).status.success());
    let t: Value =
        serde_json::from_slice(&env.tasker(&["status", &paused, "--json"]).stdout).unwrap();
    assert_eq!(
        (t["status"].as_str(), t["paused"].as_bool()),
        (Some("pending"), Some(true))
    );
    assert_eq!(
        stdout(&env.tasker(&["resume", &paused])).trim(),
        format!("task {paused} resumed")
    );
    let others = [create(&[]), create(&[])];
    assert!(env.tasker(&["worker", "--until-idle"]).status.success());
    for id in others.iter().chain([&paused]) {
        let t: Value =
            serde_json::from_slice(&env.tasker(&["status", id, "--json"]).stdout).unwrap();
        assert_eq!(t["status"], "error", "{id}");
    }
    // The cause is fixed: every failed task of the template is retried at once.
    std::fs::write(env.dir.path().join("go"), "").unwrap();
    let out = env.tasker(&[
        "retry", "--status", "error", "--name", "flow", "--since", "1h",
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "3 tasks will be retried",
        "{}",
        stderr(&out)
    );
    assert!(env.tasker(&["worker", "--until-idle"]).status.success());
    let out = env.tasker(&["rerun", &paused, "fetch"]);
    assert_eq!(
        stdout(&out).trim(),
        format!("task {paused} reruns from step fetch: 2 steps back to pending")
    );
    assert!(env.tasker(&["worker", "--until-idle"]).status.success());
    let out = env.tasker(&["list", "--status", "complete", "--json"]);
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done.as_array().unwrap().len(), 3);
    let out = env.tasker(&["pause", "--template", "flow"]);
    assert_eq!(stdout(&out).trim(), "0 tasks of default.flow paused");
    let out = env.tasker(&["cancel", "--name", "flow"]);
    assert_eq!(stdout(&out).trim(), "0 tasks cancelled");

    // Bad input names the place and changes nothing.
    for (args, says) in [
        (vec!["retry"], "give a task id, or filters"),
        (vec!["retry", "1", "--name", "flow"], "not both"),
        (
            vec!["retry", "--status", "complete"],
            "status must be error",
        ),
        (vec!["retry", "--since", "yesterday"], "since"),
        (vec!["prune", "--older-than", "soon"], "--older-than"),
        (
            vec!["prune", "--older-than", "1d", "--status", "pending"],
            "status pending",
        ),
        (
            vec![
                "worker",
                "--prune-older-than",
                "1d",
                "--prune-status",
                "running",
            ],
            "--prune-status",
        ),
    ] {
        let out = env.tasker(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = env.tasker(&["prune", "--older-than", "30d"]);
    assert_eq!(stdout(&out).trim(), "0 tasks pruned");
    let out = env.tasker(&["prune", "--older-than", "0"]);
    assert_eq!(stdout(&out).trim(), "3 tasks pruned");
    let out = env.tasker(&["status", &paused]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}
