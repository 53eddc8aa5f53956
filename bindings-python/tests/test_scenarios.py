"""The core's conformance scenarios through Python handlers."""

import asyncio
import threading
import time

import pytest

import tasker

DIAMOND = """
name: diamond
step_templates:
  - {name: a}
  - {name: b, depends_on_step: a}
  - {name: c, depends_on_step: a}
  - {name: d, depends_on_steps: [b, c]}
"""

FLAKY = """
name: flaky
step_templates:
  - name: fetch
    default_retry_limit: 3
    backoff: {base_seconds: 0.05, multiplier: 1, jitter: 0}
  - {name: store, depends_on_step: fetch}
"""


def step(task, name):
    return next(s for s in task["steps"] if s["name"] == name)


def register_diamond(engine):
    engine.register_template(DIAMOND)

    @engine.handler("a")
    def a(s):
        return {"v": s.context["seed"] + 1}

    @engine.handler("b")
    def b(s):
        return {"v": s.results["a"]["v"] * 2}

    @engine.handler("c")
    def c(s):
        return {"v": s.results["a"]["v"] * 3}

    @engine.handler("d")
    def d(s):
        return {"v": s.results["b"]["v"] + s.results["c"]["v"], "saw": sorted(s.results)}


def test_diamond_with_sync_handlers_computes_checkable_values(engine):
    register_diamond(engine)
    task_id = engine.create_task("diamond", {"seed": 4})
    task = engine.run_until_complete(task_id, timeout=30)
    assert task["status"] == "complete"
    assert step(task, "d")["results"] == {"v": 25, "saw": ["b", "c"]}
    assert all(s["attempts"] == 1 for s in task["steps"])


def test_linear_and_tree_shapes(engine):
    engine.register_template("""
name: chain
step_templates:
  - {name: s1, handler_class: inc}
  - {name: s2, handler_class: inc, depends_on_step: s1}
  - {name: s3, handler_class: inc, depends_on_step: s2}
  - {name: leaf1, handler_class: inc, depends_on_step: s3}
  - {name: leaf2, handler_class: inc, depends_on_step: s3}
""")

    @engine.handler("inc")
    def inc(s):
        return {"x": sum(r["x"] for r in s.results.values()) + 1 if s.results else 1}

    task = engine.run_until_complete(engine.create_task("chain"), timeout=30)
    assert [step(task, n)["results"]["x"] for n in ("s1", "s2", "s3", "leaf1", "leaf2")] == [1, 2, 3, 4, 4]


def test_async_and_sync_handlers_mix_in_one_process(engine):
    engine.register_template(DIAMOND)
    threads = set()

    @engine.handler("a")
    async def a(s):
        await asyncio.sleep(0.01)
        threads.add(threading.current_thread().name)
        return {"v": 1}

    @engine.handler("b")
    def b(s):
        threads.add(threading.current_thread().name)
        return {"v": s.results["a"]["v"] + 1}

    @engine.handler("c")
    async def c(s):
        return {"v": s.results["a"]["v"] + 2}

    @engine.handler("d")
    def d(s):
        return {"v": s.results["b"]["v"] + s.results["c"]["v"]}

    ids = [engine.create_task("diamond", {"i": i}) for i in range(5)]
    engine.run_worker(concurrency=4, until_idle=True)
    for i in ids:
        t = engine.get_task(i)
        assert t["status"] == "complete"
        assert step(t, "d")["results"] == {"v": 5}
    assert "tasker-asyncio" in threads
    assert any(n.startswith("tasker-step") for n in threads)


def test_flaky_step_retries_then_succeeds(engine):
    engine.register_template(FLAKY)
    calls = []

    @engine.handler("fetch")
    def fetch(s):
        calls.append(s.attempt)
        if s.attempt < 3:
            raise tasker.RetryableError(f"flake {s.attempt}")
        return {"n": s.attempt}

    @engine.handler("store")
    def store(s):
        return {"saw": s.results["fetch"]["n"]}

    task = engine.run_until_complete(engine.create_task("flaky"), timeout=30)
    assert task["status"] == "complete"
    assert calls == [1, 2, 3]
    assert step(task, "fetch")["attempts"] == 3
    assert step(task, "store")["results"] == {"saw": 3}


def test_retryable_error_retry_after_is_honoured(engine):
    engine.register_template(FLAKY)
    starts = []

    @engine.handler("fetch")
    def fetch(s):
        starts.append(time.monotonic())
        if s.attempt == 1:
            raise tasker.RetryableError("rate limited", retry_after=0.6)
        return 1

    engine.handler("store")(lambda s: None)
    task = engine.run_until_complete(engine.create_task("flaky"), timeout=30)
    assert task["status"] == "complete"
    assert starts[1] - starts[0] >= 0.55, starts


