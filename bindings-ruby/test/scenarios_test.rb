# frozen_string_literal: true

# The core's conformance scenarios through Ruby handlers (the Python package's scenarios, in Ruby).
require_relative "test_helper"

class ScenariosTest < Minitest::Test
  include TaskerTestHelper

  DIAMOND = <<~YAML
    name: diamond
    step_templates:
      - {name: a}
      - {name: b, depends_on_step: a}
      - {name: c, depends_on_step: a}
      - {name: d, depends_on_steps: [b, c]}
  YAML

  FLAKY = <<~YAML
    name: flaky
    step_templates:
      - name: fetch
        default_retry_limit: 3
        backoff: {base_seconds: 0.05, multiplier: 1, jitter: 0}
      - {name: store, depends_on_step: fetch}
  YAML

  def register_diamond
    engine.register_template(DIAMOND)
    engine.handler("a") { |s| { v: s.context["seed"] + 1 } }
    engine.handler("b") { |s| { v: s.results["a"]["v"] * 2 } }
    engine.handler("c") { |s| { v: s.results["a"]["v"] * 3 } }
    engine.handler("d") { |s| { v: s.results["b"]["v"] + s.results["c"]["v"], saw: s.results.keys.sort } }
  end

  def test_diamond_with_block_handlers_computes_checkable_values
    register_diamond
    task = engine.run_until_complete(engine.create_task("diamond", { seed: 4 }), timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal({ "v" => 25, "saw" => %w[b c] }, step(task, "d")["results"])
    assert(task["steps"].all? { |s| s["attempts"] == 1 })
  end

  def test_a_decision_block_creates_only_its_branch_and_a_stray_name_fails_it
    engine.register_template(<<~YAML)
      name: approval
      steps:
        - {name: route, type: decision}
        - {name: auto_approve, dependencies: [route]}
        - {name: finance_review, dependencies: [route]}
        - {name: finalize, type: deferred_convergence, dependencies: [auto_approve, finance_review]}
    YAML
    choice = nil
    engine.handler("route") { |s| choice || Tasker::Decision.new(["finance_review"], results: { amount: s.context["amount"] }) }
    engine.handler("auto_approve") { |_s| "auto" }
    engine.handler("finance_review") { |s| { by: "finance", amount: s.results["route"]["amount"] } }
    engine.handler("finalize") { |s| s.results.keys.sort }
    task = engine.run_until_complete(engine.create_task("approval", { amount: 5000 }), timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal %w[finalize finance_review route], task["steps"].map { |s| s["name"] }.sort
    assert_equal({ "by" => "finance", "amount" => 5000 }, step(task, "finance_review")["results"])

    choice = Tasker::Decision.new(:nowhere)
    task = engine.run_until_complete(engine.create_task("approval", { amount: 1 }), timeout: 30)
    assert_equal "error", task["status"]
    error = step(task, "route")["error"]
    assert_equal "permanent", error["kind"]
    assert_includes error["message"], '"nowhere"'
    assert_includes error["message"], "auto_approve, finance_review"
  end

  def test_a_waiting_step_ends_by_signal_by_correlation_or_from_outside
    engine.register_template("name: approve\nsteps:\n  - {name: ask}\n  - {name: act, dependencies: [ask]}\n")
    engine.handler("ask") { |s| Tasker::Wait.new(signal: s.context["signal"], correlation_id: s.context["corr"], results: { asked: true }) }
    engine.handler("act") { |s| { saw: s.results["ask"] } }
    id = engine.create_task("approve", { signal: "approved" })
    engine.run_worker(until_idle: true)
    task = engine.get_task(id)
    assert_equal "waiting", step(task, "ask")["status"]
    assert_equal({ "signal" => "approved" }, step(task, "ask")["waiting_for"])
    assert_equal 1, engine.signal(id, "approved", { by: "ops" })
    task = engine.run_until_complete(id, timeout: 30)
    assert_equal({ "saw" => { "by" => "ops" } }, step(task, "act")["results"])

    early = engine.create_task("approve", { signal: "go" })
    assert_equal 0, engine.signal(early, :go, [1])
    assert_equal [1], step(engine.run_until_complete(early, timeout: 30), "ask")["results"]

    corr = engine.create_task("approve", { corr: "order-7" })
    outside = engine.create_task("approve", {})
    engine.run_worker(until_idle: true)
    assert_equal 1, engine.complete_correlated("order-7", { paid: true })
    assert_equal "complete", engine.run_until_complete(corr, timeout: 30)["status"]
    assert_raises_matching(Tasker::ConflictError, /pending/) { engine.complete_step(engine.create_task("approve", {}), "ask") }
    assert_raises(Tasker::NotFoundError) { engine.complete_step(outside, "nope") }
    engine.fail_step(outside, "ask", "rejected", permanent: true)
    task = engine.get_task(outside)
    assert_equal "error", task["status"]
    assert_equal "rejected", step(task, "ask")["error"]["message"]
    assert_equal({ "$wait" => { "signal" => "x", "timeout" => 5 } }, Tasker::Wait.new(signal: :x, timeout: 5).to_tasker_json)
  end

  # The seed's handler class may return a ChildTask too.
  class Charge < Tasker::StepHandler::Base
    def process(task, _sequence, _step)
      Tasker::ChildTask.new("payment", context: { amount: task.context["amount"] }, namespace: :billing)
    end
  end

  def test_a_child_task_runs_for_its_parent_step_and_a_failed_one_fails_it
    engine.register_template(<<~YAML)
      name: order
      step_templates:
        - {name: charge, handler_class: "ScenariosTest::Charge"}
        - {name: ship, depends_on_step: charge}
    YAML
    engine.register_template(<<~YAML)
      name: payment
      namespace: billing
      steps:
        - {name: authorize, retry: {max_attempts: 1}}
        - {name: capture, dependencies: [authorize]}
    YAML
    engine.handler("ScenariosTest::Charge", Charge)
    engine.handler("ship") { |s| { captured: s.results["charge"]["results"]["capture"]["captured"] } }
    engine.handler("authorize") do |s|
      raise Tasker::PermanentError, "card declined" if s.context["amount"] > 100

      { ok: true }
    end
    engine.handler("capture") { |s| { captured: s.context["amount"] } }
    task = engine.run_until_complete(engine.create_task("order", { amount: 42 }), timeout: 30)
    assert_equal "complete", task["status"], task.inspect
    assert_nil task["parent_task_id"]
    charge = step(task, "charge")
    child = engine.get_task(charge["child_task_id"])
    assert_equal ["billing", "payment", task["id"], "charge"],
                 child.values_at("namespace", "name", "parent_task_id", "parent_step")
    assert_equal({ "task_id" => child["id"], "status" => "complete",
                   "results" => { "authorize" => { "ok" => true }, "capture" => { "captured" => 42 } } }, charge["results"])
    assert_equal({ "captured" => 42 }, step(task, "ship")["results"])

    failed = engine.run_until_complete(engine.create_task("order", { amount: 500 }), timeout: 30)
    assert_equal "error", failed["status"]
    error = step(failed, "charge")["error"]
    assert_equal "permanent", error["kind"]
    assert_includes error["message"], "card declined"
    assert_includes error["message"], "billing/payment"
    assert_equal({ "$child_task" => { "name" => "x", "context" => {} } }, Tasker::ChildTask.new(:x).to_tasker_json)
  end

  def test_a_fan_out_runs_one_instance_per_item_and_a_checkpoint_reaches_the_next_attempt
    engine.register_template(<<~YAML)
      name: fan
      steps:
        - {name: plan, type: batchable}
        - {name: work, type: batch_worker, dependencies: [plan], retry: {max_attempts: 2}, backoff: {base_seconds: 0, jitter: 0}}
        - {name: total, type: deferred_convergence, dependencies: [work]}
    YAML
    engine.handler("plan") { |_s| Tasker::Batches.new([0, 10, 20].map { |i| { start: i, end: i + 10 } }, results: { rows: 30 }) }
    engine.handler("work") do |s|
      if s.batch_index == 1 && s.checkpoint.nil?
        s.save_checkpoint({ at: s.batch["start"] + 5 })
        raise Tasker::RetryableError.new("interrupted", retry_after: 0)
      end
      from = s.checkpoint ? s.checkpoint["at"] : s.batch["start"]
      { name: s.name, sum: (from...s.batch["end"]).sum, rows: s.results["plan"]["rows"] }
    end
    engine.handler("total") { |s| { sums: s.results["work"].map { |r| r["sum"] }, names: s.results["work"].map { |r| r["name"] } } }
    task = engine.run_until_complete(engine.create_task("fan"), timeout: 30)
    assert_equal "complete", task["status"], task.inspect
    assert_equal({ "sums" => [45, 85, 245], "names" => %w[work_001 work_002 work_003] }, step(task, "total")["results"])
    assert_equal 2, step(task, "work_002")["attempts"]
  end

  def test_linear_and_tree_shapes
    engine.register_template(<<~YAML)
      name: chain
      step_templates:
        - {name: s1, handler_class: inc}
        - {name: s2, handler_class: inc, depends_on_step: s1}
        - {name: s3, handler_class: inc, depends_on_step: s2}
        - {name: leaf1, handler_class: inc, depends_on_step: s3}
        - {name: leaf2, handler_class: inc, depends_on_step: s3}
    YAML
    engine.handler("inc") { |s| { x: s.results.empty? ? 1 : s.results.values.sum { |r| r["x"] } + 1 } }
    task = engine.run_until_complete(engine.create_task("chain"), timeout: 30)
    assert_equal [1, 2, 3, 4, 4], %w[s1 s2 s3 leaf1 leaf2].map { |n| step(task, n)["results"]["x"] }
  end

  def test_handlers_run_on_a_pool_of_ruby_threads_that_overlap_on_io
    engine.register_template({ "name" => "fan", "steps" => (1..4).map { |i| { "name" => "s#{i}", "handler" => { "callable" => "nap" } } } })
    threads = Queue.new
    engine.handler("nap") do |_s|
      threads << Thread.current.name
      sleep 0.3
      "rested"
    end
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    task = engine.run_until_complete(engine.create_task("fan"), timeout: 30, concurrency: 4)
    took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    assert_equal "complete", task["status"]
    assert_operator took, :<, 1.0, "four 0.3 s sleeps on four threads overlap (took #{took})"
    names = Array.new(threads.size) { threads.pop }
    assert(names.all? { |n| n.start_with?("tasker-handler-") }, names.inspect)
    assert_operator names.uniq.size, :>, 1
  end

  def test_flaky_step_retries_then_succeeds
    engine.register_template(FLAKY)
    calls = []
    engine.handler("fetch") do |s|
      calls << s.attempt
      raise Tasker::RetryableError, "flake #{s.attempt}" if s.attempt < 3

      { n: s.attempt }
    end
    engine.handler("store") { |s| { saw: s.results["fetch"]["n"] } }
    task = engine.run_until_complete(engine.create_task("flaky"), timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal [1, 2, 3], calls
    assert_equal 3, step(task, "fetch")["attempts"]
    assert_equal({ "saw" => 3 }, step(task, "store")["results"])
  end

  def test_retryable_error_retry_after_is_honoured_and_its_context_stored
    engine.register_template(FLAKY)
    starts = []
    engine.handler("fetch") do |s|
      starts << Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise Tasker::RetryableError.new("rate limited", retry_after: 0.6, context: { "shard" => 3 }) if s.attempt == 1

      1
    end
    failed = []
    engine.on("step.failed") { |ev| failed << ev }
    engine.handler("store") { |_s| nil }
    task = engine.run_until_complete(engine.create_task("flaky"), timeout: 30)
    assert_equal "complete", task["status"]
    assert_operator starts[1] - starts[0], :>=, 0.55, starts.inspect
    assert_equal "rate limited", failed.first["metadata"]["error"]
  end

  def test_permanent_error_is_never_retried_and_blocks_the_task
    engine.register_template(FLAKY)
    engine.handler("fetch") { |_s| raise Tasker::PermanentError.new("card declined", error_code: "DECLINED", context: { "card" => "x42" }) }
    engine.handler("store") { |_s| flunk "downstream must not run" }
    task = engine.run_until_complete(engine.create_task("flaky"), timeout: 30)
    assert_equal "error", task["status"]
    f = step(task, "fetch")
    assert_equal [1, "permanent", "card declined"], [f["attempts"], f["error"]["kind"], f["error"]["message"]]
    assert_equal({ "exception" => "Tasker::PermanentError", "context" => { "card" => "x42" }, "error_code" => "DECLINED" }, f["error"]["detail"])
    assert_equal "pending", step(task, "store")["status"]
  end

  def test_retry_limit_exhausted_fails_the_task
    engine.register_template(FLAKY)
    engine.handler("fetch") { |_s| raise Tasker::RetryableError, "still down" }
    engine.handler("store") { |_s| nil }
    task = engine.run_until_complete(engine.create_task("flaky"), timeout: 30)
    assert_equal "error", task["status"]
    assert_equal 3, step(task, "fetch")["attempts"]
  end

  def test_any_other_exception_is_retryable_and_keeps_class_message_and_backtrace
    engine.register_template("name: boom\nstep_templates:\n  - {name: boom, default_retry_limit: 2, backoff: {base_seconds: 0}}\n")
    engine.handler("boom") do |s|
      {}.fetch("missing") if s.attempt == 1
      "ok"
    end
    seen = []
    engine.on("step.failed") { |ev| seen << ev }
    task = engine.run_until_complete(engine.create_task("boom"), timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal 2, step(task, "boom")["attempts"]
    assert_equal 'KeyError: key not found: "missing"', seen.first["metadata"]["error"]
    assert_equal "retryable", seen.first["metadata"]["kind"]

    engine.register_template("name: bad_input\nstep_templates:\n  - {name: boom2, default_retryable: false}\n")
    engine.handler("boom2") { |_s| raise ArgumentError, "bad input 42" }
    err = step(engine.run_until_complete(engine.create_task("bad_input"), timeout: 30), "boom2")["error"]
    assert_equal "ArgumentError: bad input 42", err["message"]
    assert_equal "ArgumentError", err["detail"]["exception"]
    assert(err["detail"]["backtrace"].any? { |l| l.include?("scenarios_test.rb") }, err.inspect)
  end

  def test_a_non_json_return_fails_the_step_with_a_clear_message
    engine.register_template("name: bad\nstep_templates:\n  - {name: bad}\n")
    engine.handler("bad") { |_s| { when: Object.new } }
    err = step(engine.run_until_complete(engine.create_task("bad"), timeout: 30), "bad")["error"]
    assert_equal "permanent", err["kind"]
    assert_match(/not JSON: when is a Object/, err["message"])
  end

  def test_cancel_retry_and_resolve
    engine.register_template(FLAKY)
    engine.handler("fetch") { |_s| raise Tasker::PermanentError, "down" }
    engine.handler("store") { |s| { stored: s.results["fetch"] } }
    t1 = engine.create_task("flaky")
    engine.run_until_complete(t1, timeout: 30)
    engine.resolve_step_manually(t1, "fetch", { by: "hand" })
    task = engine.run_until_complete(t1, timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal({ "stored" => { "by" => "hand" } }, step(task, "store")["results"])

    t2 = engine.create_task("flaky")
    engine.run_until_complete(t2, timeout: 30)
    engine.handler("fetch") { |_s| { fixed: true } }
    engine.retry_step(t2, "fetch")
    assert_equal "complete", engine.run_until_complete(t2, timeout: 30)["status"]

    t3 = engine.create_task("flaky")
    engine.cancel_task(t3)
    assert_equal "cancelled", engine.get_task(t3)["status"]
    assert_raises_matching(Tasker::ConflictError, /already cancelled/) { engine.cancel_task(t3) }
    assert_raises_matching(Tasker::ConflictError, /it is cancelled/) { engine.retry_step(t3, "fetch") }
    assert_raises_matching(Tasker::NotFoundError, /no step named "nope"/) { engine.retry_step(engine.create_task("flaky"), "nope") }
    assert_raises(Tasker::NotFoundError) { engine.get_task(999_999) }
    assert_kind_of Tasker::Error, Tasker::NotFoundError.new("x")
  end

  def test_idempotency_and_bypass
    engine.register_template("name: skip\nstep_templates:\n  - {name: audit, skippable: true}\n  - {name: charge}\n")
    engine.handler("charge") { |_s| "charged" }
    engine.handler("audit") { |_s| flunk "bypassed" }
    a = engine.create_task("skip", { n: 1 }, idempotency_key: "k", bypass_steps: ["audit"])
    b = engine.create_task("skip", { n: 2 }, idempotency_key: "k")
    assert_equal a, b
    task = engine.run_until_complete(a, timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal "resolved_manually", step(task, "audit")["status"]
    assert_raises_matching(Tasker::ValidationError, /not skippable/) { engine.create_task("skip", bypass_steps: ["charge"]) }
    assert_raises_matching(Tasker::ValidationError, /unknown option idempotencykey/) { engine.create_task("skip", idempotencykey: "x") }
    assert_equal 1, engine.list_tasks.size
    assert_equal a, engine.list_tasks(status: "complete").first["id"]
    assert_raises_matching(Tasker::ValidationError, /status/) { engine.list_tasks(status: "finished") }
  end

  def test_schema_violations_are_listed
    engine.register_template(<<~YAML)
      name: order
      schema:
        type: object
        required: [order_id]
        properties:
          order_id: {type: integer}
          email: {type: string}
      step_templates:
        - {name: a}
    YAML
    e = assert_raises(Tasker::ValidationError) { engine.create_task("order", { order_id: "x", email: 5 }) }
    assert_includes e.message, "/order_id"
    assert_includes e.message, "/email"
    assert_raises_matching(Tasker::ValidationError, /context.order_id is a Object/) { engine.create_task("order", { order_id: Object.new }) }
  end

  BAD_TEMPLATES = {
    "name: t\nstep_templates:\n  - {name: a\n" => "YAML syntax error at line",
    "name: t\nstep_templates: []\n" => "has no steps",
    "name: t\nstep_templates:\n  - {name: a}\n  - {name: a}\n" => 'step name "a" appears more than once',
    "name: t\nstep_templates:\n  - {name: a, depends_on_step: z}\n" => 'depends on unknown step "z"',
    "name: t\nstep_templates:\n  - {name: a, depends_on_step: b}\n  - {name: b, depends_on_step: a}\n" => "dependency cycle: a -> b -> a",
    "name: t\nstep_templates:\n  - {name: a, default_retry_limit: 0}\n" => "default_retry_limit must be at least 1",
    "name: t\nversion: nope\nstep_templates:\n  - {name: a}\n" => "is not a semantic version"
  }.freeze

  def test_bad_templates_raise_template_error
    BAD_TEMPLATES.each do |yaml, message|
      e = assert_raises(Tasker::TemplateError, yaml) { engine.register_template(yaml) }
      assert_includes e.message, message
    end
  end

  def test_templates_from_a_hash_and_a_path_and_revisions
    assert_equal "default.d@1.0.0", engine.register_template({ "name" => "d", "version" => "1.0.0", "steps" => [{ "name" => "x", "handler" => { "callable" => "x" } }] })
    path = File.join(@tmp, "t.yaml")
    File.write(path, "name: f\nstep_templates:\n  - {name: y}\n")
    assert_equal "default.f@0.1.0", engine.register_template(path)
    assert_equal "default.f@0.1.0", engine.register_template(Pathname.new(path))
    assert_raises_matching(Tasker::TemplateError, /No such file/) { engine.register_template(File.join(@tmp, "missing.yaml")) }
    assert_equal "default.d@1.0.0", engine.register_template({ name: "d", version: "1.0.0", steps: [{ name: "other" }] })
    assert_equal ["other"], engine.get_task(engine.create_task("d"))["steps"].map { |s| s["name"] }
    strict = new_engine(strict_templates: true)
    assert_raises_matching(Tasker::TemplateError, /different body/) { strict.register_template({ "name" => "d", "version" => "1.0.0", "steps" => [{ "name" => "third" }] }) }
  end

  def test_builtin_command_steps_run_beside_ruby_handlers
    engine.register_template(<<~YAML)
      name: mixed
      step_templates:
        - name: shell
          handler_class: command
          handler_config: {command: ["sh", "-c", "echo '{\\"from\\": \\"sh\\"}'"]}
        - {name: rb, depends_on_step: shell}
    YAML
    engine.handler("rb") { |s| { got: s.results["shell"] } }
    task = engine.run_until_complete(engine.create_task("mixed"), timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal({ "got" => { "from" => "sh" } }, step(task, "rb")["results"])
  end

  def test_events_carry_every_transition_of_a_run_in_order
    engine.register_template("name: flaky_once\nsteps:\n  - {name: f, retry: {max_attempts: 2}}\n  - {name: g, dependencies: [f]}\n")
    engine.handler("f") do |s|
      raise Tasker::RetryableError.new("first try fails", retry_after: 0) if s.attempt == 1

      1
    end
    engine.handler("g") { |_s| 2 }
    seen = []
    engine.on("*") { |ev| seen << [ev["name"], ev["step_name"], ev["attempt"]] }
    assert_raises(Tasker::ValidationError) { engine.on("step.exploded") { nil } }
    assert_raises(Tasker::ValidationError) { engine.on("task.mine") { nil } }
    engine.run_until_complete(engine.create_task("flaky_once"), timeout: 30)
    # "*" hears the original's events too (workflow.*, observability.*, step.before_handle),
    # each after what it follows; the transitions' own events are the rest.
    names = seen.map(&:first)
    assert_equal names.index("step.failed") + 1, names.index("workflow.step_failed")
    assert_equal "workflow.task_completed", names.last
    assert_equal 3, names.count("step.before_handle")
    seen.reject! { |n, _, _| n.start_with?("workflow.", "observability.", "step.before_handle") }
    expected = [
      ["task.initialize_requested", nil, nil], ["step.initialize_requested", "f", 0],
      ["step.initialize_requested", "g", 0], ["step.execution_requested", "f", 1],
      ["task.start_requested", nil, nil], ["step.failed", "f", 1], ["step.retry_requested", "f", 2],
      ["step.execution_requested", "f", 2], ["step.completed", "f", 2],
      ["step.execution_requested", "g", 1], ["step.completed", "g", 1], ["task.completed", nil, nil]
    ]
    assert_equal expected.sort_by(&:to_s), seen.sort_by(&:to_s)
    %w[f g].each do |n|
      assert_equal(expected.select { |e| e[1] == n }.map(&:first), seen.select { |e| e[1] == n }.map(&:first))
    end
    assert_equal "task.completed", seen.last.first
  end

  def test_custom_events_reach_subscribers_once_and_undeclared_ones_are_refused
    engine.register_template(<<~YAML)
      name: notify
      custom_events:
        - {name: order.shipped, description: the parcel left the warehouse}
      step_templates:
        - {name: ship}
    YAML
    got = []
    engine.on("order.shipped") { |ev| got << ev }
    engine.handler("ship") do |s|
      s.publish_custom_event("order.shipped", { carrier: "ups" })
      begin
        s.publish_custom_event("order.lost", {})
        { refused: nil }
      rescue Tasker::ValidationError => e
        { refused: e.message }
      end
    end
    task = engine.run_until_complete(engine.create_task("notify"), timeout: 30)
    assert_equal "complete", task["status"]
    assert_includes step(task, "ship")["results"]["refused"], "declares only order.shipped"
    assert_equal 1, got.size
    assert_equal ["order.shipped", task["id"], "ship"], [got[0]["name"], got[0]["task_id"], got[0]["step_name"]]
    assert_equal({ "event_type" => "custom", "payload" => { "carrier" => "ups" } }, got[0]["metadata"])
  end

  def test_run_until_complete_times_out
    engine.register_template("name: stuck\nstep_templates:\n  - {name: nobody_handles_this}\n")
    assert_raises(Tasker::TimeoutError) { engine.run_until_complete(engine.create_task("stuck"), timeout: 0.3) }
  end

  def test_a_schedule_is_fired_by_a_running_worker_and_managed_by_name
    engine = new_engine
    engine.register_template("name: beat\nstep_templates:\n  - {name: pulse}\n")
    engine.handler("pulse") { |s| { tick: s.context["n"] } }
    s = engine.create_schedule("every_second", "beat", "* * * * * *", context: { n: 1 }, overlap: "allow")
    assert_equal %w[every_second UTC allow latest], s.values_at("name", "timezone", "overlap", "catch_up")
    assert_raises(Tasker::ConflictError) { engine.create_schedule("every_second", "beat", "* * * * *") }
    e = assert_raises(Tasker::ValidationError) { engine.create_schedule("bad", "beat", "* * *") }
    assert_match(/has 3 fields/, e.message)
    worker = Thread.new { engine.run_worker(concurrency: 2) }
    deadline = Time.now + 10
    sleep 0.1 while engine.get_schedule("every_second")["fired"] < 2 && Time.now < deadline
    fired = engine.get_schedule("every_second")
    assert_operator fired["fired"], :>=, 2, fired.inspect
    task = engine.wait_for_task(fired["last_task_id"], timeout: 10)
    assert_equal %w[schedule every_second], task.values_at("source_system", "initiator")
    assert_equal({ "tick" => 1 }, step(task, "pulse")["results"])
    engine.stop
    assert worker.join(30), "stop ends run_worker"
    assert_equal true, engine.pause_schedule("every_second")["paused"]
    assert_equal ["every_second"], engine.list_schedules.map { |x| x["name"] }
    assert_equal false, engine.resume_schedule("every_second")["paused"]
    engine.delete_schedule("every_second")
    assert_equal [], engine.list_schedules
    assert_raises(Tasker::NotFoundError) { engine.get_schedule("every_second") }
  end

  def test_a_reschedule_runs_the_step_again_without_spending_an_attempt
    engine.register_template("name: poller\nsteps:\n  - {name: poll, retry: {max_attempts: 1}, max_reschedules: 3}\n")
    calls = []
    engine.handler("poll") do |s|
      calls << s.attempt
      calls.size == 3 ? { done_after: 3 } : Tasker::Reschedule.new(after: 0.05)
    end
    task = engine.run_until_complete(engine.create_task("poller"), timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal [1, 1, 1], calls
  end

  def test_a_task_past_its_deadline_is_failed_by_a_running_worker
    engine.register_template("name: stuck\nstep_templates:\n  - {name: nobody_handles_this}\n")
    engine.handler("other") { |_s| {} }
    worker = Thread.new { engine.run_worker(concurrency: 1) }
    task = engine.wait_for_task(engine.create_task("stuck", {}, deadline_seconds: 0.3), timeout: 10)
    engine.stop
    assert worker.join(30), "stop ends run_worker"
    assert_equal "error", task["status"]
    assert_equal "cancelled", step(task, "nobody_handles_this")["status"]
  end

  def test_bulk_create_wait_from_another_thread_and_stop
    engine.register_template("name: job\nstep_templates:\n  - {name: noop}\n")
    engine.handler("noop") { |s| { i: s.context["i"] } }
    ids = engine.create_tasks((0...50).map { |i| { name: "job", context: { i: i } } })
    assert_equal 50, ids.uniq.size
    assert_raises(Tasker::ValidationError) { engine.create_tasks([{ name: "job", contxt: {} }]) }
    stats = nil
    worker = Thread.new { stats = engine.run_worker(concurrency: 4) }
    ids.each_with_index do |tid, i|
      assert_equal({ "i" => i }, step(engine.wait_for_task(tid, timeout: 30), "noop")["results"])
    end
    late = engine.create_task("job", { i: 99 })
    assert_equal "complete", engine.wait_for_task(late, timeout: 30)["status"]
    engine.stop
    assert worker.join(30), "stop ends run_worker"
    assert_equal 51, stats["completed"]
    engine.register_template("name: idle\nstep_templates:\n  - {name: nobody}\n")
    assert_raises(Tasker::TimeoutError) { engine.wait_for_task(engine.create_task("idle"), timeout: 0.3) }
  end

  def test_a_queued_step_does_not_time_out_before_its_handler_starts
    steps = (0...6).map { |i| { "name" => "s#{i}", "handler" => { "callable" => "nap" }, "timeout_seconds" => 0.5 } }
    steps << { "name" => "too_slow", "handler" => { "callable" => "long_nap" }, "timeout_seconds" => 0.2, "retry" => { "max_attempts" => 1 } }
    engine.register_template({ "name" => "queue", "steps" => steps })
    engine.handler("nap") { |_s| sleep 0.3; "rested" }
    engine.handler("long_nap") { |_s| sleep 1.0; "late" }
    task = engine.run_until_complete(engine.create_task("queue"), timeout: 60, concurrency: 1)
    6.times { |i| assert_equal %w[complete 1], [step(task, "s#{i}")["status"], step(task, "s#{i}")["attempts"].to_s] }
    slow = step(task, "too_slow")
    assert_equal %w[error timeout], [slow["status"], slow["error"]["kind"]]
    assert_includes slow["error"]["message"], "timed out after 0.200 s"
  end

  def test_schema_defaults_reach_the_handler_and_are_stored
    engine.register_template(<<~YAML)
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
      step_templates:
        - {name: build}
    YAML
    engine.handler("build") { |s| s.context }
    task = engine.run_until_complete(engine.create_task("report", { date_range: { start_date: "2026-01-01" } }), timeout: 30)
    want = { "date_range" => { "start_date" => "2026-01-01", "timezone" => "UTC" }, "force_refresh" => false }
    assert_equal want, step(task, "build")["results"]
    assert_equal want, task["context"]
    assert_raises_matching(Tasker::ValidationError, %r{/date_range/start_date}) { engine.create_task("report", { date_range: { start_date: "nope" } }) }
  end

  def test_bad_arguments_get_clear_errors
    assert_raises_matching(Tasker::ValidationError, /lease_seconds must be at least 0.1/) { new_engine(lease_seconds: 0) }
    assert_raises_matching(Tasker::DatabaseError, /cannot connect to PostgreSQL at 127.0.0.1:1/) { Tasker::Engine.new("postgres://app@127.0.0.1:1/x") }
    assert_raises_matching(ArgumentError, /does not derive from Tasker::StepHandler::Base/) { engine.handler("x", String) }
    assert_raises_matching(ArgumentError, /give a block/) { engine.handler("x") }
    assert_raises_matching(Tasker::ValidationError, /concurrency/) { engine.run_worker(concurrency: 0) }
  end

  def test_a_blocked_wait_lets_other_ruby_threads_run_and_thread_raise_interrupts_it
    engine.register_template("name: idle2\nstep_templates:\n  - {name: nobody}\n")
    id = engine.create_task("idle2")
    ticks = 0
    ticker = Thread.new { loop { ticks += 1; sleep 0.01 } }
    waiter = Thread.new do
      engine.wait_for_task(id, timeout: 30)
    rescue StandardError => e
      e
    end
    sleep 0.5
    waiter.raise(RuntimeError, "stop waiting")
    assert waiter.join(2), "Thread#raise reaches a thread blocked in the core"
    assert_equal "stop waiting", waiter.value.message
    ticker.kill
    assert_operator ticks, :>, 20, "other Ruby threads ran while the core waited"
  end

  def test_unknown_template_keys_are_warned_about_and_plain_event_names_heard
    yaml = <<~YAML
      # A top-level key the original ignores, and a plain custom event name.
      name: monitored
      owner: data-team
      custom_events: [{name: data_extraction_started}]
      step_templates:
        - {name: extract}
    YAML
    _, err = capture_io { assert_equal "default.monitored@0.1.0", engine.register_template(yaml) }
    assert_equal "tasker: template default.monitored@0.1.0: unknown key `owner`: kept (compat.unknown_keys), no effect here\n", err
    heard = []
    engine.on("data_extraction_started") { |ev| heard << ev["metadata"]["payload"] }
    engine.handler("extract") do |s|
      s.publish_custom_event("data_extraction_started", { rows: 3 })
      {}
    end
    task = engine.run_until_complete(engine.create_task("monitored"), timeout: 30)
    assert_equal "complete", task["status"]
    assert_equal [{ "rows" => 3 }], heard

    strict = new_engine(strict_templates: true)
    assert_raises_matching(Tasker::TemplateError, /unknown key `owner`.*strict templates are on/) { strict.register_template(yaml) }
  end

  def test_event_definition_files_let_any_handler_publish_with_a_checked_payload
    dir = File.join(@tmp, "events")
    FileUtils.mkdir_p(dir)
    File.write(File.join(dir, "orders.yml"), <<~YAML)
      events:
        custom:
          order_shipped:
            constant: "order.shipped"
            payload_schema:
              order_id: { type: "String", required: true }
            fired_by: ["ShippingService"]
    YAML
    assert_equal ["order.shipped"], engine.register_events(dir)
    assert_equal [["order.shipped", ["ShippingService"]]], engine.event_definitions.map { |d| [d["name"], d["fired_by"]] }
    engine.register_template("name: ship\nstep_templates:\n  - {name: ship}\n")
    heard = []
    engine.on("order.shipped") { |ev| heard << ev["metadata"]["payload"] }
    engine.handler("ship") do |s|
      begin
        s.publish_custom_event("order.shipped", { order_id: 7 })
        refused = nil
      rescue Tasker::ValidationError => e
        refused = e.message
      end
      s.publish_custom_event("order.shipped", { order_id: "o-1" })
      { refused: refused }
    end
    task = engine.run_until_complete(engine.create_task("ship"), timeout: 30)
    assert_equal "complete", task["status"]
    assert_includes step(task, "ship")["results"]["refused"], "/order_id: 7 is not String"
    assert_equal [{ "order_id" => "o-1" }], heard
    catalog = engine.event_catalog.to_h { |e| [e["name"], e] }
    assert_equal ["ShippingService"], catalog["order.shipped"]["fired_by"]
    assert_equal false, catalog["workflow.no_viable_steps"]["emitted"]
    assert_raises_matching(Tasker::ValidationError, /events\.custom\.x\.constant/) do
      engine.register_events("events:\n  custom:\n    x: {constant: shipped}\n")
    end
  end

  def test_the_operator_calls_rest_has
    engine.register_template("name: ops\nstep_templates:\n  - {name: a, default_retry_limit: 1}\n  - {name: b, depends_on_step: a}\n  - {name: c}\n")
    calls = []
    engine.handler("a") do |s|
      calls << s.attempt
      raise Tasker::RetryableError, "flaky" if calls.size == 1

      { ok: true }
    end
    engine.handler("b") { |_s| 1 }
    engine.handler("c") { |_s| 1 }
    id = engine.create_task("ops")
    assert_equal "error", engine.run_until_complete(id, timeout: 30)["status"]
    engine.set_step_retry_limit(id, "a", 3)
    assert_equal "complete", engine.run_until_complete(id, timeout: 30)["status"]
    assert_equal [1, 2], calls
    engine.update_task(id, reason: "audited", tags: ["ops"])
    t = engine.get_task(id)
    assert_equal ["audited", ["ops"]], [t["reason"], t["tags"]]
    a_states = engine.transitions(id).select { |h| h["step_name"] == "a" }.map { |h| h["to_state"] }
    assert_includes a_states, "error"
    assert_equal "complete", a_states.last
    id2 = engine.create_task("ops")
    engine.cancel_step(id2, "b")
    done = engine.run_until_complete(id2, timeout: 30)
    assert_equal({ "a" => "complete", "b" => "cancelled", "c" => "complete" }, done["steps"].to_h { |s| [s["name"], s["status"]] })
    assert_equal 2, engine.analytics(window_seconds: 3600)["tasks_created"]
    assert_raises(Tasker::NotFoundError) { engine.transitions(999_999) }
    assert_raises_matching(Tasker::ValidationError, /retry_limit/) { engine.set_step_retry_limit(id, "a", 0) }
  end

  def test_operators_pause_rerun_retry_in_bulk_and_prune
    engine.register_template("name: flow\nsteps:\n  - {name: fetch}\n  - {name: load, dependencies: [fetch], retry: {max_attempts: 1}}\n")
    broken = true
    engine.handler("fetch") { |_s| { rows: 3 } }
    engine.handler("load") do |_s|
      raise Tasker::RetryableError, "warehouse down" if broken

      { loaded: 3 }
    end
    paused = engine.create_task("flow")
    assert_equal true, engine.pause_task(paused)
    assert_equal false, engine.pause_task(paused)
    assert_equal true, engine.get_task(paused)["paused"]
    assert_raises(Tasker::TimeoutError) { engine.run_until_complete(paused, timeout: 0.5) }
    assert_equal true, engine.resume_task(paused)
    failed = [paused, engine.create_task("flow"), engine.create_task("flow")]
    failed.each { |t| assert_equal "error", engine.run_until_complete(t, timeout: 30)["status"] }
    broken = false
    assert_equal 3, engine.retry_tasks(name: "flow", since: Time.now - 3600)
    failed.each { |t| assert_equal "complete", engine.run_until_complete(t, timeout: 30)["status"] }
    assert_equal 2, engine.rerun_from(failed[0], "fetch")
    assert_equal "complete", engine.run_until_complete(failed[0], timeout: 30)["status"]
    assert_equal 0, engine.pause_template("flow")
    assert_equal 0, engine.cancel_tasks(name: "flow")
    assert_raises_matching(Tasker::ValidationError, /status must be error/) { engine.retry_tasks(status: "complete") }
    assert_raises_matching(Tasker::ValidationError, /older_than/) { engine.prune("soon") }
    assert_equal 0, engine.prune("30d")
    assert_equal 3, engine.prune(0)
    assert_raises(Tasker::NotFoundError) { engine.get_task(failed[1]) }
  end

  private

  def assert_raises_matching(klass, pattern, &block)
    e = assert_raises(klass, &block)
    assert_match pattern, e.message
    e
  end

end
