# frozen_string_literal: true

# W1-W4 (shared/bench/README.md) with Ruby no-op handlers: the same workloads and measurement
# as bindings-node/bench/bench.mjs and bindings-python/bench/bench.py.
#
#   ruby -Ibindings-ruby/lib bindings-ruby/bench/bench.rb [--backend sqlite|postgres]
#        [--pg-url URL] [--workload W1,W2,W3,W4] [--reps 3] [--concurrency 10] [--allow-unsafe]
#
# One worker (this process) at concurrency 10 (a pool of 10 Ruby threads). Each repetition runs
# on a fresh database (SQLite file or PostgreSQL schema). Prints the median of each metric.
require "json"
require "securerandom"
require "tmpdir"
require "tasker"

CHAIN = 100
args = { backend: "sqlite", pg_url: ENV["DATABASE_URL"], workload: "W1,W2,W3,W4", reps: 3, concurrency: 10, allow_unsafe: false }
argv = ARGV.dup
until argv.empty?
  k = argv.shift
  case k
  when "--allow-unsafe" then args[:allow_unsafe] = true
  when "--backend" then args[:backend] = argv.shift
  when "--pg-url" then args[:pg_url] = argv.shift
  when "--workload" then args[:workload] = argv.shift
  when "--reps" then args[:reps] = Integer(argv.shift)
  when "--concurrency" then args[:concurrency] = Integer(argv.shift)
  else abort "unknown argument #{k}"
  end
end
abort "--backend postgres needs --pg-url or DATABASE_URL" if args[:backend] == "postgres" && !args[:pg_url]
Tasker.logger.level = Logger::WARN
CONCURRENCY = args[:concurrency]

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

define_method(:fresh) do
  if args[:backend] == "postgres"
    Tasker::Engine.new(args[:pg_url], schema: "rbbench_#{SecureRandom.hex(5)}")
  else
    Tasker::Engine.new("sqlite://#{Dir.mktmpdir('tasker-rbbench')}/bench.db")
  end
end

def template(w)
  case w
  when "W1", "W3" then "name: job\nstep_templates:\n  - {name: noop}\n"
  when "W2" then "name: diamond\nstep_templates:\n  - {name: A}\n  - {name: B, depends_on_step: A}\n  - {name: C, depends_on_step: A}\n  - {name: D, depends_on_steps: [B, C]}\n"
  else
    (["name: chain", "step_templates:", "  - {name: s1, handler_class: step}"] +
      (2..CHAIN).map { |k| "  - {name: s#{k}, handler_class: step, depends_on_step: s#{k - 1}}" }).join("\n") + "\n"
  end
end

def handlers(engine, w, first)
  mark = -> { first[:t] ||= now }
  case w
  when "W1", "W3" then engine.handler("noop") { |_s| mark.call; { ok: true } }
  when "W2"
    engine.handler("A") { |s| mark.call; { wf: s.context["wf"], a: 1 } }
    engine.handler("B") { |s| { wf: s.results["A"]["wf"], b: 2 } }
    engine.handler("C") { |s| { wf: s.results["A"]["wf"], c: 3 } }
    engine.handler("D") do |s|
      r = s.results
      raise Tasker::PermanentError, "D saw #{r}" unless r["B"]["b"] == 2 && r["C"]["c"] == 3 && r["B"]["wf"] == s.context["wf"]

      { wf: s.context["wf"], d: 4 }
    end
  else
    engine.handler("step") do |s|
      mark.call
      parents = s.results.values
      x = (parents.empty? ? 0 : parents[0]["x"]) + 1
      raise Tasker::PermanentError, "chain ended at #{x}" if s.name == "s#{CHAIN}" && x != CHAIN

      { x: x }
    end
  end
end

def throughput(engine, w)
  engine.register_template(template(w))
  first = { t: nil }
  handlers(engine, w, first)
  case w
  when "W1"
    tasks = steps = 20_000
    (0...tasks).step(1000) { |i| engine.create_tasks((0...1000).map { |j| { name: "job", context: { i: i + j } } }) }
  when "W2"
    tasks = 2000
    tasks.times { |i| engine.create_task("diamond", { wf: i }) }
    steps = 4 * tasks
  else
    tasks = 20
    tasks.times { |i| engine.create_task("chain", { wf: i }) }
    steps = tasks * CHAIN
  end
  engine.run_worker(concurrency: CONCURRENCY, until_idle: true)
  finish = now
  done = engine.list_tasks(status: "complete", limit: tasks + 1).size
  raise "#{done} of #{tasks} complete" unless done == tasks

  { "steps_per_s" => steps / (finish - first[:t]) }
end

def latency(engine)
  engine.register_template(template("W3"))
  handlers(engine, "W3", { t: nil })
  worker = Thread.new { engine.run_worker(concurrency: CONCURRENCY) }
  lat = []
  310.times do |i|
    t0 = now
    t = engine.wait_for_task(engine.create_task("job", { i: i }), timeout: 30)
    dt = (now - t0) * 1000
    raise t["status"] unless t["status"] == "complete"

    lat << dt if i >= 10
  end
  engine.stop
  worker.join
  lat.sort!
  pct = ->(p) { lat[[1, [lat.size, (p / 100.0 * lat.size).ceil].min].max - 1] }
  { "p50_ms" => pct.call(50), "p95_ms" => pct.call(95), "p99_ms" => pct.call(99) }
end

dur = fresh.durability
conditions = "#{dur['description']}; worker concurrency #{CONCURRENCY} (Ruby threads), prefetch adaptive (2-10x concurrency by handler pace), batch window 1 ms, lanes: 2 on PostgreSQL, 1 on SQLite; #{RUBY_DESCRIPTION}"
warn "# conditions: #{conditions}"
if !dur["durable"] && !args[:allow_unsafe]
  warn "refusing to report figures measured without durable commits (#{dur['description']}); pass --allow-unsafe"
  exit 2
end

results = Hash.new { |h, k| h[k] = [] }
args[:reps].times do |rep|
  args[:workload].split(",").each do |w|
    m = w == "W3" ? latency(fresh) : throughput(fresh, w)
    warn "rep #{rep + 1} #{w}: #{m.map { |k, v| format('%s=%.3f', k, v) }.join(' ')}"
    m.each { |k, v| results["#{w} #{k}"] << v }
  end
end
median = lambda do |v|
  s = v.sort
  s.size.odd? ? s[s.size / 2] : (s[s.size / 2 - 1] + s[s.size / 2]) / 2.0
end
puts "# ruby handlers, #{args[:backend]}, medians of #{args[:reps]}#{dur['durable'] ? '' : ' -- NOT DURABLE'}"
puts "# conditions: #{conditions}"
results.sort.each { |k, v| puts format("%s %.3f [reps: %s]", k, median.call(v), v.map { |x| format('%.3f', x) }.join(", ")) }