def test_permanent_error_is_never_retried_and_blocks_the_task(engine):
    engine.register_template(FLAKY)

    @engine.handler("fetch")
    def fetch(s):
        raise tasker.PermanentError("card declined")

    engine.handler("store")(lambda s: pytest.fail("downstream must not run"))
    task = engine.run_until_complete(engine.create_task("flaky"), timeout=30)
    assert task["status"] == "error"
    f = step(task, "fetch")
    assert (f["attempts"], f["error"]["kind"], f["error"]["message"]) == (1, "permanent", "card declined")
    assert step(task, "store")["status"] == "pending"


def test_retry_limit_exhausted_fails_the_task(engine):
    engine.register_template(FLAKY)

    @engine.handler("fetch")
    def fetch(s):
        raise tasker.RetryableError("still down")

    engine.handler("store")(lambda s: None)
    task = engine.run_until_complete(engine.create_task("flaky"), timeout=30)
    assert task["status"] == "error"
    assert step(task, "fetch")["attempts"] == 3


def test_an_exception_in_the_thread_pool_is_a_retryable_failure_with_its_traceback(engine):
    engine.register_template("name: boom\nstep_templates:\n  - {name: boom, default_retry_limit: 2, backoff: {base_seconds: 0}}\n")

    @engine.handler("boom")
    def boom(s):
        if s.attempt == 1:
            {}["missing"]
        return "ok"

    task_id = engine.create_task("boom")
    seen = []
    engine.on("step.failed")(lambda ev: seen.append(ev))
    task = engine.run_until_complete(task_id, timeout=30)
    assert task["status"] == "complete"
    assert step(task, "boom")["attempts"] == 2
    assert seen and seen[0]["metadata"]["error"] == "KeyError: 'missing'"
    assert seen[0]["metadata"]["kind"] == "retryable"


def test_failed_step_shows_exception_and_traceback(engine):
    engine.register_template("name: boom\nstep_templates:\n  - {name: boom, default_retryable: false}\n")

    @engine.handler("boom")
    def boom(s):
        raise ValueError("bad input 42")

    task = engine.run_until_complete(engine.create_task("boom"), timeout=30)
    err = step(task, "boom")["error"]
    assert err["message"] == "ValueError: bad input 42"
    assert err["detail"]["exception"] == "ValueError"
    assert "raise ValueError" in err["detail"]["traceback"]


def test_a_non_json_return_fails_the_step_with_a_clear_message(engine):
    engine.register_template("name: bad\nstep_templates:\n  - {name: bad}\n")
    engine.handler("bad")(lambda s: {"when": object()})
    task = engine.run_until_complete(engine.create_task("bad"), timeout=30)
    err = step(task, "bad")["error"]
    assert err["kind"] == "permanent"
    assert "not JSON" in err["message"]


def test_cancel_retry_and_resolve(engine):
    engine.register_template(FLAKY)

    @engine.handler("fetch")
    def fetch(s):
        raise tasker.PermanentError("down")

    engine.handler("store")(lambda s: {"stored": s.results["fetch"]})
    t1 = engine.create_task("flaky")
    engine.run_until_complete(t1, timeout=30)
    engine.resolve_step_manually(t1, "fetch", {"by": "hand"})
    task = engine.run_until_complete(t1, timeout=30)
    assert task["status"] == "complete"
    assert step(task, "store")["results"] == {"stored": {"by": "hand"}}

    t2 = engine.create_task("flaky")
    engine.run_until_complete(t2, timeout=30)
    engine.handler("fetch")(lambda s: {"fixed": True})
    engine.retry_step(t2, "fetch")
    assert engine.run_until_complete(t2, timeout=30)["status"] == "complete"

    t3 = engine.create_task("flaky")
    engine.cancel_task(t3)
    assert engine.get_task(t3)["status"] == "cancelled"
    with pytest.raises(tasker.ConflictError, match="already cancelled"):
        engine.cancel_task(t3)
    with pytest.raises(tasker.ConflictError, match="it is cancelled"):
        engine.retry_step(t3, "fetch")
    with pytest.raises(tasker.NotFoundError, match='no step named "nope"'):
        engine.retry_step(engine.create_task("flaky"), "nope")
    with pytest.raises(tasker.NotFoundError):
        engine.get_task(999999)


def test_idempotency_and_bypass(engine):
    engine.register_template("""
name: skip
step_templates:
  - {name: audit, skippable: true}
  - {name: charge}
""")
    engine.handler("charge")(lambda s: "charged")
    engine.handler("audit")(lambda s: pytest.fail("bypassed"))
    a = engine.create_task("skip", {"n": 1}, idempotency_key="k", bypass_steps=["audit"])
    b = engine.create_task("skip", {"n": 2}, idempotency_key="k")
    assert a == b
    task = engine.run_until_complete(a, timeout=30)
    assert task["status"] == "complete"
    assert step(task, "audit")["status"] == "resolved_manually"
    with pytest.raises(tasker.ValidationError, match="not skippable"):
        engine.create_task("skip", bypass_steps=["charge"])
    assert len(engine.list_tasks()) == 1
    assert engine.list_tasks(status="complete")[0]["id"] == a


