# frozen_string_literal: true

# W1 (20,000 independent no-op jobs, enqueued in batches of 1,000, then drained by one worker
# process at concurrency 10) on Sidekiq 6.4 (Debian's ruby-sidekiq) and redis-server, the peer
# Rails users know. Measured like bench.rb: from the first job's start to the last job's end.
#
#   ruby bindings-ruby/bench/sidekiq_w1.rb [--reps 3] [--fsync always|everysec|no]
#
# --fsync always runs Redis with appendonly yes + appendfsync always (every write fsynced, the
# durability Tasker's figures have); everysec is Redis' AOF default; no is Redis' out-of-the-box
# default (RDB snapshots only: a crash loses recent jobs). Each job records its completion with
# one INCR (the no-op's "result"); the job that makes the count reach 20,000 records the end.
require "fileutils"
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=) # quiet the redis gem 4.8 deprecation Sidekiq 6.4 triggers
require "socket"
require "tmpdir"

N = 20_000
reps = 3
fsync = "always"
args = ARGV.dup
until args.empty?
  case (k = args.shift)
  when "--reps" then reps = Integer(args.shift)
  when "--fsync" then fsync = args.shift
  else abort "unknown argument #{k}"
  end
end
abort "--fsync always|everysec|no" unless %w[always everysec no].include?(fsync)

WORKER = <<~RUBY
  require "sidekiq"
  class NoopJob
    include Sidekiq::Worker
    def perform(i)
      Sidekiq.redis do |r|
        now = Process.clock_gettime(Process::CLOCK_REALTIME)
        r.set("w1:first", now, nx: true)
        r.set("w1:last", now) if r.incr("w1:done") == #{N}
      end
    end
  end
RUBY

def free_port
  s = TCPServer.new("127.0.0.1", 0)
  s.addr[1].tap { s.close }
end

def run_once(fsync)
  dir = Dir.mktmpdir("sidekiq-w1")
  port = free_port
  aof = fsync == "no" ? %w[--appendonly no] : ["--appendonly", "yes", "--appendfsync", fsync]
  redis_pid = Process.spawn("redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--dir", dir, "--save", "", *aof, out: File::NULL)
  url = "redis://127.0.0.1:#{port}/0"
  redis = Redis.new(url: url)
  50.times { break if (redis.ping rescue nil); sleep 0.05 } # rubocop:disable Style/RescueModifier
  File.write(File.join(dir, "worker.rb"), WORKER)
  require "sidekiq"
  Sidekiq.configure_client { |c| c.redis = { url: url } }
  (0...N).step(1000) { |i| Sidekiq::Client.push_bulk("class" => "NoopJob", "args" => (i...i + 1000).map { |j| [j] }) }
  sk = Process.spawn({ "REDIS_URL" => url }, "sidekiq", "-r", File.join(dir, "worker.rb"), "-c", "10", "-q", "default", out: File::NULL, err: File::NULL)
  deadline = Time.now + 300
  sleep 0.05 until redis.get("w1:last") || Time.now > deadline
  first = Float(redis.get("w1:first"))
  last = Float(redis.get("w1:last") || raise("timed out: #{redis.get('w1:done')} of #{N} done"))
  N / (last - first)
ensure
  Process.kill("TERM", sk) if sk
  Process.wait(sk) if sk
  Process.kill("TERM", redis_pid) if redis_pid
  Process.wait(redis_pid) if redis_pid
  FileUtils.rm_rf(dir) if dir
end

conditions = { "always" => "Redis appendonly yes, appendfsync always (every write fsynced)",
               "everysec" => "Redis appendonly yes, appendfsync everysec (fsync once a second)",
               "no" => "Redis defaults: no AOF, no RDB saves (nothing fsynced)" }[fsync]
version = `redis-server --version`[/v=(\S+)/, 1]
warn "# conditions: Sidekiq 6.4.1, redis-server #{version}, #{conditions}; sidekiq -c 10, one process; #{RUBY_DESCRIPTION}"
runs = Array.new(reps) do |i|
  r = run_once(fsync)
  warn format("rep %d W1: steps_per_s=%.1f", i + 1, r)
  r
end
s = runs.sort
median = s.size.odd? ? s[s.size / 2] : (s[s.size / 2 - 1] + s[s.size / 2]) / 2.0
puts "# sidekiq W1, #{conditions}, medians of #{reps}"
puts format("W1 steps_per_s %.3f [reps: %s]", median, runs.map { |x| format('%.1f', x) }.join(", "))
