# frozen_string_literal: true

# tasker-engine 1.0's handler classes run unchanged: Tasker::StepHandler::Base with
# process(task, sequence, step) and process_results, resolved from a template's handler_class;
# Tasker::StepHandler::Api with handler_config and core's response rule.
require_relative "test_helper"
require "socket"

module Payments
  class Charge < Tasker::StepHandler::Base
    def process(task, _sequence, step)
      { "charged" => task.context["amount"], "task" => task.task_id, "attempts_before" => step.attempts, "fee" => config["fee"] }
    end
  end

  class Receipt < Tasker::StepHandler::Base
    def process(_task, sequence, step)
      charge = sequence.find_step_by_name("charge")
      step.results = { "receipt_for" => charge.results["charged"], "missing" => sequence.find_step_by_name("nope") }
      "ignored because results were assigned"
    end
  end

  class Audit < Tasker::StepHandler::Base
    def process(_task, _sequence, _step)
      { "raw" => 41 }
    end

    def process_results(step, output, initial_results)
      step.results = { "audited" => output["raw"] + 1, "initial" => initial_results }
    end
  end

  # A seed-style class may return a Tasker::Decision from process for a `type: decision` step.
  class Route < Tasker::StepHandler::Base
    def process(task, _sequence, _step)
      amount = task.context["amount"]
      Tasker::Decision.new(amount < 1000 ? "auto_approve" : "finance_review", results: { "amount" => amount })
    end
  end

  class Flaky < Tasker::StepHandler::Base
    def process(_task, _sequence, step)
      raise Tasker::RetryableError.new("gateway busy", retry_after: 0) if step.attempts.zero?

      publish_custom_event("payment.retried", { "attempts" => step.attempts })
      "ok"
    end
  end
end

module Remote
  # The seed's API handler: +process+ returns the response.
  class Fetch < Tasker::StepHandler::Api
    def process(task, _sequence, _step)
      connection.get("/items/#{task.context['path']}", { "q" => "1" })
    end
  end

  class Wrapped < Tasker::StepHandler::Api
    def process(task, _sequence, _step)
      connection.get("/items/#{task.context['path']}")
    end

    def process_results(step, response, _initial)
      step.results = { "status" => response.status, "length" => response.body.to_s.size }
    end
  end

  class HashResponse < Tasker::StepHandler::Api
    def process(_task, _sequence, _step)
      { status: 429, headers: { "Retry-After" => "0" }, body: "slow down" }
    end
  end
end