def test_schema_violations_are_listed(engine):
    engine.register_template("""
name: order
schema:
  type: object
  required: [order_id]
  properties:
    order_id: {type: integer}
    email: {type: string}
step_templates:
  - {name: a}
""")
    with pytest.raises(tasker.ValidationError) as e:
        engine.create_task("order", {"order_id": "x", "email": 5})
    msg = str(e.value)
    assert "/order_id" in msg and "/email" in msg
    with pytest.raises(tasker.ValidationError, match="not JSON-able"):
        engine.create_task("order", {"order_id": object()})


@pytest.mark.parametrize(
    "yaml, message",
    [
        ("name: t\nstep_templates:\n  - {name: a\n", "YAML syntax error at line"),
        ("name: t\nstep_templates: []\n", "has no steps"),
        ("name: t\nstep_templates:\n  - {name: a}\n  - {name: a}\n", 'step name "a" appears more than once'),
        ("name: t\nstep_templates:\n  - {name: a, depends_on_step: z}\n", 'depends on unknown step "z"'),
        ("name: t\nstep_templates:\n  - {name: a, depends_on_step: b}\n  - {name: b, depends_on_step: a}\n", "dependency cycle: a -> b -> a"),
        ("name: t\nstep_templates:\n  - {name: a, default_retry_limit: 0}\n", "default_retry_limit must be at least 1"),
        ("name: t\nversion: nope\nstep_templates:\n  - {name: a}\n", "is not a semantic version"),
    ],
)
def test_bad_templates_raise_template_error(engine, yaml, message):
    with pytest.raises(tasker.TemplateError, match=message):
        engine.register_template(yaml)


def test_templates_from_a_dict_and_a_path(engine, tmp_path):
    key = engine.register_template({"name": "d", "version": "1.0.0", "steps": [{"name": "x", "handler": {"callable": "x"}}]})
    assert key == "default.d@1.0.0"
    p = tmp_path / "t.yaml"
    p.write_text("name: f\nstep_templates:\n  - {name: y}\n")
    assert engine.register_template(p) == "default.f@0.1.0"
    assert engine.register_template(str(p)) == "default.f@0.1.0"
    with pytest.raises(tasker.TemplateError, match="No such file"):
        engine.register_template(tmp_path / "missing.yaml")
    # A changed body under the same version is a new revision that new tasks use.
    assert engine.register_template({"name": "d", "version": "1.0.0", "steps": [{"name": "other"}]}) == "default.d@1.0.0"
    assert [s["name"] for s in engine.get_task(engine.create_task("d"))["steps"]] == ["other"]


def test_strict_templates_refuse_a_changed_body(db):
    engine = tasker.Engine(**db, strict_templates=True)
    engine.register_template({"name": "d", "version": "1.0.0", "steps": [{"name": "x"}]})
    with pytest.raises(tasker.TemplateError, match="different body"):
        engine.register_template({"name": "d", "version": "1.0.0", "steps": [{"name": "other"}]})


def test_builtin_command_steps_run_beside_python_handlers(engine):
    engine.register_template("""
name: mixed
step_templates:
  - name: shell
    handler_class: command
    handler_config: {command: ["sh", "-c", "echo '{\\"from\\": \\"sh\\"}'"]}
  - {name: py, depends_on_step: shell}
""")
    engine.handler("py")(lambda s: {"got": s.results["shell"]})
    task = engine.run_until_complete(engine.create_task("mixed"), timeout=30)
    assert task["status"] == "complete"
    assert step(task, "py")["results"] == {"got": {"from": "sh"}}


def test_events_reach_subscribers_once_per_transition(engine):
    register_diamond(engine)
    seen = []
    engine.on("*")(lambda ev: seen.append(ev["name"]))
    with pytest.raises(ValueError, match="unknown event"):
        engine.on("step.exploded")
    engine.run_until_complete(engine.create_task("diamond", {"seed": 0}), timeout=30)
    assert seen.count("step.completed") == 4
    assert seen.count("task.completed") == 1


def test_run_until_complete_times_out(engine):
    engine.register_template("name: stuck\nstep_templates:\n  - {name: nobody_handles_this}\n")
    with pytest.raises(tasker.TimeoutError):
        engine.run_until_complete(engine.create_task("stuck"), timeout=0.3)


def test_bulk_create_wait_from_another_thread_and_stop(engine):
    engine.register_template("name: job\nstep_templates:\n  - {name: noop}\n")
    engine.handler("noop")(lambda s: {"i": s.context["i"]})
    ids = engine.create_tasks([{"name": "job", "context": {"i": i}} for i in range(50)])
    assert len(set(ids)) == 50
    with pytest.raises(tasker.ValidationError):
        engine.create_tasks([{"name": "job", "contxt": {}}])
    worker = threading.Thread(target=engine.run_worker, kwargs={"concurrency": 4})
    worker.start()
    try:
        for i, tid in enumerate(ids):
            assert step(engine.wait_for_task(tid, timeout=30), "noop")["results"] == {"i": i}
        late = engine.create_task("job", {"i": 99})
        assert engine.wait_for_task(late, timeout=30)["status"] == "complete"
    finally:
        engine.stop()
        worker.join(timeout=30)
    assert not worker.is_alive(), "stop() ends run_worker"
    engine.register_template("name: idle\nstep_templates:\n  - {name: nobody}\n")
    with pytest.raises(tasker.TimeoutError):
        engine.wait_for_task(engine.create_task("idle"), timeout=0.3)


