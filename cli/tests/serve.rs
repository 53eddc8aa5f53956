//! `tasker serve` end to end over real HTTP: the real binary serving, workers as separate
//! processes, on SQLite (default) or PostgreSQL (`TASKER_TEST_BACKEND=postgres` with
//! `DATABASE_URL`; scripts/test.sh runs both).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tasker_server::auth::{Access, ROUTES};

/// A fresh database of the backend under test.
struct Db {
    dir: tempfile::TempDir,
    url: String,
    schema: Option<String>,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        if std::env::var("TASKER_TEST_BACKEND").as_deref() == Ok("postgres") {
            let url = std::env::var("DATABASE_URL")
                .expect("TASKER_TEST_BACKEND=postgres needs DATABASE_URL");
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let schema = format!("srv_{}_{nanos}", std::process::id());
            Db {
                dir,
                url,
                schema: Some(schema),
            }
        } else {
            let url = format!("sqlite://{}", dir.path().join("t.db").display());
            Db {
                dir,
                url,
                schema: None,
            }
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tasker"));
        c.arg("--db").arg(&self.url);
        if let Some(s) = &self.schema {
            c.args(["--schema", s, "--poll-only"]);
        }
        c.env_remove("TASKER_DATABASE_URL")
            .env_remove("TASKER_API_TOKEN")
            .env_remove("TASKER_JWT_SECRET")
            .current_dir(self.dir.path());
        c
    }

    fn tasker(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tasker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn register(&self, yaml: &str) {
        let p = self.dir.path().join(format!("t{}.yaml", yaml.len()));
        std::fs::write(&p, yaml).unwrap();
        self.tasker(&["templates", "register", p.to_str().unwrap()]);
    }

    /// Runs a worker process until nothing is left.
    fn work(&self) {
        self.tasker(&["worker", "--until-idle"]);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// What a child process announces on its first stdout line after `prefix` (the address it
/// bound); panics with its stderr when the line is not there.
fn announced(child: &mut Child, prefix: &str) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().strip_prefix(prefix) {
        Some(rest) => rest.to_owned(),
        None => {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = std::io::Read::read_to_string(e, &mut err);
            }
            panic!("expected {prefix:?}..., got {line:?}; stderr: {err}")
        }
    }
}

/// A running `tasker serve`.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Server {
    fn start(db: &Db, extra: &[&str]) -> Server {
        Server::start_env(db, extra, &[])
    }

