require "tasker"

engine = Tasker::Engine.new("sqlite://quickstart-ruby.db")
engine.register_template({ name: "hello", steps: [{ name: "greet" }, { name: "shout", dependencies: ["greet"] }] })

engine.handler("greet") { |step| "hello #{step.context['who']}" }
engine.handler("shout") { |step| "#{step.results['greet'].upcase}!" }

puts engine.run_until_complete(engine.create_task("hello", { who: "world" }))["steps"][1]["results"]