def test_a_queued_step_does_not_time_out_before_its_handler_starts(engine):
    # Six steps of 0.3 s each, one at a time, each allowed 0.5 s: counted from the claim, the
    # later ones would time out while they wait; counted from the handler's start, none does.
    engine.register_template({"name": "queue", "steps": [
        {"name": f"s{i}", "handler": {"callable": "nap"}, "timeout_seconds": 0.5} for i in range(6)
    ] + [{"name": "too_slow", "handler": {"callable": "long_nap"}, "timeout_seconds": 0.2,
          "retry": {"max_attempts": 1}}]})
    engine.handler("nap")(lambda s: time.sleep(0.3) or "rested")
    engine.handler("long_nap")(lambda s: time.sleep(1.0) or "late")
    task = engine.run_until_complete(engine.create_task("queue"), timeout=60, concurrency=1)
    for i in range(6):
        assert (step(task, f"s{i}")["status"], step(task, f"s{i}")["attempts"]) == ("complete", 1), task
    slow = step(task, "too_slow")
    assert slow["status"] == "error" and slow["error"]["kind"] == "timeout", slow
    assert "timed out after 0.200 s" in slow["error"]["message"]


def test_events_carry_every_transition_of_a_run_in_order(engine):
    engine.register_template("name: flaky_once\nsteps:\n  - {name: f, retry: {max_attempts: 2}}\n  - {name: g, dependencies: [f]}\n")
    calls = []

    @engine.handler("f")
    def f(step):
        calls.append(step.attempt)
        if step.attempt == 1:
            raise tasker.RetryableError("first try fails", retry_after=0)
        return 1

    engine.handler("g")(lambda s: 2)
    seen = []
    engine.on("*")(lambda ev: seen.append((ev["name"], ev.get("step_name"), ev.get("attempt"))))
    failed = []
    engine.on("step.failed")(lambda ev: failed.append(ev["metadata"]["error"]))
    tid = engine.create_task("flaky_once")
    engine.run_until_complete(tid, timeout=30)
    # "*" hears the original's events too (workflow.*, observability.*, step.before_handle),
    # each after what it follows; the transitions' own events are the task.* / step.* rest.
    everything = [n for n, _, _ in seen]
    assert everything.index("workflow.step_failed") == everything.index("step.failed") + 1
    assert everything.count("step.before_handle") == 3
    derived = ("workflow.", "observability.", "step.before_handle")
    seen = [e for e in seen if not e[0].startswith(derived)]
    names = [n for n, _, _ in seen]
    expected = [
        ("task.initialize_requested", None, None),
        ("step.initialize_requested", "f", 0),
        ("step.initialize_requested", "g", 0),
        ("step.execution_requested", "f", 1),
        ("task.start_requested", None, None),
        ("step.failed", "f", 1),
        ("step.retry_requested", "f", 2),
        ("step.execution_requested", "f", 2),
        ("step.completed", "f", 2),
        ("step.execution_requested", "g", 1),
        ("step.completed", "g", 1),
        ("task.completed", None, None),
    ]
    assert sorted(seen, key=str) == sorted(expected, key=str), seen
    # Order within a task: each step's own events come in transition order.
    for name in ("f", "g"):
        mine = [n for n, s, _ in seen if s == name]
        assert mine == [n for n, s, _ in expected if s == name], mine
    assert names.index("task.completed") == len(names) - 1
    assert failed == ["first try fails"]
    assert calls == [1, 2]


def test_custom_events_reach_subscribers_once_and_undeclared_ones_are_refused(engine):
    engine.register_template("""
name: notify
custom_events:
  - {name: order.shipped, description: the parcel left the warehouse}
step_templates:
  - {name: ship}
""")
    got = []
    engine.on("order.shipped")(got.append)
    with pytest.raises(ValueError, match="reserved"):
        engine.on("task.mine")

    @engine.handler("ship")
    def ship(step):
        step.publish_custom_event("order.shipped", {"carrier": "ups"})
        try:
            step.publish_custom_event("order.lost", {})
        except tasker.ValidationError as e:
            return {"refused": str(e)}
        return {"refused": None}

    task = engine.run_until_complete(engine.create_task("notify"), timeout=30)
    assert task["status"] == "complete", task
    assert "declares only order.shipped" in step(task, "ship")["results"]["refused"]
    assert len(got) == 1, got
    assert (got[0]["name"], got[0]["task_id"], got[0]["step_name"]) == ("order.shipped", task["id"], "ship")
    assert got[0]["metadata"] == {"event_type": "custom", "payload": {"carrier": "ups"}}


