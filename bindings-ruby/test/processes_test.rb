# frozen_string_literal: true

# Ruby worker processes: SIGINT, SIGKILL and a task shared with a Python worker.
require_relative "test_helper"
require "open3"
require "timeout"

class ProcessesTest < Minitest::Test
  include TaskerTestHelper

  WORKER = File.expand_path("support/worker.rb", __dir__)

  Worker = Struct.new(:pid, :out, :err, :waiter) do
    def status(limit = 60)
      Timeout.timeout(limit) { waiter.value }
    end
  end

  def start_worker(log, sleep_ms, mode, lease: 30)
    out = File.join(@tmp, "out-#{SecureRandom.hex(3)}")
    err = "#{out}.err"
    pid = Process.spawn(RbConfig.ruby, WORKER, JSON.generate(url: db[:url], schema: db[:schema]), log, sleep_ms.to_s, mode, lease.to_s,
                        out: out, err: err)
    Worker.new(pid, out, err, Process.detach(pid))
  end

  def wait_until(what, limit = 20)
    deadline = Time.now + limit
    until yield
      flunk "timed out waiting for #{what}" if Time.now > deadline
      sleep 0.02
    end
  end

  def log_lines(log)
    File.exist?(log) ? File.readlines(log, chomp: true) : []
  end

  def test_sigint_stops_run_worker_unstarted_steps_handed_back_running_ones_reported
    engine.register_template("name: slow\nstep_templates:\n  - {name: slow}\n")
    ids = engine.create_tasks(Array.new(5) { { name: "slow" } })
    log = File.join(@tmp, "runs.log")
    w = start_worker(log, 30_000, "forever")
    wait_until("two steps to start") { log_lines(log).count { |l| l.start_with?("start") } == 2 }
    Process.kill("INT", w.pid)
    st = w.status
    assert st.success?, "exit #{st.inspect}: #{File.read(w.err)}"
    assert_match(/stopped cleanly/, File.read(w.out))
    steps = ids.map { |id| engine.get_task(id)["steps"][0] }
    assert_equal 0, steps.count { |s| s["status"] == "in_progress" }, "no step is left to its lease"
    assert_equal 2, steps.count { |s| s.dig("error", "kind") == "worker_shutdown" }
    assert_equal 3, steps.count { |s| s["status"] == "pending" && s["attempts"].zero? }
  end

  def test_two_ruby_workers_share_postgresql_and_a_killed_one_loses_its_steps_to_the_other
    skip "several worker processes need PostgreSQL" unless postgres?
    engine.register_template("name: slow\nstep_templates:\n  - {name: slow}\n")
    ids = engine.create_tasks(Array.new(30) { { name: "slow" } })
    log = File.join(@tmp, "runs.log")
    a = start_worker(log, 200, "idle", lease: 2)
    b = start_worker(log, 200, "idle", lease: 2)
    wait_until("worker a to start a step") { log_lines(log).any? { |l| l.start_with?("start") && l.end_with?(" #{a.pid}") } }
    Process.kill("KILL", a.pid)
    assert_equal "KILL", Signal.signame(a.status.termsig)
    st = b.status(120)
    assert st.success?, File.read(b.err)
    tasks = ids.map { |id| engine.get_task(id) }
    assert(tasks.all? { |t| t["status"] == "complete" }, tasks.map { |t| t["status"] }.inspect)
    retried = tasks.select { |t| t["steps"][0]["attempts"] > 1 }
    refute_empty retried, "the killed worker held steps that ran again"
    retried.each { |t| assert_equal b.pid, t["steps"][0]["results"]["pid"], "the survivor ran them" }
    # No step ran twice at once: every start of an attempt is by one process.
    starts = log_lines(log).select { |l| l.start_with?("start") }.map(&:split)
    assert_equal starts.size, starts.map { |_, t, att, _| [t, att] }.uniq.size
  end

  PY_WORKER = <<~PY
    import sys, tasker
    engine = tasker.Engine(sys.argv[1], schema=sys.argv[2] or None)

    @engine.handler("py_prepare")
    def prepare(step):
        return {"items": [1, 2, 3], "by": "python", "note": "h\\u00e9llo \\u2713"}

    @engine.handler("py_finish")
    def finish(step):
        return {"python_saw": step.results["total"]}

    print("ready", flush=True)
    engine.run_worker(concurrency=2)  # until Ctrl-C
  PY

  def test_one_task_whose_steps_are_handled_by_a_python_worker_and_a_ruby_worker
    skip "separate worker processes need PostgreSQL" unless postgres?
    python = ENV["TASKER_PYTHON"] or skip "TASKER_PYTHON (a python with the tasker package; scripts/test.sh sets it) is not set"
    engine.register_template(<<~YAML)
      name: polyglot
      step_templates:
        - {name: prepare, handler_class: py_prepare}
        - {name: total, handler_class: rb_total, depends_on_step: prepare}
        - {name: finish, handler_class: py_finish, depends_on_step: total}
    YAML
    id = engine.create_task("polyglot")
    py_err = File.join(@tmp, "py.err")
    py = Process.spawn(python, "-c", PY_WORKER, db[:url], db[:schema].to_s, out: File::NULL, err: py_err)
    py_wait = Process.detach(py)
    engine.handler("rb_total") { |s| { sum: s.results["prepare"]["items"].sum, echoed: s.results["prepare"] } }
    worker = Thread.new { engine.run_worker(concurrency: 2) }
    task = engine.wait_for_task(id, timeout: 60)
    engine.stop
    worker.join
    Process.kill("INT", py)
    assert Timeout.timeout(30) { py_wait.value }.success?, File.read(py_err)
    assert_equal "complete", task["status"], task["steps"].map { |s| [s["name"], s["status"], s["error"]] }.inspect
    echoed = { "items" => [1, 2, 3], "by" => "python", "note" => "héllo ✓" }
    assert_equal echoed, step(task, "total")["results"]["echoed"]
    assert_equal({ "python_saw" => { "sum" => 6, "echoed" => echoed } }, step(task, "finish")["results"])
  end

  EXAMPLES = File.expand_path("../../examples/ruby", __dir__)

  def run_example(name)
    skip "backend-independent: runs in the SQLite pass" if postgres?
    out, err, st = Open3.capture3(RbConfig.ruby, "-I#{File.expand_path('../lib', __dir__)}", File.join(EXAMPLES, name), chdir: @tmp)
    assert st.success?, err
    out
  end

  def test_the_readme_quickstart_runs
    assert_equal "HELLO WORLD!\n", run_example("quickstart.rb")
  end

  def test_the_orders_example_runs_seed_style_classes_with_a_retry
    assert_equal "charge failed: gateway busy (retried)\ncomplete: charged 13, shipped by ups\n", run_example("orders.rb")
  end
end
