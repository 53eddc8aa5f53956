# frozen_string_literal: true

# tasker-engine 1.0's BaseSubscriber and YAML subscriptions, on the engine's events.
require_relative "test_helper"

class SubscribersTest < Minitest::Test
  include TaskerTestHelper

  FLAKY = <<~YAML
    name: ship
    custom_events: [{name: order.shipped}]
    step_templates:
      - {name: pack, default_retry_limit: 2, backoff: {base_seconds: 0}}
      - {name: send, depends_on_step: pack}
  YAML

  class ShippingSubscriber < Tasker::Events::Subscribers::BaseSubscriber
    subscribe_to :task_completed, "step.failed", "order.shipped", "workflow.step_failed"
    subscribe_to "step.completed" # accumulates; no handler: skipped with a warning

    def self.seen
      @seen ||= []
    end

    def handle_task_completed(event)
      self.class.seen << [:task_completed, event[:task_id], event["name"]]
    end

    def handle_step_failed(event)
      self.class.seen << [:step_failed, event[:step_name], event[:error], safe_get(event, :attempt)]
    end

    def handle_order_shipped(event)
      self.class.seen << [:order_shipped, event[:payload]["carrier"]]
    end

    def handle_workflow_step_failed(event)
      self.class.seen << [:workflow_step_failed, event[:error_message], event[:error_class]]
    end
  end

  class OnlyPackSubscriber < Tasker::Events::Subscribers::BaseSubscriber
    subscribe_to "step.completed"
    filter_events { |name| name.start_with?("step.") }

    def self.seen
      @seen ||= []
    end

    def handle_step_completed(event)
      self.class.seen << event[:step_name] if event[:step_name] == "pack"
    end
  end

  class EverythingSubscriber < Tasker::Events::Subscribers::BaseSubscriber
    def self.seen
      @seen ||= []
    end

    def handle_event(event)
      self.class.seen << event[:name]
    end
  end

  def run_ship
    engine.register_template(FLAKY)
    calls = 0
    engine.handler("pack") do |_s|
      calls += 1
      raise Tasker::RetryableError, "jammed" if calls == 1

      { packed: true }
    end
    engine.handler("send") do |s|
      s.publish_custom_event("order.shipped", { carrier: "ups" })
      { sent: true }
    end
    engine.run_until_complete(engine.create_task("ship"), timeout: 30)
  end

  def test_a_base_subscriber_routes_events_to_its_handle_methods
    ShippingSubscriber.seen.clear
    OnlyPackSubscriber.seen.clear
    log = StringIO.new
    Tasker.logger = Logger.new(log)
    subscribed = ShippingSubscriber.subscribe(engine).events
    OnlyPackSubscriber.subscribe(engine)
    task = run_ship
    assert_equal "complete", task["status"]
    seen = ShippingSubscriber.seen
    assert_includes seen, [:task_completed, task["id"], "task.completed"]
    assert_includes seen, [:step_failed, "pack", "jammed", 1]
    assert_includes seen, [:workflow_step_failed, "jammed", "retryable"]
    assert_includes seen, [:order_shipped, "ups"]
    assert_equal ["pack"], OnlyPackSubscriber.seen
    assert_includes subscribed, "step.completed"
    assert_match(/no handle_step_completed for step.completed/, log.string)
  ensure
    Tasker.logger = Logger.new(File::NULL)
  end

  def test_yaml_subscriptions_subscribe_enabled_entries_and_skip_what_they_cannot
    EverythingSubscriber.seen.clear
    ShippingSubscriber.seen.clear
    dir = File.join(@tmp, "subscriptions")
    FileUtils.mkdir_p(dir)
    File.write(File.join(dir, "integrations.yml"), <<~YAML)
      # As the original's example_integrations.yml: names it never emits, a class that is
      # missing, a disabled entry, '*'.
      subscriptions:
        shipping:
          class: 'SubscribersTest::ShippingSubscriber'
          enabled: true
          events:
            - 'order.shipped'
            - 'workflow.error'
          config:
            channel: '#ops'
        everything:
          class: SubscribersTest::EverythingSubscriber
          events: ['*']
        pager:
          class: 'PagerDutySubscriber'
          events: ['task.failed']
        off:
          class: SubscribersTest::EverythingSubscriber
          enabled: false
          events: ['task.completed']
    YAML
    log = StringIO.new
    Tasker.logger = Logger.new(log)
    subs = Tasker::Events::SubscriptionLoader.load(engine, dir)
    assert_equal %w[shipping everything], subs.map(&:name)
    assert_equal({ "channel" => "#ops" }, subs[0].config)
    assert_match(/subscription shipping: .*workflow\.error.*skipped/, log.string)
    assert_match(/subscription pager: class "PagerDutySubscriber" not found/, log.string)
    run_ship
    assert_equal [[:order_shipped, "ups"]], ShippingSubscriber.seen, "only the YAML's events"
    assert_includes EverythingSubscriber.seen, "task.completed"
    assert_includes EverythingSubscriber.seen, "workflow.task_completed"
    assert_raises(Tasker::ValidationError) do
      Tasker::Events::SubscriptionLoader.load(engine, File.join(@tmp, "x.yml").tap { |f| File.write(f, "subs: {}") })
    end
  ensure
    Tasker.logger = Logger.new(File::NULL)
  end
end