def test_schema_defaults_reach_the_handler_and_are_stored(engine):
    engine.register_template("""
name: report
schema:
  type: object
  required: [date_range]
  properties:
    date_range:
      type: object
      properties:
        start_date: {type: string, format: date}
        timezone: {type: string, default: UTC}
    force_refresh: {type: boolean, default: false}
    processing_mode: {type: string, default: standard}
step_templates:
  - {name: build}
""")
    engine.handler("build")(lambda s: dict(s.context))
    tid = engine.create_task("report", {"date_range": {"start_date": "2026-01-01"}})
    task = engine.run_until_complete(tid, timeout=30)
    want = {"date_range": {"start_date": "2026-01-01", "timezone": "UTC"}, "force_refresh": False,
            "processing_mode": "standard"}
    assert step(task, "build")["results"] == want
    assert task["context"] == want
    with pytest.raises(tasker.ValidationError, match="/date_range/start_date"):
        engine.create_task("report", {"date_range": {"start_date": "not-a-date"}})


MONITORED = """
# An original-format template as its blog files write them: a top-level key the original
# ignores, a plain custom event name.
name: monitored
owner: data-team
custom_events: [{name: data_extraction_started}]
step_templates:
  - {name: extract}
"""


def test_unknown_template_keys_warn_and_plain_event_names_are_heard(engine):
    with pytest.warns(tasker.TemplateWarning, match=r"template default.monitored@0.1.0: unknown key `owner`"):
        assert engine.register_template(MONITORED) == "default.monitored@0.1.0"
    heard = []
    engine.on("data_extraction_started")(lambda ev: heard.append(ev["metadata"]["payload"]))

    @engine.handler("extract")
    def extract(step):
        step.publish_custom_event("data_extraction_started", {"rows": 3})
        return {}

    assert engine.run_until_complete(engine.create_task("monitored", {}), timeout=30)["status"] == "complete"
    assert heard == [{"rows": 3}]


def test_strict_templates_refuse_unknown_keys(db):
    engine = tasker.Engine(**db, strict_templates=True)
    with pytest.raises(tasker.TemplateError, match=r"unknown key `owner`.*strict templates are on"):
        engine.register_template(MONITORED)


ORDER_EVENTS = """
events:
  custom:
    order_shipped:
      constant: "order.shipped"
      description: "Fired when an order ships"
      payload_schema:
        order_id: { type: "String", required: true }
      fired_by: ["ShippingService"]
"""


def test_event_definition_files_let_any_handler_publish_with_a_checked_payload(engine, tmp_path):
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "orders.yml").write_text(ORDER_EVENTS)
    assert engine.register_events(tmp_path / "events") == ["order.shipped"]
    assert engine.register_events(ORDER_EVENTS) == ["order.shipped"]
    assert [(d["name"], d["fired_by"]) for d in engine.event_definitions()] == [("order.shipped", ["ShippingService"])]
    engine.register_template("name: ship\nstep_templates:\n  - {name: ship}\n")
    heard = []
    engine.on("order.shipped")(lambda ev: heard.append(ev["metadata"]["payload"]))

    @engine.handler("ship")
    def ship(step):
        with pytest.raises(tasker.ValidationError, match=r"/order_id: 7 is not String"):
            step.publish_custom_event("order.shipped", {"order_id": 7})
        step.publish_custom_event("order.shipped", {"order_id": "o-1"})
        return {}

    assert engine.run_until_complete(engine.create_task("ship", {}), timeout=30)["status"] == "complete"
    assert heard == [{"order_id": "o-1"}]
    catalog = {e["name"]: e for e in engine.event_catalog()}
    assert catalog["order.shipped"]["fired_by"] == ["ShippingService"]
    assert catalog["workflow.step_failed"]["emitted"] is True
    assert catalog["workflow.no_viable_steps"]["emitted"] is False
    with pytest.raises(tasker.ValidationError, match=r"events.custom.x.constant"):
        engine.register_events("events:\n  custom:\n    x: {constant: shipped}\n")


OPS = """
name: ops
step_templates:
  - {name: a, default_retry_limit: 1}
  - {name: b, depends_on_step: a}
  - {name: c}
"""


