# frozen_string_literal: true

# TASKER_TEST_BACKEND=sqlite (default: a file in a temporary directory) or postgres
# (DATABASE_URL, one fresh schema per test). scripts/test.sh runs the suite on both.
$LOAD_PATH.unshift File.expand_path("../lib", __dir__)
require "minitest/autorun"
require "securerandom"
require "tmpdir"
require "tasker"

# Worker start/stop and failed-step lines go to TASKER_TEST_LOG when set (quiet otherwise).
Tasker.logger = Logger.new(ENV.fetch("TASKER_TEST_LOG", File::NULL))

module TaskerTestHelper
  BACKEND = ENV.fetch("TASKER_TEST_BACKEND", "sqlite")

  def setup
    super
    @tmp = Dir.mktmpdir("tasker-rb")
  end

  def teardown
    FileUtils.rm_rf(@tmp) if @tmp
    super
  end

  # Keyword arguments for Tasker::Engine.new on a fresh database.
  def db
    @db ||= if BACKEND == "postgres"
              url = ENV["DATABASE_URL"] or raise "TASKER_TEST_BACKEND=postgres needs DATABASE_URL (scripts/test.sh starts a server)"
              { url: url, schema: "rb_#{SecureRandom.hex(6)}" }
            else
              { url: "sqlite://#{File.join(@tmp, 'tasker.db')}" }
            end
  end

  def engine
    @engine ||= new_engine
  end

  def new_engine(**extra)
    opts = db.merge(extra)
    Tasker::Engine.new(opts.delete(:url), **opts)
  end

  def step(task, name)
    task["steps"].find { |s| s["name"] == name } or flunk("no step #{name} in #{task.inspect}")
  end

  def postgres?
    BACKEND == "postgres"
  end
end