    fn start_env(db: &Db, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = db
            .command()
            .envs(env.iter().copied())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let base = announced(&mut child, "tasker: serving on ");
        Server {
            child,
            base,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body), None).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn step<'v>(task: &'v Value, name: &str) -> &'v Value {
    task["workflow_steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

/// A diamond of `command` steps; `flaky` fails until the file `ok` exists in the test's folder.
fn template(db: &Db) -> String {
    format!(
        r#"
name: pipeline
namespace_name: shop
version: 1.0.0
schema:
  type: object
  properties:
    n: {{type: integer}}
step_templates:
  - name: fetch
    handler_class: command
    handler_config: {{command: ["sh", "-c", "echo '{{\"rows\": 3}}'"]}}
  - name: flaky
    handler_class: command
    depends_on_step: fetch
    default_retry_limit: 1
    handler_config: {{command: ["sh", "-c", "test -f {ok} && echo '{{\"ok\": true}}'"]}}
  - name: report
    handler_class: command
    depends_on_steps: [fetch, flaky]
    handler_config: {{command: ["sh", "-c", "echo '{{\"done\": true}}'"]}}
"#,
        ok = db.path("ok").display()
    )
}

#[tokio::test]
async fn tasks_are_created_run_by_a_worker_process_shown_listed_and_paged() {
    let db = Db::new();
    db.register(&template(&db));
    std::fs::write(db.path("ok"), "").unwrap();
    let s = Server::start(&db, &[]);
    let (code, created) = s
        .post("/tasks", json!({"name": "pipeline", "namespace": "shop", "version": "1.0.0", "context": {"n": 1}, "initiator": "api-test", "reason": "test", "tags": ["a"]}))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let id = created["task"]["task_id"].as_i64().unwrap();
    assert_eq!(created["task"]["full_name"], "shop.pipeline@1.0.0");
    assert_eq!(created["task"]["status"], "pending");
    assert_eq!(created["task"]["initiator"], "api-test");
    // The Rails controller's wrapped form, with an idempotency key: created once, then 200.
    let wrapped = json!({"task": {"name": "pipeline", "namespace": "shop", "context": {"n": 2}, "idempotency_key": "k-1"}});
    let (c1, t1) = s.post("/tasks", wrapped.clone()).await;
    let (c2, t2) = s.post("/tasks", wrapped).await;
    assert_eq!((c1, c2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(t1["task"]["task_id"], t2["task"]["task_id"]);
    for n in 3..6 {
        s.post(
            "/tasks",
            json!({"name": "pipeline", "namespace": "shop", "context": {"n": n}}),
        )
        .await;
    }

    db.work();
    let (code, shown) = s.get(&format!("/tasks/{id}")).await;
    assert_eq!(code, StatusCode::OK);
    let t = &shown["task"];
    assert_eq!(t["status"], "complete", "{t}");
    assert_eq!(t["complete"], true);
    assert_eq!(step(t, "fetch")["results"], json!({"rows": 3}));
    assert_eq!(step(t, "fetch")["children"], json!(["flaky", "report"]));
    assert_eq!(step(t, "report")["parents"], json!(["fetch", "flaky"]));
    assert_eq!(step(t, "flaky")["retry_limit"], 1);

    let (_, page) = s.get("/tasks?limit=2&offset=1&sort_order=desc").await;
    assert_eq!(
        page["pagination"],
        json!({"limit": 2, "offset": 1, "total": 5})
    );
    let ids: Vec<i64> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] > ids[1], "newest first: {ids:?}");
    let (_, asc) = s.get("/tasks?limit=1").await;
    assert_eq!(
        asc["tasks"][0]["task_id"], id,
        "oldest first by default, as the original"
    );
    let (_, done) = s
        .get("/tasks?status=complete&namespace=shop&name=pipeline")
        .await;
    assert_eq!(done["pagination"]["total"], 5);
    let (_, none) = s.get("/tasks?status=error").await;
    assert_eq!(none["pagination"]["total"], 0);

    let (_, steps) = s.get(&format!("/tasks/{id}/workflow_steps")).await;
    assert_eq!(steps["steps"].as_array().unwrap().len(), 3);
    let step_id = step(t, "report")["workflow_step_id"].as_i64().unwrap();
    let (code, by_id) = s
        .get(&format!("/tasks/{id}/workflow_steps/{step_id}"))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(by_id["step"]["name"], "report");
    let (_, history) = s.get(&format!("/tasks/{id}/transitions")).await;
    let to: Vec<&str> = history["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["step_name"] == "fetch")
        .map(|r| r["to_state"].as_str().unwrap())
        .collect();
    assert_eq!(to, ["pending", "in_progress", "complete"]);

    let (code, graph) = s.get(&format!("/tasks/{id}/task_diagrams.json")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(graph["direction"], "TD");
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(graph["edges"].as_array().unwrap().len(), 3);
    let (_, mmd) = s.get(&format!("/tasks/{id}/task_diagrams.mmd")).await;
    assert!(mmd.as_str().unwrap().starts_with("flowchart TD"), "{mmd}");
    let (_, html) = s.get(&format!("/tasks/{id}/task_diagrams.html")).await;
    assert!(html.as_str().unwrap().contains("<pre class=\"mermaid\">"));

    let (_, hs) = s.get("/handlers").await;
    assert_eq!(
        hs["namespaces"],
        json!([{"name": "shop", "handler_count": 1}])
    );
    let (_, ns) = s.get("/handlers/shop").await;
    assert_eq!(ns["handlers"][0]["versions"], json!(["1.0.0"]));
    let (_, h) = s.get("/handlers/shop/pipeline?version=1.0.0").await;
    assert_eq!(
        h["handler"]["dependency_graph"]["execution_order"],
        json!(["fetch", "flaky", "report"])
    );
}

#[tokio::test]
async fn concurrent_creations_share_commits_and_a_bad_one_fails_alone() {
    let db = Db::new();
    db.register(&template(&db));
    let s = std::sync::Arc::new(Server::start(&db, &[]));
    let mut handles = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        // Request 17 breaks the schema; it must not take the others down with it.
        let n = if i == 17 {
            json!("seventeen")
        } else {
            json!(i)
        };
        handles.push(tokio::spawn(async move {
            s.post("/tasks", json!({"name": "pipeline", "namespace": "shop", "context": {"n": n}, "idempotency_key": format!("c-{i}")})).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for (i, h) in handles.into_iter().enumerate() {
        let (code, body) = h.await.unwrap();
        if i == 17 {
            assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert!(
                body["error"]["message"].as_str().unwrap().contains("/n"),
                "{body}"
            );
        } else {
            assert_eq!(code, StatusCode::CREATED, "{i}: {body}");
            assert_eq!(body["task"]["context"]["n"], i);
            ids.insert(body["task"]["task_id"].as_i64().unwrap());
        }
    }
    assert_eq!(ids.len(), 39);
    let (_, page) = s.get("/tasks?limit=0").await;
    assert_eq!(page["pagination"]["total"], 39);
}

#[tokio::test]
async fn operator_actions_retry_resolve_and_cancel_over_http() {
    let db = Db::new();
    db.register(&template(&db));
    let s = Server::start(&db, &[]);
    let (_, a) = s
        .post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
        .await;
    let (_, b) = s
        .post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
        .await;
    let (_, d) = s
        .post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
        .await;
    let (_, e) = s
        .post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
        .await;
    let [a, b, d, e] = [a, b, d, e].map(|t| t["task"]["task_id"].as_i64().unwrap());
    db.work(); // flaky fails (no `ok` file), every task ends in error
    let (_, ta) = s.get(&format!("/tasks/{a}")).await;
    assert_eq!(ta["task"]["status"], "error");
    assert_eq!(step(&ta["task"], "flaky")["status"], "error");

    // retry after fixing the cause
    std::fs::write(db.path("ok"), "").unwrap();
    let (code, r) = s
        .post(&format!("/tasks/{a}/workflow_steps/flaky/retry"), json!({}))
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["step"]["status"], "pending");
    // resolve by hand with results
    let (code, r) = s
        .post(
            &format!("/tasks/{b}/workflow_steps/flaky/resolve"),
            json!({"results": {"by": "ops"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["step"]["status"], "resolved_manually");
    // a second attempt for d's flaky (named by its id), as the original's PATCH retry_limit
    let (_, td) = s.get(&format!("/tasks/{d}")).await;
    let flaky_id = step(&td["task"], "flaky")["workflow_step_id"]
        .as_i64()
        .unwrap();
    let (code, r) = s
        .call(
            Method::PATCH,
            &format!("/tasks/{d}/workflow_steps/{flaky_id}"),
            Some(json!({"retry_limit": 2})),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["step"]["retry_limit"].clone(),
            r["step"]["attempts"].clone()
        ),
        (json!(2), json!(1))
    );
    let (_, td) = s.get(&format!("/tasks/{d}")).await;
    assert_eq!(
        td["task"]["status"], "pending",
        "flaky has an attempt left: d is unblocked"
    );
    // cancel e's flaky: it and `report`, which needs it, are cancelled; e completes
    let (code, r) = s
        .call(
            Method::DELETE,
            &format!("/tasks/{e}/workflow_steps/flaky"),
            None,
            None,
        )
        .await;
    assert_eq!((code, r), (StatusCode::OK, json!({"cancelled": true})));
    let (_, te) = s.get(&format!("/tasks/{e}")).await;
    assert_eq!(te["task"]["status"], "complete", "{te}");
    assert_eq!(step(&te["task"], "report")["status"], "cancelled");
    let (code, r) = s
        .call(
            Method::DELETE,
            &format!("/tasks/{e}/workflow_steps/fetch"),
            None,
            None,
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{r}");
    db.work();
    let (_, td) = s.get(&format!("/tasks/{d}/workflow_steps/flaky")).await;
    assert_eq!(
        (td["step"]["status"].clone(), td["step"]["attempts"].clone()),
        (json!("complete"), json!(2))
    );
    for id in [a, b, d] {
        let (_, t) = s.get(&format!("/tasks/{id}")).await;
        assert_eq!(t["task"]["status"], "complete", "{t}");
    }
    let (_, tb) = s.get(&format!("/tasks/{b}/workflow_steps/flaky")).await;
    assert_eq!(tb["step"]["results"], json!({"by": "ops"}));

    // reason and tags change, in any state
    let (code, t) = s
        .call(
            Method::PATCH,
            &format!("/tasks/{b}"),
            Some(json!({"reason": "fixed by ops", "tags": ["ops", "manual"]})),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{t}");
    assert_eq!(
        (t["task"]["reason"].clone(), t["task"]["tags"].clone()),
        (json!("fixed by ops"), json!(["ops", "manual"]))
    );
    let (_, t) = s
        .call(
            Method::PUT,
            &format!("/tasks/{b}"),
            Some(json!({"task": {"tags": []}})),
            None,
        )
        .await;
    assert_eq!(
        (t["task"]["reason"].clone(), t["task"]["tags"].clone()),
        (json!("fixed by ops"), json!([]))
    );

    // cancel, then cancelling again conflicts
    let (_, c) = s
        .post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
        .await;
    let c = c["task"]["task_id"].as_i64().unwrap();
    let (code, body) = s
        .call(Method::DELETE, &format!("/tasks/{c}"), None, None)
        .await;
    assert_eq!((code, body), (StatusCode::OK, json!({"cancelled": true})));
    let (code, body) = s
        .call(Method::DELETE, &format!("/tasks/{c}"), None, None)
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let (code, _) = s
        .post(&format!("/tasks/{c}/workflow_steps/flaky/retry"), json!({}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
}

#[tokio::test]
async fn bad_requests_get_their_own_status_and_a_json_error_naming_the_problem() {
    let db = Db::new();
    db.register(&template(&db));
    let s = Server::start(&db, &[]);
    let (_, t) = s
        .post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
        .await;
    let id = t["task"]["task_id"].as_i64().unwrap();
    let raw = |m: Method, path: &str, ctype: Option<&str>, body: &str| {
        let mut r = s
            .http
            .request(m, format!("{}{path}", s.base))
            .body(body.to_owned());
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        r
    };
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            raw(Method::POST, "/tasks", Some("application/json"), "{bad"),
            StatusCode::BAD_REQUEST,
            "Failed to parse",
        ),
        (
            raw(Method::POST, "/tasks", None, "{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            raw(Method::POST, "/tasks", Some("application/json"), "{}"),
            StatusCode::BAD_REQUEST,
            "requires task name",
        ),
        (
            raw(Method::POST, "/tasks", Some("application/json"), "[1]"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected a JSON object",
        ),
        (
            raw(
                Method::POST,
                "/tasks",
                Some("application/json"),
                r#"{"name": "pipeline", "namespace": "shop", "contxt": {}}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `contxt`",
        ),
        (
            raw(
                Method::POST,
                "/tasks",
                Some("application/json"),
                r#"{"name": "pipeline", "namespace": "shop", "context": {"n": "x"}}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/n",
        ),
        (
            raw(
                Method::POST,
                "/tasks",
                Some("application/json"),
                r#"{"name": "nope"}"#,
            ),
            StatusCode::NOT_FOUND,
            "no template named \"nope\"",
        ),
        (
            raw(Method::GET, "/tasks?limit=-1", None, ""),
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            raw(Method::GET, "/tasks?status=done", None, ""),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            raw(Method::GET, "/tasks?sort_by=name", None, ""),
            StatusCode::BAD_REQUEST,
            "sort_by",
        ),
        (
            raw(Method::GET, "/tasks?sort_order=up", None, ""),
            StatusCode::BAD_REQUEST,
            "sort_order",
        ),
        (
            raw(Method::GET, "/tasks?page=2", None, ""),
            StatusCode::BAD_REQUEST,
            "unknown query parameter \"page\"",
        ),
        (
            raw(Method::GET, "/tasks/x1", None, ""),
            StatusCode::BAD_REQUEST,
            "task id must be a positive integer",
        ),
        (
            raw(Method::GET, "/tasks/999999", None, ""),
            StatusCode::NOT_FOUND,
            "task 999999 does not exist",
        ),
        (
            raw(
                Method::GET,
                &format!("/tasks/{id}/workflow_steps/nope"),
                None,
                "",
            ),
            StatusCode::NOT_FOUND,
            "no step named or numbered \"nope\"",
        ),
        (
            raw(
                Method::GET,
                &format!("/tasks/{id}/task_diagrams.pdf"),
                None,
                "",
            ),
            StatusCode::NOT_FOUND,
            "no route",
        ),
        (
            raw(
                Method::POST,
                &format!("/tasks/{id}/workflow_steps/fetch/retry"),
                None,
                "",
            ),
            StatusCode::CONFLICT,
            "pending",
        ),
        (
            raw(
                Method::POST,
                &format!("/tasks/{id}/workflow_steps/fetch/resolve"),
                Some("application/json"),
                r#"{"result": 1}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field \"result\"",
        ),
        (
            raw(Method::GET, "/handlers/nowhere", None, ""),
            StatusCode::NOT_FOUND,
            "nowhere",
        ),
        (
            raw(
                Method::GET,
                "/handlers/shop/pipeline?version=9.9.9",
                None,
                "",
            ),
            StatusCode::NOT_FOUND,
            "9.9.9",
        ),
        (
            raw(
                Method::PATCH,
                &format!("/tasks/{id}/workflow_steps/fetch"),
                Some("application/json"),
                r#"{"retry_limit": 0}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "retry_limit must be an integer from 1",
        ),
        (
            raw(
                Method::PATCH,
                &format!("/tasks/{id}/workflow_steps/fetch"),
                Some("application/json"),
                r#"{"inputs": {"a": 1}}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "inputs cannot change",
        ),
        (
            raw(
                Method::PATCH,
                &format!("/tasks/{id}/workflow_steps/fetch"),
                Some("application/json"),
                r#"{"retry_limit": "many"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            raw(
                Method::DELETE,
                &format!("/tasks/{id}/workflow_steps/nope"),
                None,
                "",
            ),
            StatusCode::NOT_FOUND,
            "\"nope\"",
        ),
        (
            raw(
                Method::PATCH,
                &format!("/tasks/{id}"),
                Some("application/json"),
                r#"{"status": "complete"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "only reason and tags can change",
        ),
        (
            raw(
                Method::PATCH,
                &format!("/tasks/{id}"),
                Some("application/json"),
                "{}",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "give reason and/or tags",
        ),
        (
            raw(
                Method::PATCH,
                &format!("/tasks/{id}"),
                Some("application/json"),
                r#"{"tags": "x"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            raw(
                Method::PATCH,
                "/tasks/999999",
                Some("application/json"),
                r#"{"reason": "x"}"#,
            ),
            StatusCode::NOT_FOUND,
            "999999",
        ),
        (
            raw(Method::GET, "/no/such/route", None, ""),
            StatusCode::NOT_FOUND,
            "no such route",
        ),
    ];
    for (req, want, needle) in cases {
        let desc = format!("{:?}", req);
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{desc}: not JSON: {e}"));
        assert_eq!(status, want, "{desc}: {body}");
        let msg = body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{desc}: {body}"));
        assert!(
            msg.contains(needle),
            "{desc}: {msg:?} should mention {needle:?}"
        );
        assert!(body["error"]["code"].is_string());
    }
}

/// Every route of the access table with its placeholders filled.
fn concrete(pattern: &str, task: i64) -> String {
    pattern
        .replace("{id}", &task.to_string())
        .replace("{step}", "fetch")
        .replace("{file}", "task_diagrams.json")
        .replace("{asset}", "app.js")
        .replace("{namespace}", "shop")
        .replace("{name}", "pipeline")
}

#[tokio::test]
async fn every_route_needs_the_token_except_the_probes() {
    let db = Db::new();
    db.register(&template(&db));
    let token = "s3cret-token-0123456789";
    let s = Server::start(&db, &["--auth-token", token, "--base-path", "/tasker"]);
    assert!(s.base.ends_with("/tasker"));
    let (code, t) = s
        .call(
            Method::POST,
            "/tasks",
            Some(json!({"name": "pipeline", "namespace": "shop"})),
            Some(token),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{t}");
    let id = t["task"]["task_id"].as_i64().unwrap();
    for (method, pattern, access) in ROUTES {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let path = concrete(pattern, id);
        let (anon, body) = s.call(m.clone(), &path, None, None).await;
        let (wrong, _) = s
            .call(m.clone(), &path, None, Some("s3cret-token-0123456780"))
            .await;
        if *access == Access::Public {
            assert!(anon.is_success(), "{method} {path}: {anon} {body}");
            continue;
        }
        assert_eq!(
            anon,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token: {body}"
        );
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(
            wrong,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a wrong token"
        );
        let (ok, body) = s.call(m, &path, None, Some(token)).await;
        assert!(
            ok != StatusCode::UNAUTHORIZED && ok != StatusCode::FORBIDDEN,
            "{method} {path} with the token: {ok} {body}"
        );
    }
    // Outside the base path nothing is served.
    let (code, _) = s
        .http
        .get(s.base.replace("/tasker", "/tasks"))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(code, StatusCode::NOT_FOUND);
}

fn jwt(secret: &str, permissions: &[&str], exp_offset: i64) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + exp_offset;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "ops", "permissions": permissions, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn jwt_permissions_are_checked_per_route_and_expiry_is_honoured() {
    let db = Db::new();
    db.register(&template(&db));
    let secret = "a-long-hs256-secret-for-tests";
    let s = Server::start(&db, &["--jwt-secret", secret]);
    let all: Vec<&str> = ROUTES
        .iter()
        .filter_map(|(_, _, a)| match a {
            Access::Permission(p) => Some(*p),
            _ => None,
        })
        .collect();
    let admin = jwt(secret, &all, 600);
    let (_, t) = s
        .call(
            Method::POST,
            "/tasks",
            Some(json!({"name": "pipeline", "namespace": "shop"})),
            Some(&admin),
        )
        .await;
    let id = t["task"]["task_id"].as_i64().unwrap();
    for (method, pattern, access) in ROUTES {
        let Access::Permission(p) = access else {
            continue;
        };
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let path = concrete(pattern, id);
        let others: Vec<&str> = all.iter().copied().filter(|x| x != p).collect();
        let (code, body) = s
            .call(m.clone(), &path, None, Some(&jwt(secret, &others, 600)))
            .await;
        assert_eq!(
            code,
            StatusCode::FORBIDDEN,
            "{method} {path} without {p}: {body}"
        );
        assert!(body["error"]["message"].as_str().unwrap().contains(p));
        let (code, body) = s.call(m, &path, None, Some(&jwt(secret, &[p], 600))).await;
        assert!(
            code != StatusCode::UNAUTHORIZED && code != StatusCode::FORBIDDEN,
            "{method} {path} with {p}: {code} {body}"
        );
    }
    let (code, body) = s
        .call(Method::GET, "/tasks", None, Some(&jwt(secret, &all, -120)))
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "expired: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Expired"),
        "{body}"
    );
    let (code, _) = s
        .call(
            Method::GET,
            "/tasks",
            None,
            Some(&jwt("another-secret-of-length", &all, 600)),
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "wrong signature");
    let (code, _) = s.get("/health/ready").await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn rs256_tokens_are_verified_with_the_public_key() {
    let db = Db::new();
    let key = db.path("key.pem");
    let public = db.path("public.pem");
    let gen = Command::new("openssl")
        .args(["genrsa", "-out", key.to_str().unwrap(), "2048"])
        .output();
    let Ok(out) = gen else {
        panic!("openssl is needed to make an RSA key for this test")
    };
    assert!(out.status.success());
    let out = Command::new("openssl")
        .args([
            "rsa",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = Server::start(&db, &["--jwt-public-key", public.to_str().unwrap()]);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"permissions": ["tasker.task:index"], "exp": exp}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap(),
    )
    .unwrap();
    let (code, body) = s.call(Method::GET, "/tasks", None, Some(&token)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _) = s.call(Method::GET, "/metrics", None, Some(&token)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let hs = jwt("a-long-hs256-secret-for-tests", &["tasker.task:index"], 600);
    let (code, _) = s.call(Method::GET, "/tasks", None, Some(&hs)).await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "an HS256 token is refused by an RS256 server"
    );
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_health_reports_counts() {
    let db = Db::new();
    db.register(&template(&db));
    let s = Server::start(&db, &[]);
    for _ in 0..3 {
        s.post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
            .await;
    }
    db.work(); // without the `ok` file: flaky fails, tasks end in error
    let (code, health) = s.get("/health/status").await;
    assert_eq!(
        code,
        StatusCode::SERVICE_UNAVAILABLE,
        "every task failed: unhealthy: {health}"
    );
    assert_eq!(health["metrics"]["tasks"]["error"], 3);
    assert_eq!(health["metrics"]["steps"]["complete"], 3);
    assert_eq!(health["metrics"]["retries"]["exhausted_retries"], 3);
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        parsed
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?} in\n{text}"))
    };
    assert_eq!(value("tasker_tasks", Some(("state", "error"))), 3.0);
    assert_eq!(value("tasker_steps", Some(("state", "pending"))), 3.0);
    assert_eq!(value("tasker_steps_exhausted", None), 3.0);
    assert_eq!(
        value(
            "tasker_events_total",
            Some(("event", "task.initialize_requested"))
        ),
        3.0
    );
    assert!(value("tasker_http_requests_total", Some(("route", "/tasks"))) >= 3.0);
    assert_eq!(
        value("tasker_tasks_created_total", Some(("name", "pipeline"))),
        3.0
    );
    assert!(
        parsed.docs.contains_key("tasker_tasks"),
        "HELP lines: {:?}",
        parsed.docs
    );
}

#[tokio::test]
async fn serving_without_auth_off_loopback_is_refused_and_sigterm_stops_cleanly() {
    let db = Db::new();
    let out = db
        .command()
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("refusing to serve on 0.0.0.0:0 without auth"));
    let out = db
        .command()
        .args(["serve", "--auth-token", "short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a short token is refused");
    let out = db
        .command()
        .args(["serve", "--base-path", "no-slash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let mut s = Server::start(&db, &[]);
    let (code, _) = s.get("/health/live").await;
    assert_eq!(code, StatusCode::OK);
    let pid = s.child.id();
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still serving 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_request() {
    let db = Db::new();
    let mut child = db
        .command()
        .env("TASKER_LOG", "tasker_server=info")
        .args(["--log-format", "json", "serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = announced(&mut child, "tasker: serving on ");
    let code = reqwest::get(format!("{base}/tasks/77"))
        .await
        .unwrap()
        .status();
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let logs: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let answered = logs
        .iter()
        .find(|l| l["fields"]["message"] == "answered")
        .expect("a request line");
    assert_eq!(answered["fields"]["status"], 404);
    assert_eq!(answered["span"]["route"], "/tasks/{id}");
    assert_eq!(answered["level"], "INFO");
}

async fn gql(s: &Server, token: Option<&str>, query: &str, variables: Value) -> Value {
    let (code, body) = s
        .call(
            Method::POST,
            "/graphql",
            Some(json!({"query": query, "variables": variables})),
            token,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn graphql_queries_and_mutations_with_per_field_permissions() {
    let db = Db::new();
    db.register(&template(&db));
    let secret = "a-long-hs256-secret-for-graphql";
    let s = Server::start(&db, &["--jwt-secret", secret]);
    let perms = [
        "tasker.task:index",
        "tasker.task:show",
        "tasker.task:create",
        "tasker.task:update",
        "tasker.task:cancel",
        "tasker.workflow_step:show",
        "tasker.workflow_step:retry",
        "tasker.workflow_step:update",
    ];
    let admin = jwt(secret, &perms, 600);
    let created = gql(
        &s,
        Some(&admin),
        r#"mutation($ctx: JSON) { a: createTask(name: "pipeline", namespace: "shop", context: $ctx, tags: ["x"]) { taskId status }
                                  b: createTask(name: "pipeline", namespace: "shop") { taskId } }"#,
        json!({"ctx": {"n": 5}}),
    )
    .await;
    let a = created["data"]["a"]["taskId"].as_i64().unwrap();
    let b = created["data"]["b"]["taskId"].as_i64().unwrap();
    assert_eq!(created["data"]["a"]["status"], "pending");
    db.work(); // flaky fails: both tasks end in error
    let q = gql(
        &s,
        Some(&admin),
        r#"query($id: Int!) { tasksByStatus(status: "error", sortOrder: "asc") { taskId fullName context tags }
                              task(taskId: $id) { status workflowSteps { name status attempts children error } }
                              step(taskId: $id, stepId: "fetch") { status results parents children } }"#,
        json!({"id": a}),
    )
    .await;
    assert!(q["errors"].is_null(), "{q}");
    assert_eq!(q["data"]["tasksByStatus"][0]["taskId"], a);
    assert_eq!(q["data"]["tasksByStatus"][0]["context"], json!({"n": 5}));
    assert_eq!(
        q["data"]["tasksByStatus"][0]["fullName"],
        "shop.pipeline@1.0.0"
    );
    assert_eq!(q["data"]["task"]["status"], "error");
    assert_eq!(q["data"]["step"]["results"], json!({"rows": 3}));
    assert_eq!(q["data"]["step"]["children"], json!(["flaky", "report"]));

    std::fs::write(db.path("ok"), "").unwrap();
    let m = gql(
        &s,
        Some(&admin),
        r#"mutation($a: Int!, $b: Int!) { retryStep(taskId: $a, stepId: "flaky") { status }
                                          resolveStep(taskId: $b, stepId: "flaky", results: {by: "gql"}) { status results }
                                          updateTask(taskId: $b, reason: "ops") { taskId } }"#,
        json!({"a": a, "b": b}),
    )
    .await;
    assert!(m["errors"].is_null(), "{m}");
    assert_eq!(m["data"]["retryStep"]["status"], "pending");
    assert_eq!(
        m["data"]["resolveStep"],
        json!({"status": "resolved_manually", "results": {"by": "gql"}})
    );
    db.work();
    let done = gql(&s, Some(&admin), "query($a: Int!, $b: Int!) { a: task(taskId: $a) { status } b: task(taskId: $b) { status reason } }", json!({"a": a, "b": b})).await;
    assert_eq!(
        done["data"],
        json!({"a": {"status": "complete"}, "b": {"status": "complete", "reason": "ops"}})
    );
    let c = gql(
        &s,
        Some(&admin),
        r#"mutation { createTask(name: "pipeline", namespace: "shop") { taskId } }"#,
        json!({}),
    )
    .await;
    let c = c["data"]["createTask"]["taskId"].as_i64().unwrap();
    let cancelled = gql(
        &s,
        Some(&admin),
        "mutation($c: Int!) { cancelTask(taskId: $c) { status } }",
        json!({"c": c}),
    )
    .await;
    assert_eq!(cancelled["data"]["cancelTask"]["status"], "cancelled");
    let again = gql(
        &s,
        Some(&admin),
        "mutation($c: Int!) { cancelTask(taskId: $c) { status } }",
        json!({"c": c}),
    )
    .await;
    assert_eq!(
        again["errors"][0]["extensions"]["code"], "CONFLICT",
        "{again}"
    );
    // updateStep (retryLimit only) and cancelStep, which needs its own permission
    let d = gql(
        &s,
        Some(&admin),
        r#"mutation { createTask(name: "pipeline", namespace: "shop") { taskId } }"#,
        json!({}),
    )
    .await;
    let d = d["data"]["createTask"]["taskId"].as_i64().unwrap();
    let up = gql(&s, Some(&admin), r#"mutation($d: Int!) { updateStep(taskId: $d, stepId: "flaky", retryLimit: 4) { name retryLimit } }"#, json!({"d": d})).await;
    assert_eq!(
        up["data"]["updateStep"],
        json!({"name": "flaky", "retryLimit": 4}),
        "{up}"
    );
    let bad = gql(&s, Some(&admin), r#"mutation($d: Int!) { updateStep(taskId: $d, stepId: "flaky", inputs: {a: 1}) { name } }"#, json!({"d": d})).await;
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("inputs cannot change"),
        "{bad}"
    );
    let denied = gql(
        &s,
        Some(&admin),
        r#"mutation($d: Int!) { cancelStep(taskId: $d, stepId: "report") { status } }"#,
        json!({"d": d}),
    )
    .await;
    assert_eq!(
        denied["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{denied}"
    );
    let canceller = jwt(secret, &["tasker.workflow_step:cancel"], 600);
    let ok = gql(
        &s,
        Some(&canceller),
        r#"mutation($d: Int!) { cancelStep(taskId: $d, stepId: "report") { status } }"#,
        json!({"d": d}),
    )
    .await;
    assert_eq!(ok["data"]["cancelStep"]["status"], "cancelled", "{ok}");

    // Per field: a reader may list but not create; a token is needed at all.
    let reader = jwt(secret, &["tasker.task:index"], 600);
    let r = gql(
        &s,
        Some(&reader),
        r#"{ tasks(limit: 2) { taskId } }"#,
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["tasks"].as_array().unwrap().len(), 2, "{r}");
    let r = gql(
        &s,
        Some(&reader),
        r#"mutation { createTask(name: "pipeline", namespace: "shop") { taskId } }"#,
        json!({}),
    )
    .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "FORBIDDEN", "{r}");
    assert!(r["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("tasker.task:create"));
    let r = gql(
        &s,
        Some(&reader),
        "{ task(taskId: 1) { taskId } }",
        json!({}),
    )
    .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "FORBIDDEN");
    let (code, _) = s
        .call(
            Method::POST,
            "/graphql",
            Some(json!({"query": "{ tasks { taskId } }"})),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let bad = gql(
        &s,
        Some(&admin),
        "{ tasks(limit: 500) { taskId } }",
        json!({}),
    )
    .await;
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("limit must be 0 to 100"),
        "{bad}"
    );
    let bad = gql(&s, Some(&admin), "{ nope }", json!({})).await;
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{bad}"
    );
    let (code, _) = s
        .call(
            Method::POST,
            "/graphql",
            Some(json!({"querry": "{}"})),
            Some(&admin),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

// ---- traces ----

/// A local OTLP/HTTP endpoint: every `POST /v1/traces` body, decoded.
async fn otlp_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        sink.lock().unwrap().extend(ss.spans);
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

#[tokio::test]
async fn otlp_traces_link_each_step_to_its_task_across_processes() {
    let (endpoint, spans) = otlp_receiver().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let db = Db::new();
    db.register(&template(&db));
    std::fs::write(db.path("ok"), "").unwrap();
    let s = Server::start_env(&db, &[], &env);
    let (code, t) = s
        .post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{t}");
    let id = t["task"]["task_id"].as_i64().unwrap();
    // The steps run in another process, which knows nothing of the server's spans. It is
    // waited for off this (single-threaded) runtime, which must keep answering its exports.
    let mut worker = db.command();
    worker.envs(env).args(["worker", "--until-idle"]);
    let out = tokio::task::spawn_blocking(move || worker.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, t) = s.get(&format!("/tasks/{id}")).await;
    assert_eq!(t["task"]["status"], "complete");
    // SIGTERM: the server drains and exports what is left.
    assert!(Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let attr = |sp: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        sp.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .map(|v| format!("{:?}", v.value))
    };
    loop {
        let got = spans.lock().unwrap().clone();
        let task = got.iter().find(|sp| {
            sp.name == "tasker.task"
                && attr(sp, "tasker.task_id")
                    == Some(format!(
                        "{:?}",
                        Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(id)
                        )
                    ))
        });
        let steps: Vec<_> = got.iter().filter(|sp| sp.name == "tasker.step").collect();
        let request = got.iter().find(|sp| sp.name == "POST /tasks");
        let cycles = got.iter().filter(|sp| sp.name == "tasker.report").count();
        if let (Some(task), 3, Some(request)) = (task, steps.len(), request) {
            for st in &steps {
                assert_eq!(st.trace_id, task.trace_id, "a step is in its task's trace");
                assert_eq!(
                    st.parent_span_id, task.span_id,
                    "a step's span is a child of its task's"
                );
            }
            assert_eq!(
                task.links.first().map(|l| l.span_id.clone()),
                Some(request.span_id.clone()),
                "the task's span links to the request that created it"
            );
            assert!(cycles > 0, "worker cycles are traced");
            assert!(got.iter().any(|sp| sp.name == "tasker.claim"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans received: {:?}",
            got.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_worker_serves_its_cycle_latency_step_durations_and_outcomes_as_prometheus_text() {
    let db = Db::new();
    db.register(&template(&db));
    let s = Server::start(&db, &[]);
    for _ in 0..2 {
        s.post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
            .await;
    }
    let mut worker = db
        .command()
        .args(["worker", "--metrics-bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = announced(&mut worker, "tasker: metrics on ");
    // flaky has one attempt and no `ok` file: each task runs fetch (ok), flaky (exhausted).
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if text.contains("outcome=\"exhausted\"") && text.contains("tasker_tasks_finished_total") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the outcomes:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = worker.kill();
    let _ = worker.wait();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample = |name: &str, labels: &[(&str, &str)]| {
        parsed
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{text}"))
            .value
            .clone()
    };
    let count = |v: prometheus_parse::Value| match v {
        prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n) => n,
        prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
        other => panic!("unexpected {other:?}"),
    };
    let outcome = |step: &str, o: &str| {
        count(sample(
            "tasker_step_outcomes_total",
            &[
                ("namespace", "shop"),
                ("name", "pipeline"),
                ("step", step),
                ("outcome", o),
            ],
        ))
    };
    assert_eq!(outcome("fetch", "complete"), 2.0);
    assert_eq!(outcome("flaky", "exhausted"), 2.0);
    assert_eq!(count(sample("tasker_steps_claimed_total", &[])), 4.0);
    assert_eq!(
        count(sample(
            "tasker_tasks_finished_total",
            &[("name", "pipeline"), ("state", "error")]
        )),
        2.0
    );
    assert_eq!(
        count(sample(
            "tasker_step_duration_seconds",
            &[("handler", "command"), ("outcome", "complete")]
        )),
        2.0,
        "histogram buckets: the widest holds every run"
    );
    assert!(
        count(sample(
            "tasker_worker_cycle_seconds",
            &[("part", "report_and_claim")]
        )) >= 1.0
    );
}

// ---- OpenAPI ----

#[tokio::test]
async fn openapi_document_lists_every_route_and_real_bodies_match_its_schemas() {
    let db = Db::new();
    db.register(&template(&db));
    let s = Server::start(&db, &[]);
    let (code, doc) = s.get("/openapi.json").await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    // The document and the access table (which the router is checked against) agree.
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut routed: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    routed.sort();
    assert_eq!(documented, routed, "documented routes vs the access table");
    assert_eq!(
        doc["paths"]["/tasks"]["get"]["x-tasker-permission"],
        "tasker.task:index"
    );

    // Real answers validate against the generated schemas.
    let validate = |schema: &str, body: &Value| {
        let root = json!({
            "$ref": format!("#/components/schemas/{schema}"),
            "components": doc["components"].clone(),
        });
        let v = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{schema}: {e}"));
        let errors: Vec<String> = v
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{schema}: {errors:?}\n{body}");
    };
    let (code, created) = s
        .post(
            "/tasks",
            json!({"name": "pipeline", "namespace": "shop", "context": {"n": 1}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    validate("TaskEnvelope", &created);
    let id = created["task"]["task_id"].as_i64().unwrap();
    db.work();
    let (_, t) = s.get(&format!("/tasks/{id}")).await;
    validate("TaskEnvelope", &t);
    let (_, list) = s.get("/tasks?limit=5").await;
    validate("TaskList", &list);
    let (_, st) = s.get(&format!("/tasks/{id}/workflow_steps/flaky")).await;
    validate("StepEnvelope", &st);
    let (_, tr) = s.get(&format!("/tasks/{id}/transitions")).await;
    validate("TransitionList", &tr);
    let (_, h) = s.get("/handlers/shop/pipeline").await;
    validate("HandlerEnvelope", &h);
    let (_, h) = s.get("/health/status").await;
    validate("Status", &h);
    let (_, e) = s.get("/tasks/999999").await;
    validate("ErrorBody", &e);
    // A request body: the template's own type.
    assert!(
        doc["components"]["schemas"]["TaskRequest"]["properties"]["idempotency_key"].is_object()
    );
}

// ---- analytics and time filters ----

#[tokio::test]
async fn analytics_and_creation_time_filters_over_http() {
    let db = Db::new();
    db.register(&template(&db));
    let s = Server::start(&db, &[]);
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    for _ in 0..3 {
        s.post("/tasks", json!({"name": "pipeline", "namespace": "shop"}))
            .await;
    }
    db.work(); // flaky fails for good in each
    let (code, p) = s.get("/analytics/performance").await;
    assert_eq!(code, StatusCode::OK, "{p}");
    let hour = &p["performance_trends"]["last_hour"];
    assert_eq!(
        (hour["tasks_created"].clone(), hour["tasks_error"].clone()),
        (json!(3), json!(3))
    );
    assert_eq!(hour["error_rate"], 1.0);
    assert_eq!(p["system_overview"]["unique_task_types_count"], 1);
    let (code, b) = s
        .get("/analytics/bottlenecks?period=1&namespace=shop")
        .await;
    assert_eq!(code, StatusCode::OK, "{b}");
    assert_eq!(b["error_patterns"][0]["step"], "flaky");
    assert_eq!(b["error_patterns"][0]["failed_attempts"], 3);
    assert_eq!(
        b["slowest_steps"][0]["count"], 3,
        "fetch ran three times: {b}"
    );
    let (_, none) = s.get("/analytics/bottlenecks?name=other").await;
    assert_eq!(none["analysis"]["tasks_created"], 0);
    let (code, e) = s.get("/analytics/bottlenecks?period=0.5").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{e}");

    let since = before.to_rfc3339();
    let (_, l) = s
        .get(&format!("/tasks?since={}", since.replace('+', "%2B")))
        .await;
    assert_eq!(l["pagination"]["total"], 3, "{l}");
    let (_, l) = s
        .get(&format!("/tasks?until={}", before.timestamp_millis()))
        .await;
    assert_eq!(l["pagination"]["total"], 0, "{l}");
    let later = chrono::Utc::now() + chrono::Duration::seconds(60);
    let (_, l) = s
        .get(&format!(
            "/tasks?since={}&status=error",
            later.timestamp_millis()
        ))
        .await;
    assert_eq!(l["pagination"]["total"], 0);
    let (code, e) = s.get("/tasks?since=yesterday").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("since must be an RFC 3339 time"),
        "{e}"
    );
}

// ---- the event catalogue ----

#[tokio::test]
async fn the_event_catalogue_lists_the_engines_the_originals_defined_and_declared_events() {
    let db = Db::new();
    std::fs::write(
        db.path("orders.yml"),
        "events:\n  custom:\n    order_shipped:\n      constant: order.shipped\n      description: Fired when an order ships\n      payload_schema:\n        order_id: {type: String, required: true}\n      fired_by: [ShippingService]\n",
    )
    .unwrap();
    let out = db.tasker(&[
        "events",
        "register",
        db.path("orders.yml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.register(
        "name: notify\nnamespace_name: shop\ncustom_events: [{name: receipt_sent, description: a receipt left}]\nstep_templates:\n  - {name: a, handler_class: command, handler_config: {command: 'true'}}\n",
    );
    let s = Server::start(&db, &[]);
    let (code, cat) = s.get("/events").await;
    assert_eq!(code, StatusCode::OK, "{cat}");
    let find = |name: &str| {
        cat["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    let failed = find("step.failed");
    assert_eq!(
        (failed["category"].as_str(), failed["emitted"].as_bool()),
        (Some("step"), Some(true))
    );
    assert!(failed["payload_keys"]
        .as_array()
        .unwrap()
        .contains(&json!("metadata.error")));
    let wf = find("workflow.step_failed");
    assert!(wf["payload_keys"]
        .as_array()
        .unwrap()
        .contains(&json!("metadata.error_class")));
    let not = find("workflow.task_reenqueue_requested");
    assert_eq!(not["emitted"], false);
    assert!(not["note"].as_str().unwrap().starts_with("not emitted: "));
    let shipped = find("order.shipped");
    assert_eq!(shipped["fired_by"], json!(["ShippingService"]));
    assert!(shipped["payload_keys"]
        .as_array()
        .unwrap()
        .contains(&json!("metadata.payload.order_id")));
    assert_eq!(find("receipt_sent")["source"], "shop.notify@0.1.0");

    let (_, doc) = s.get("/openapi.json").await;
    let root = json!({"$ref": "#/components/schemas/EventCatalog", "components": doc["components"].clone()});
    let v = jsonschema::validator_for(&root).unwrap();
    assert!(v.is_valid(&cat), "{cat}");

    let body = gql(
        &s,
        None,
        "{ eventCatalog { name category emitted note payloadKeys firedBy source } }",
        json!({}),
    )
    .await;
    let list = body["data"]["eventCatalog"].as_array().unwrap();
    assert_eq!(
        list.len(),
        cat["events"].as_array().unwrap().len(),
        "{body}"
    );
    assert!(list
        .iter()
        .any(|e| e["name"] == "order.shipped" && e["firedBy"] == json!(["ShippingService"])));
}

#[tokio::test]
async fn a_child_task_and_its_parent_link_to_each_other_over_rest_and_graphql() {
    let db = Db::new();
    db.register(
        r#"
name: payment
namespace_name: billing
step_templates:
  - {name: capture, handler_class: command, handler_config: {command: ["cat"]}}
"#,
    );
    db.register(
        r#"
name: order
step_templates:
  - name: charge
    handler_class: command
    handler_config: {command: "echo '{\"$child_task\": {\"name\": \"payment\", \"namespace\": \"billing\"}}'"}
"#,
    );
    let s = Server::start(&db, &[]);
    let (code, body) = s
        .post("/tasks", json!({"name": "order", "context": {}}))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let id = body["task"]["task_id"].as_i64().unwrap();
    db.work();
    let (_, parent) = s.get(&format!("/tasks/{id}")).await;
    let charge = step(&parent["task"], "charge");
    assert_eq!(charge["status"], "complete", "{parent}");
    let kid = charge["child_task_id"].as_i64().expect("child_task_id");
    assert_eq!(parent["task"]["parent_task_id"], Value::Null);
    let (_, child) = s.get(&format!("/tasks/{kid}")).await;
    assert_eq!(child["task"]["parent_task_id"], id);
    assert_eq!(child["task"]["parent_step"], "charge");
    let (_, list) = s.get("/tasks?namespace=billing").await;
    assert_eq!(list["tasks"][0]["parent_task_id"], id, "{list}");
    let g = gql(
        &s,
        None,
        "query($id: Int!) { task(taskId: $id) { parentTaskId parentStep workflowSteps { name childTaskId } } }",
        json!({"id": kid}),
    )
    .await;
    assert_eq!(g["data"]["task"]["parentTaskId"], id, "{g}");
    assert_eq!(g["data"]["task"]["parentStep"], "charge");
    let g = gql(
        &s,
        None,
        "query($id: Int!) { task(taskId: $id) { workflowSteps { name status childTaskId } } }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(
        g["data"]["task"]["workflowSteps"][0]["childTaskId"], kid,
        "{g}"
    );
}

#[tokio::test]
async fn waiting_steps_take_signals_and_completions_over_rest_and_graphql_with_their_permissions() {
    let db = Db::new();
    db.register(
        r#"
name: release
steps:
  - {name: approve, handler: {callable: wait, initialization: {signal: approved}}}
  - {name: deploy, dependencies: [approve], handler: {callable: wait}}
  - {name: verify, dependencies: [deploy], handler: {callable: wait}}
"#,
    );
    let secret = "a-long-hs256-secret-for-signals";
    let s = Server::start(&db, &["--jwt-secret", secret]);
    let admin = jwt(secret, &["tasker.task:create", "tasker.task:show"], 600);
    let (code, body) = s
        .call(
            Method::POST,
            "/tasks",
            Some(json!({"name": "release", "context": {}})),
            Some(&admin),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let id = body["task"]["task_id"].as_i64().unwrap();
    db.work();
    let signal = format!("/tasks/{id}/signals/approved");
    let (code, _) = s
        .call(
            Method::POST,
            &signal,
            Some(json!({"payload": {"by": "kim"}})),
            Some(&admin),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "signalling needs tasker.task:signal"
    );
    let ops = jwt(
        secret,
        &[
            "tasker.task:signal",
            "tasker.workflow_step:complete",
            "tasker.workflow_step:fail",
        ],
        600,
    );
    let (code, body) = s
        .call(
            Method::POST,
            &signal,
            Some(json!({"payload": {"by": "kim"}, "colour": 1})),
            Some(&ops),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("colour"), "{body}");
    let (code, body) = s
        .call(
            Method::POST,
            &signal,
            Some(json!({"payload": {"by": "kim"}})),
            Some(&ops),
        )
        .await;
    assert_eq!((code, &body), (StatusCode::OK, &json!({"completed": 1})));
    // `deploy` is pending until a worker runs it: completing it is a conflict naming that.
    let complete = format!("/tasks/{id}/workflow_steps/deploy/complete");
    let (code, body) = s
        .call(
            Method::POST,
            &complete,
            Some(json!({"results": {"v": 3}})),
            Some(&ops),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("pending"), "{body}");
    db.work();
    let (code, body) = s
        .call(
            Method::POST,
            &complete,
            Some(json!({"results": {"v": 3}})),
            Some(&ops),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["step"]["status"], "complete");
    db.work();
    let fail = format!("/tasks/{id}/workflow_steps/verify/fail");
    let (code, _) = s
        .call(Method::POST, &fail, Some(json!({})), Some(&ops))
        .await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a message is required"
    );
    let g = gql(
        &s,
        Some(&ops),
        "mutation($t: Int!) { failStep(taskId: $t, stepId: \"verify\", message: \"smoke test red\", permanent: true) { status error } }",
        json!({"t": id}),
    )
    .await;
    assert_eq!(g["data"]["failStep"]["status"], "error", "{g}");
    let g = gql(
        &s,
        Some(&ops),
        "mutation($t: Int!) { signal(taskId: $t, name: \"late\") }",
        json!({"t": id}),
    )
    .await;
    assert_eq!(g["data"]["signal"], 0, "kept: {g}");
    let (code, body) = s
        .call(
            Method::POST,
            "/correlations/none-such/complete",
            None,
            Some(&ops),
        )
        .await;
    assert_eq!((code, &body), (StatusCode::OK, &json!({"completed": 0})));
    let (_, t) = s
        .call(Method::GET, &format!("/tasks/{id}"), None, Some(&admin))
        .await;
    assert_eq!(t["task"]["status"], "error", "{t}");
    assert_eq!(step(&t["task"], "approve")["results"], json!({"by": "kim"}));
    assert_eq!(step(&t["task"], "deploy")["results"], json!({"v": 3}));
}

#[tokio::test]
async fn schedules_over_rest_and_graphql_with_their_permissions_and_serve_fires_them() {
    let db = Db::new();
    db.register(
        r#"
name: heartbeat
steps:
  - {name: beat, handler: {callable: wait}}
"#,
    );
    let secret = "a-long-hs256-secret-for-schedules";
    let s = Server::start(&db, &["--jwt-secret", secret]);
    let reader = jwt(
        secret,
        &["tasker.schedule:index", "tasker.schedule:show"],
        600,
    );
    let admin = jwt(
        secret,
        &[
            "tasker.schedule:index",
            "tasker.schedule:create",
            "tasker.schedule:update",
            "tasker.schedule:destroy",
            "tasker.task:index",
            "tasker.task:show",
        ],
        600,
    );
    let spec = json!({"name": "pulse", "template": "heartbeat", "cron": "* * * * * *", "overlap": "allow"});
    let (code, _) = s
        .call(
            Method::POST,
            "/schedules",
            Some(spec.clone()),
            Some(&reader),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "creating needs tasker.schedule:create"
    );
    let (code, body) = s
        .call(
            Method::POST,
            "/schedules",
            Some(json!({"name": "x", "template": "heartbeat", "cron": "* * * * * *", "overlap": "sometimes"})),
            Some(&admin),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("sometimes"), "{body}");
    let (code, body) = s
        .call(
            Method::POST,
            "/schedules",
            Some(json!({"name": "x", "template": "heartbeat", "cron": "* * * * * * * *"})),
            Some(&admin),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("has 8 fields"), "{body}");
    let (code, body) = s
        .call(Method::POST, "/schedules", Some(spec.clone()), Some(&admin))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["schedule"]["name"], "pulse");
    let (code, _) = s
        .call(Method::POST, "/schedules", Some(spec), Some(&admin))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    // `tasker serve` fires it: a task a second.
    let mut fired = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, b) = s
            .call(Method::GET, "/schedules/pulse", None, Some(&reader))
            .await;
        fired = b["schedule"]["fired"].as_i64().unwrap();
        if fired >= 2 {
            break;
        }
    }
    assert!(fired >= 2, "serve fired {fired} ticks in 5 s");
    let (_, b) = s
        .call(Method::GET, "/schedules/pulse", None, Some(&reader))
        .await;
    let last = b["schedule"]["last_task_id"].as_i64().unwrap();
    let (_, t) = s
        .call(Method::GET, &format!("/tasks/{last}"), None, Some(&admin))
        .await;
    assert_eq!(t["task"]["source_system"], "schedule", "{t}");
    assert_eq!(t["task"]["initiator"], "pulse", "{t}");
    let g = gql(
        &s,
        Some(&admin),
        "mutation { pauseSchedule(name: \"pulse\") { paused nextRunAt } }",
        json!({}),
    )
    .await;
    assert_eq!(
        g["data"]["pauseSchedule"],
        json!({"paused": true, "nextRunAt": null}),
        "{g}"
    );
    let g = gql(
        &s,
        Some(&reader),
        "{ schedules { name cron paused fired } }",
        json!({}),
    )
    .await;
    assert_eq!(g["data"]["schedules"][0]["paused"], true, "{g}");
    let g = gql(
        &s,
        Some(&reader),
        "mutation { deleteSchedule(name: \"pulse\") }",
        json!({}),
    )
    .await;
    assert!(
        g["errors"].to_string().contains("tasker.schedule:destroy"),
        "{g}"
    );
    let (code, _) = s
        .call(Method::POST, "/schedules/pulse/resume", None, Some(&admin))
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = s
        .call(Method::DELETE, "/schedules/pulse", None, Some(&admin))
        .await;
    assert_eq!(
        (code, &body),
        (StatusCode::OK, &json!({"deleted": "pulse"}))
    );
    let (code, _) = s
        .call(Method::GET, "/schedules/pulse", None, Some(&reader))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}