def test_the_operator_calls_rest_has(engine):
    engine.register_template(OPS)
    calls = []

    @engine.handler("a")
    def a(step):
        calls.append(step.attempt)
        if len(calls) == 1:
            raise tasker.RetryableError("flaky")
        return {"ok": True}

    engine.handler("b")(lambda s: 1)
    engine.handler("c")(lambda s: 1)
    tid = engine.create_task("ops", {})
    assert engine.run_until_complete(tid, timeout=30)["status"] == "error"
    # More attempts for the exhausted step: it runs again, and the task completes.
    engine.set_step_retry_limit(tid, "a", 3)
    assert engine.run_until_complete(tid, timeout=30)["status"] == "complete"
    assert calls == [1, 2]
    engine.update_task(tid, reason="audited", tags=["ops", "q4"])
    t = engine.get_task(tid)
    assert (t["reason"], t["tags"]) == ("audited", ["ops", "q4"])
    history = engine.transitions(tid)
    a_states = [h["to_state"] for h in history if h["step_name"] == "a"]
    assert "error" in a_states and a_states[-1] == "complete", a_states
    assert [h["to_state"] for h in history if h["step_name"] is None][-1] == "complete"

    t2 = engine.create_task("ops", {})
    engine.cancel_step(t2, "b")
    done = engine.run_until_complete(t2, timeout=30)
    assert {s["name"]: s["status"] for s in done["steps"]} == {"a": "complete", "b": "cancelled", "c": "complete"}
    assert engine.analytics(3600)["tasks_created"] == 2
    with pytest.raises(tasker.NotFoundError):
        engine.transitions(999999)
    with pytest.raises(tasker.ValidationError, match="retry_limit"):
        engine.set_step_retry_limit(tid, "a", 0)
    with pytest.raises(tasker.ValidationError, match="window_seconds"):
        engine.analytics(0)


APPROVAL = """
name: approval
steps:
  - {name: route, type: decision}
  - {name: auto_approve, dependencies: [route]}
  - {name: finance_review, dependencies: [route]}
  - {name: finalize, type: deferred_convergence, dependencies: [auto_approve, finance_review]}
"""


def test_a_decision_creates_only_the_branch_it_chose(engine):
    engine.register_template(APPROVAL)

    @engine.handler("route")
    def route(s):
        small = s.context["amount"] < 1000
        return tasker.Decision(["auto_approve" if small else "finance_review"], results={"amount": s.context["amount"]})

    @engine.handler("auto_approve")
    def auto(s):
        return {"by": "auto", "amount": s.results["route"]["amount"]}

    @engine.handler("finance_review")
    async def finance(s):
        return {"by": "finance"}

    @engine.handler("finalize")
    def finalize(s):
        return sorted(s.results)

    snap = engine.run_until_complete(engine.create_task("approval", {"amount": 10}), timeout=30)
    assert snap["status"] == "complete"
    assert sorted(x["name"] for x in snap["steps"]) == ["auto_approve", "finalize", "route"]
    assert step(snap, "finalize")["results"] == ["auto_approve"]
    assert step(snap, "auto_approve")["results"] == {"by": "auto", "amount": 10}

    # A name outside the decision's children fails it permanently, naming them.
    @engine.handler("route")
    def bad_route(s):
        return tasker.Decision("nowhere")

    snap = engine.run_until_complete(engine.create_task("approval", {"amount": 10}), timeout=30)
    assert snap["status"] == "error"
    err = step(snap, "route")["error"]["message"]
    assert '"nowhere"' in err and "auto_approve, finance_review" in err


APPROVE = """
name: approve
steps:
  - {name: ask}
  - {name: act, dependencies: [ask]}
"""


def test_a_waiting_step_ends_by_signal_by_correlation_or_from_outside(engine):
    engine.register_template(APPROVE)

    @engine.handler("ask")
    def ask(s):
        return tasker.Wait(signal=s.context.get("signal"), correlation_id=s.context.get("corr"),
                           results={"asked": True})

    @engine.handler("act")
    def act(s):
        return {"saw": s.results["ask"]}

    by_signal = engine.create_task("approve", {"signal": "approved"})
    engine.run_worker(until_idle=True)
    snap = engine.get_task(by_signal)
    assert step(snap, "ask")["status"] == "waiting"
    assert step(snap, "ask")["waiting_for"] == {"signal": "approved"}
    assert engine.signal(by_signal, "approved", {"by": "ops"}) == 1
    snap = engine.run_until_complete(by_signal, timeout=30)
    assert snap["status"] == "complete"
    assert step(snap, "act")["results"] == {"saw": {"by": "ops"}}

    # A signal sent first is kept and taken when the step waits.
    early = engine.create_task("approve", {"signal": "go"})
    assert engine.signal(early, "go", [1, 2]) == 0
    assert step(engine.run_until_complete(early, timeout=30), "ask")["results"] == [1, 2]

    corr = engine.create_task("approve", {"corr": "order-7"})
    outside = engine.create_task("approve", {})
    engine.run_worker(until_idle=True)
    assert engine.complete_correlated("order-7", {"paid": True}) == 1
    assert engine.run_until_complete(corr, timeout=30)["status"] == "complete"
    with pytest.raises(tasker.ConflictError, match="pending"):
        engine.complete_step(engine.create_task("approve", {}), "ask", {})
    with pytest.raises(tasker.NotFoundError):
        engine.complete_step(outside, "nope")
    with pytest.raises(tasker.ValidationError, match="payload"):
        engine.signal(outside, "x", {1, 2})
    engine.fail_step(outside, "ask", "rejected", permanent=True)
    failed = engine.get_task(outside)
    assert failed["status"] == "error"
    assert step(failed, "ask")["error"]["message"] == "rejected"


