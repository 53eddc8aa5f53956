# An order workflow with tasker-engine 1.0 style handler classes: the template names them in
# handler_class, and they run without registration.
#
#   ruby -Ibindings-ruby/lib examples/ruby/orders.rb
require "tasker"

module Orders
  class Validate < Tasker::StepHandler::Base
    def process(task, _sequence, _step)
      items = task.context["items"]
      raise Tasker::PermanentError.new("an order needs items", error_code: "EMPTY") if items.empty?

      { "total" => items.sum { |i| i["price"] * i["qty"] } }
    end
  end

  class Charge < Tasker::StepHandler::Base
    def process(_task, sequence, step)
      # The payment gateway is busy on the first attempt: try again in 0.2 s.
      raise Tasker::RetryableError.new("gateway busy", retry_after: 0.2) if step.attempts.zero?

      { "charged" => sequence.find_step_by_name("validate").results["total"] }
    end
  end

  class Ship < Tasker::StepHandler::Base
    def process(task, _sequence, _step)
      { "carrier" => "ups", "to" => task.context["customer"] }
    end
  end

  class Notify < Tasker::StepHandler::Base
    def process(_task, sequence, _step)
      "charged #{sequence.find_step_by_name('charge').results['charged']}, shipped by #{sequence.find_step_by_name('ship').results['carrier']}"
    end
  end
end

engine = Tasker::Engine.new("sqlite://orders-example.db")
engine.register_template(<<~YAML)
  name: order
  namespace_name: shop
  version: 1.0.0
  schema:
    type: object
    required: [customer, items]
    properties:
      customer: {type: string}
      items: {type: array}
  step_templates:
    - {name: validate, handler_class: "Orders::Validate"}
    - {name: charge, handler_class: "Orders::Charge", depends_on_step: validate, default_retry_limit: 3}
    - {name: ship, handler_class: "Orders::Ship", depends_on_step: validate}
    - {name: notify, handler_class: "Orders::Notify", depends_on_steps: [charge, ship]}
YAML
engine.on("step.failed") { |ev| puts "#{ev['step_name']} failed: #{ev['metadata']['error']} (retried)" }
id = engine.create_task("order", { customer: "ada", items: [{ price: 5, qty: 2 }, { price: 1, qty: 3 }] }, namespace: "shop")
task = engine.run_until_complete(id, timeout: 30)
puts "#{task['status']}: #{task['steps'].find { |s| s['name'] == 'notify' }['results']}"
