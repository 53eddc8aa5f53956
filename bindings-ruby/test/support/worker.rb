# frozen_string_literal: true

# A worker process for processes_test.rb:
#   ruby worker.rb DB_JSON LOG SLEEP_MS MODE(forever|idle) [LEASE_SECONDS]
# Runs the handler "slow", which logs "start"/"end" lines with its pid and sleeps SLEEP_MS.
$LOAD_PATH.unshift File.expand_path("../../lib", __dir__)
require "json"
require "tasker"

db = JSON.parse(ARGV[0])
log = ARGV[1]
sleep_s = Integer(ARGV[2]) / 1000.0
mode = ARGV[3]
lease = Float(ARGV[4] || 30)
engine = Tasker::Engine.new(db["url"], schema: db["schema"], lease_seconds: lease)
engine.handler("slow") do |s|
  File.open(log, "a") { |f| f.puts "start #{s.task_id} #{s.attempt} #{Process.pid}" }
  sleep sleep_s
  File.open(log, "a") { |f| f.puts "end #{s.task_id} #{s.attempt} #{Process.pid}" }
  { "pid" => Process.pid }
end
$stdout.sync = true
puts "ready"
stats = engine.run_worker(concurrency: 2, until_idle: mode == "idle", shutdown_grace: 0.5)
puts "stopped cleanly #{JSON.generate(stats)}"