ORDER = """
name: order
steps:
  - {name: charge}
  - {name: ship, dependencies: [charge]}
"""

PAYMENT = """
name: payment
namespace: billing
schema: {type: object, required: [amount], properties: {amount: {type: integer}}}
steps:
  - {name: authorize, retry: {max_attempts: 1}}
  - {name: capture, dependencies: [authorize]}
"""


def test_a_child_task_runs_for_its_parent_step_and_a_failed_one_fails_it(engine):
    engine.register_template(ORDER)
    engine.register_template(PAYMENT)

    @engine.handler("charge")
    def charge(s):
        return tasker.ChildTask("payment", {"amount": s.context["amount"]}, namespace="billing")

    @engine.handler("ship")
    def ship(s):
        return {"captured": s.results["charge"]["results"]["capture"]["captured"]}

    @engine.handler("authorize")
    def authorize(s):
        if s.context["amount"] > 100:
            raise tasker.PermanentError("card declined")
        return {"ok": True}

    @engine.handler("capture")
    async def capture(s):
        return {"captured": s.context["amount"]}

    snap = engine.run_until_complete(engine.create_task("order", {"amount": 42}), timeout=30)
    assert snap["status"] == "complete"
    assert snap["parent_task_id"] is None
    charged = step(snap, "charge")
    child = engine.get_task(charged["child_task_id"])
    assert charged["results"]["task_id"] == child["id"]
    assert charged["results"]["status"] == "complete"
    assert (child["namespace"], child["name"], child["parent_task_id"], child["parent_step"]) == (
        "billing", "payment", snap["id"], "charge")
    assert step(snap, "ship")["results"] == {"captured": 42}

    failed = engine.run_until_complete(engine.create_task("order", {"amount": 500}), timeout=30)
    assert failed["status"] == "error"
    err = step(failed, "charge")["error"]
    assert err["kind"] == "permanent"
    assert "card declined" in err["message"] and "billing/payment" in err["message"]

    # A context the child's schema refuses fails the step, naming the field.
    @engine.handler("charge")
    def bad_charge(s):
        return tasker.ChildTask("payment", {"amount": "lots"}, namespace="billing")

    bad = engine.run_until_complete(engine.create_task("order", {"amount": 1}), timeout=30)
    assert bad["status"] == "error"
    assert "amount" in step(bad, "charge")["error"]["message"]
    assert repr(tasker.ChildTask("payment")) == "ChildTask('payment', context=None, namespace=None, version=None)"


FAN = """
name: fan
steps:
  - {name: plan, type: batchable}
  - {name: work, type: batch_worker, dependencies: [plan], retry: {max_attempts: 2}, backoff: {base_seconds: 0, jitter: 0}}
  - {name: total, type: deferred_convergence, dependencies: [work]}
"""


def test_a_fan_out_runs_one_instance_per_item_and_a_checkpoint_reaches_the_next_attempt(engine):
    engine.register_template(FAN)

    @engine.handler("plan")
    def plan(s):
        return tasker.Batches([{"start": i, "end": i + 10} for i in range(0, 30, 10)], results={"rows": 30})

    @engine.handler("work")
    def work(s):
        # The second instance saves how far it got, then fails; its retry resumes from there.
        if s.batch_index == 1 and s.checkpoint is None:
            s.save_checkpoint({"at": s.batch["start"] + 5})
            raise tasker.RetryableError("interrupted")
        start = s.checkpoint["at"] if s.checkpoint else s.batch["start"]
        return {"name": s.name, "sum": sum(range(start, s.batch["end"])), "rows": s.results["plan"]["rows"]}

    @engine.handler("total")
    async def total(s):
        return {"sums": [r["sum"] for r in s.results["work"]], "names": [r["name"] for r in s.results["work"]]}

    snap = engine.run_until_complete(engine.create_task("fan"), timeout=30)
    assert snap["status"] == "complete"
    out = step(snap, "total")["results"]
    assert out["names"] == ["work_001", "work_002", "work_003"]
    assert out["sums"] == [sum(range(0, 10)), sum(range(15, 20)), sum(range(20, 30))]
    assert step(snap, "work_002")["attempts"] == 2