class SeedCompatTest < Minitest::Test
  include TaskerTestHelper

  # A tiny HTTP server: path /items/<status> answers that status; the body echoes the request.
  def start_server
    server = TCPServer.new("127.0.0.1", 0)
    @requests = Queue.new
    @server_thread = Thread.new do
      loop do
        c = server.accept
        line = c.gets.to_s
        headers = {}
        while (h = c.gets) && h != "\r\n"
          k, v = h.split(":", 2)
          headers[k.downcase] = v.strip
        end
        @requests << [line.split[1], headers]
        status = line[%r{/items/(\d+)}, 1].to_i
        status = 200 if status.zero?
        body = status < 300 ? JSON.generate({ "path" => line.split[1] }) : "no such item"
        extra = status == 503 ? "Retry-After: 0\r\n" : ""
        c.write "HTTP/1.1 #{status} X\r\nContent-Type: application/json\r\nContent-Length: #{body.bytesize}\r\n#{extra}Connection: close\r\n\r\n#{body}"
        c.close
      end
    end
    "http://127.0.0.1:#{server.addr[1]}"
  end

  def teardown
    @server_thread&.kill
    super
  end

  def test_base_subclasses_named_by_handler_class_run_without_registration
    engine.register_template(<<~YAML)
      name: checkout
      namespace_name: payments
      version: 1.0.0
      custom_events:
        - {name: payment.retried}
      step_templates:
        - {name: charge, handler_class: "Payments::Charge", handler_config: {fee: 3}}
        - {name: receipt, handler_class: "Payments::Receipt", depends_on_step: charge}
        - {name: audit, handler_class: "Payments::Audit", depends_on_step: charge}
        - {name: flaky, handler_class: "Payments::Flaky", default_retry_limit: 2}
    YAML
    events = []
    engine.on("payment.retried") { |ev| events << ev["metadata"]["payload"] }
    assert_includes engine.handler_names, "Payments::Charge"
    id = engine.create_task("checkout", { amount: 25 }, namespace: "payments")
    task = engine.run_until_complete(id, timeout: 30)
    assert_equal "complete", task["status"], task.inspect
    assert_equal({ "charged" => 25, "task" => id, "attempts_before" => 0, "fee" => 3 }, step(task, "charge")["results"])
    assert_equal({ "receipt_for" => 25, "missing" => nil }, step(task, "receipt")["results"])
    assert_equal({ "audited" => 42, "initial" => nil }, step(task, "audit")["results"])
    assert_equal "ok", step(task, "flaky")["results"]
    assert_equal 2, step(task, "flaky")["attempts"]
    assert_equal [{ "attempts" => 1 }], events
  end

  def test_a_base_subclass_returns_a_decision_and_only_its_branch_is_created
    engine.register_template(<<~YAML)
      name: approval
      step_templates:
        - {name: route, type: decision, handler_class: "Payments::Route"}
        - {name: auto_approve, depends_on_step: route}
        - {name: finance_review, depends_on_step: route}
        - {name: finalize, type: deferred_convergence, depends_on_steps: [auto_approve, finance_review]}
    YAML
    engine.handler("auto_approve") { |s| { "by" => "auto", "amount" => s.results["route"]["amount"] } }
    engine.handler("finance_review") { |_s| { "by" => "finance" } }
    engine.handler("finalize") { |s| s.results.keys.sort }
    task = engine.run_until_complete(engine.create_task("approval", { amount: 12 }), timeout: 30)
    assert_equal "complete", task["status"], task.inspect
    assert_equal %w[auto_approve finalize route], task["steps"].map { |s| s["name"] }.sort
    assert_equal({ "by" => "auto", "amount" => 12 }, step(task, "auto_approve")["results"])
    assert_equal ["auto_approve"], step(task, "finalize")["results"]
  end

  def test_a_handler_class_that_does_not_exist_is_not_claimed
    engine.register_template("name: ghost\nstep_templates:\n  - {name: g, handler_class: \"Nope::Missing\"}\n")
    refute_includes engine.handler_names, "Nope::Missing"
    assert_raises(Tasker::TimeoutError) { engine.run_until_complete(engine.create_task("ghost"), timeout: 0.3) }
    assert_equal "pending", step(engine.get_task(engine.list_tasks.first["id"]), "g")["status"]
  end

  def test_api_handlers_classify_responses_by_cores_rule
    url = start_server
    engine.register_template(<<~YAML)
      name: remote
      step_templates:
        - name: fetch
          handler_class: "Remote::Fetch"
          default_retry_limit: 2
          backoff: {base_seconds: 0}
          handler_config: {url: "#{url}", headers: {X-Api-Key: secret}, params: {token: t1}}
    YAML
    ok = engine.run_until_complete(engine.create_task("remote", { path: "200" }), timeout: 30)
    assert_equal "complete", ok["status"]
    assert_match %r{\A/items/200\?(token=t1&q=1|q=1&token=t1)\z}, step(ok, "fetch")["results"]["path"]
    path, headers = @requests.pop
    assert_match(/token=t1/, path)
    assert_equal "secret", headers["x-api-key"]

    gone = step(engine.run_until_complete(engine.create_task("remote", { path: "404" }), timeout: 30), "fetch")
    assert_equal ["error", 1, "permanent"], [gone["status"], gone["attempts"], gone["error"]["kind"]]
    assert_match(/HTTP 404 Not Found: no such item/, gone["error"]["message"])
    assert_equal({ "response_status" => 404, "exception" => "Remote::Fetch", "error_code" => "HTTP_404" }, gone["error"]["detail"])

    busy = step(engine.run_until_complete(engine.create_task("remote", { path: "503" }), timeout: 30), "fetch")
    assert_equal ["error", 2, "retryable"], [busy["status"], busy["attempts"], busy["error"]["kind"]]
    broken = step(engine.run_until_complete(engine.create_task("remote", { path: "500" }), timeout: 30), "fetch")
    assert_equal ["error", 2, "retryable"], [broken["status"], broken["attempts"], broken["error"]["kind"]]
  end

  def test_api_process_results_gets_the_response_and_a_hash_response_is_classified
    url = start_server
    engine.register_template(<<~YAML)
      name: remote2
      step_templates:
        - {name: wrapped, handler_class: "Remote::Wrapped", handler_config: {url: "#{url}"}}
        - {name: hashed, handler_class: "Remote::HashResponse", default_retry_limit: 1, handler_config: {url: "#{url}"}}
        - {name: no_url, handler_class: "Remote::Wrapped", handler_config: {params: {}}}
    YAML
    task = engine.run_until_complete(engine.create_task("remote2", { path: "201" }), timeout: 30)
    assert_equal({ "status" => 201, "length" => 21 }, step(task, "wrapped")["results"])
    hashed = step(task, "hashed")
    assert_equal %w[error retryable], [hashed["status"], hashed["error"]["kind"]]
    assert_match(/HTTP 429 Too Many Requests: slow down/, hashed["error"]["message"])
    no_url = step(task, "no_url")
    assert_equal "permanent", no_url["error"]["kind"]
    assert_match(/handler_config.url is required/, no_url["error"]["message"])
  end

  def test_the_net_http_connection_speaks_the_same_verbs
    url = start_server
    conn = Tasker::HttpConnection.new(url: url, params: { "a" => "1" }, headers: { "X-T" => "y" })
    r = conn.post("/items/200", { "k" => 1 })
    assert_equal 200, r.status
    assert_equal "/items/200?a=1", JSON.parse(r.body)["path"]
    assert_equal [200, nil, r.body], Tasker::HttpConnection.parts(r)
    assert_equal [503, "4", ""], Tasker::HttpConnection.parts({ "status" => 503, "headers" => { "retry-after" => 4 }, "body" => nil })
    assert_raises(Tasker::PermanentError) { Tasker::HttpConnection.parts("nope") }
  end
end