def test_a_schedule_is_fired_by_a_running_worker_and_managed_by_name(engine):
    engine.register_template("name: beat\nstep_templates:\n  - {name: pulse}\n")
    engine.handler("pulse")(lambda s: {"tick": s.context["n"]})
    s = engine.create_schedule("every_second", "beat", "* * * * * *", context={"n": 1}, overlap="allow")
    assert (s["name"], s["timezone"], s["overlap"], s["catch_up"]) == ("every_second", "UTC", "allow", "latest")
    assert s["next_run_at"].endswith("Z")
    with pytest.raises(tasker.ConflictError):
        engine.create_schedule("every_second", "beat", "* * * * *")
    with pytest.raises(tasker.ValidationError, match="has 3 fields"):
        engine.create_schedule("bad", "beat", "* * *")
    with pytest.raises(tasker.ValidationError, match="overlap"):
        engine.create_schedule("bad", "beat", "* * * * *", overlap="sometimes")
    with pytest.raises(tasker.ValidationError, match="Atlantis"):
        engine.create_schedule("bad", "beat", "* * * * *", timezone="Atlantis")
    worker = threading.Thread(target=engine.run_worker, kwargs={"concurrency": 2})
    worker.start()
    try:
        deadline = time.time() + 10
        while engine.get_schedule("every_second")["fired"] < 2 and time.time() < deadline:
            time.sleep(0.1)
        s = engine.get_schedule("every_second")
        assert s["fired"] >= 2, s
        task = engine.wait_for_task(s["last_task_id"], timeout=10)
        assert (task["source_system"], task["initiator"]) == ("schedule", "every_second")
        assert step(task, "pulse")["results"] == {"tick": 1}
    finally:
        engine.stop()
        worker.join(timeout=30)
    assert engine.pause_schedule("every_second")["paused"] is True
    assert [x["name"] for x in engine.list_schedules()] == ["every_second"]
    assert engine.resume_schedule("every_second")["paused"] is False
    engine.delete_schedule("every_second")
    assert engine.list_schedules() == []
    with pytest.raises(tasker.NotFoundError, match="every_second"):
        engine.get_schedule("every_second")


def test_a_reschedule_runs_the_step_again_without_spending_an_attempt(engine):
    engine.register_template("name: poller\nsteps:\n  - {name: poll, retry: {max_attempts: 1}, max_reschedules: 3}\n")
    calls = []

    @engine.handler("poll")
    def poll(s):
        calls.append(s.attempt)
        return {"done_after": len(calls)} if len(calls) == 3 else tasker.Reschedule(after=0.05)

    task = engine.run_until_complete(engine.create_task("poller"), timeout=30)
    assert task["status"] == "complete"
    assert calls == [1, 1, 1], "every call was the first attempt"
    assert step(task, "poll")["results"] == {"done_after": 3}


def test_a_task_past_its_deadline_is_failed_by_a_running_worker(engine):
    engine.register_template("name: stuck\nstep_templates:\n  - {name: nobody_handles_this}\n")
    engine.handler("other")(lambda s: {})
    worker = threading.Thread(target=engine.run_worker, kwargs={"concurrency": 1})
    worker.start()
    try:
        task = engine.wait_for_task(engine.create_task("stuck", deadline_seconds=0.3), timeout=10)
    finally:
        engine.stop()
        worker.join(timeout=30)
    assert task["status"] == "error"
    assert step(task, "nobody_handles_this")["status"] == "cancelled"
    with pytest.raises(tasker.ValidationError, match="deadline_seconds"):
        engine.create_task("stuck", deadline_seconds=-1)


FLOW = """
name: flow
steps:
  - {name: fetch}
  - {name: load, dependencies: [fetch], retry: {max_attempts: 1}}
"""


def test_operators_pause_rerun_retry_in_bulk_and_prune(engine):
    engine.register_template(FLOW)
    broken = [True]
    engine.handler("fetch")(lambda s: {"rows": 3})

    @engine.handler("load")
    def load(s):
        if broken[0]:
            raise tasker.RetryableError("warehouse down")
        return {"loaded": 3}

    # A paused task runs nothing until it is resumed.
    paused = engine.create_task("flow")
    assert engine.pause_task(paused) is True
    assert engine.pause_task(paused) is False
    assert engine.get_task(paused)["paused"] is True
    with pytest.raises(tasker.TimeoutError):
        engine.run_until_complete(paused, timeout=0.5)
    assert engine.get_task(paused)["status"] == "pending"
    assert engine.resume_task(paused) is True
    # Three tasks fail at load; one bulk retry after the fix completes them all.
    failed = [paused] + [engine.create_task("flow") for _ in range(2)]
    for t in failed:
        assert engine.run_until_complete(t, timeout=30)["status"] == "error"
    broken[0] = False
    assert engine.retry_tasks(name="flow", since="1h") == 3
    for t in failed:
        assert engine.run_until_complete(t, timeout=30)["status"] == "complete"
    # Rerun a complete task from its first step: both steps run again.
    assert engine.rerun_from(failed[0], "fetch") == 2
    again = engine.run_until_complete(failed[0], timeout=30)
    assert again["status"] == "complete"
    reasons = [h["metadata"].get("reason") for h in engine.transitions(failed[0]) if h["step_name"] == "fetch"]
    assert "rerun_from" in reasons
    assert engine.pause_template("flow") == 0, "none unfinished"
    assert engine.cancel_tasks(name="flow") == 0
    with pytest.raises(tasker.ValidationError, match="status must be error"):
        engine.retry_tasks(status="complete")
    with pytest.raises(tasker.ValidationError, match="older_than"):
        engine.prune("soon")
    # Nothing is old enough yet; everything complete is older than zero seconds.
    assert engine.prune("30d") == 0
    assert engine.prune(0) == 3
    with pytest.raises(tasker.NotFoundError):
        engine.get_task(failed[1])
