# frozen_string_literal: true

# The Railtie in a minimal Rails 6.1 app (examples/rails, Debian's railties, no Bundler): it
# boots, a controller creates a task, `bin/rails tasker:worker` runs the autoloaded handler
# classes, a Notifications subscriber sees the events, and the generators make a workflow whose
# generated test passes.
require_relative "test_helper"
require "open3"

class RailsTest < Minitest::Test
  include TaskerTestHelper

  APP = File.expand_path("../../examples/rails", __dir__)
  LIB = File.expand_path("../lib", __dir__)

  def setup
    super
    begin
      require "rails"
    rescue LoadError
      skip "Rails is not installed (apt-get install ruby-railties; scripts/test.sh does)"
    end
    @app = File.join(@tmp, "app")
    FileUtils.cp_r(APP, @app)
    Dir[File.join(@app, "{db,log}/*.{sqlite3,log}*")].each { |f| File.delete(f) }
  end

  def env
    # DATABASE_URL would make PostgreSQL the app's primary database (and Tasker's default):
    # each case says which database it wants.
    e = { "RAILS_ENV" => "test", "TASKER_GEM_LIB" => LIB, "TASKER_EVENTS_LOG" => File.join(@tmp, "events.log"),
          "DATABASE_URL" => nil, "TASKER_DATABASE_URL" => nil, "TASKER_SCHEMA" => nil }
    e.merge!("TASKER_DATABASE_URL" => db[:url], "TASKER_SCHEMA" => db[:schema]) if postgres?
    e
  end

  def rails(*args)
    out, err, st = Open3.capture3(env, RbConfig.ruby, "bin/rails", *args, chdir: @app)
    assert st.success?, "bin/rails #{args.join(' ')} failed:\n#{out}\n#{err}"
    out
  end

  def runner(code)
    rails("runner", code).lines.last.to_s
  end

  def test_a_controller_creates_a_task_and_the_rake_worker_runs_autoloaded_handler_classes
    created = JSON.parse(runner(<<~RUBY))
      require "rack/mock"
      r = Rack::MockRequest.new(Rails.application).post("/orders", input: JSON.generate(amount: 5), "CONTENT_TYPE" => "application/json")
      bad = Rack::MockRequest.new(Rails.application).post("/orders", input: JSON.generate(amount: 0), "CONTENT_TYPE" => "application/json")
      puts JSON.generate(status: r.status, body: JSON.parse(r.body), bad: bad.status, bad_body: JSON.parse(bad.body))
    RUBY
    assert_equal 201, created["status"]
    assert_equal 422, created["bad"]
    assert_match %r{/amount: 0 is less than the minimum of 1}, created["bad_body"]["error"]
    id = created["body"]["task_id"]

    out = rails("tasker:worker", "UNTIL_IDLE=1")
    assert_match(/worker stopped: completed 2, failed 0/, out)

    task = JSON.parse(runner("puts JSON.generate(Tasker.engine.get_task(#{id}))"))
    assert_equal "complete", task["status"]
    # charge ran Shop::ChargeHandler (autoloaded from app/tasker) with the template's `test`
    # environment override (fee 0, not 1).
    assert_equal({ "charged" => 5, "env" => "test" }, step(task, "charge")["results"])
    assert_equal({ "receipt_for" => 5 }, step(task, "receipt")["results"])

    events = File.readlines(File.join(@tmp, "events.log"), chomp: true)
    assert_includes events, "step.completed.tasker #{id} charge"
    assert_includes events, "step.completed.tasker #{id} receipt"
    assert_includes events, "task.completed.tasker #{id} "
    # The receipt handler published an event of config/tasker/events/shop.yml, registered at boot.
    assert_includes events, "shop.receipt_sent.tasker #{id} receipt"
    defined = JSON.parse(runner('puts JSON.generate(Tasker.engine.event_definitions.map { |d| [d["name"], d["fired_by"]] })'))
    assert_equal [["shop.receipt_sent", ["Shop::ReceiptHandler"]]], defined
    # AuditSubscriber (app/subscribers), subscribed by config/tasker/subscriptions/audit.yml.
    assert_includes events, "audit task.completed #{id}"
    assert_includes events, "audit shop.receipt_sent 5"
    log = File.read(File.join(@app, "log/test.log"))
    assert_match(/tasker: worker started \(until_idle, concurrency 4, Ruby handlers: Shop::ChargeHandler, Shop::ReceiptHandler\)/, log)

    assert_match(/shop\.checkout@1\.0\.0\s+rev 1\s+2 steps/, rails("tasker:templates"))
    assert_match(/database ready/, rails("tasker:migrate"))
    where = runner("puts Tasker::Railtie.database_url.inspect")
    assert_includes where, postgres? ? db[:schema] : "db/tasker_test.sqlite3"
  end

  def test_on_an_app_whose_database_is_postgresql_tasker_uses_it_in_a_schema_of_its_own
    skip "needs PostgreSQL" unless postgres?
    e = env.merge("TASKER_DATABASE_URL" => nil, "TASKER_SCHEMA" => nil, "DATABASE_URL" => db[:url])
    out, err, st = Open3.capture3(e, RbConfig.ruby, "bin/rails", "runner", "puts Tasker::Railtie.database_url.inspect; puts Tasker.engine.templates.size", chdir: @app)
    assert st.success?, err
    assert_equal [[db[:url], "tasker"].inspect], out.lines.first(1).map(&:chomp)
    assert_operator Integer(out.lines.last), :>=, 1
  end

  def test_the_generators_make_a_workflow_whose_generated_test_passes
    rails("generate", "tasker:install")
    assert File.exist?(File.join(@app, "config/initializers/tasker.rb"))
    assert File.directory?(File.join(@app, "app/tasker"))
    rails("generate", "tasker:task_handler", "shipping")
    %w[config/tasker/tasks/shipping.yaml app/tasker/shipping/fetch_handler.rb app/tasker/shipping/process_handler.rb test/tasker/shipping_test.rb].each do |f|
      assert File.exist?(File.join(@app, f)), f
    end
    out, err, st = Open3.capture3(env, RbConfig.ruby, "-Itest", "test/tasker/shipping_test.rb", chdir: @app)
    assert st.success?, "#{out}\n#{err}"
    assert_match(/1 runs, 2 assertions, 0 failures, 0 errors/, out)
    # The new template is registered at boot next to the existing one.
    assert_match(/default\.shipping@0\.1\.0/, rails("tasker:templates"))
  end

  def test_the_app_runs_on_the_packed_gem_installed_with_gem_install_and_on_a_bundler_path_gem
    skip "backend-independent: runs in the SQLite pass" if postgres?
    gem_home = File.join(@tmp, "gems")
    pkg = File.join(@tmp, "pkg")
    out, err, st = Open3.capture3({ "TASKER_GEM_PKG" => pkg }, "rake", "gem", chdir: File.expand_path("..", __dir__))
    assert st.success?, "rake gem: #{out}#{err}"
    gem = Dir[File.join(pkg, "tasker-*.gem")].first or flunk("no gem in #{pkg}: #{out}")
    out, err, st = Open3.capture3({ "GEM_HOME" => gem_home }, "gem", "install", "--local", "--no-document", gem)
    assert st.success?, "gem install: #{out}#{err}"
    installed = env.merge("TASKER_GEM" => "installed", "GEM_HOME" => gem_home, "GEM_PATH" => "#{gem_home}:#{Gem.path.join(':')}")
    out, err, st = Open3.capture3(installed, RbConfig.ruby, "bin/rails", "runner", 'puts $LOADED_FEATURES.grep(/tasker\.so/).first; puts Tasker.engine.templates.size', chdir: @app)
    assert st.success?, err
    assert_includes out, "#{gem_home}/gems/tasker-", "the installed gem's extension is loaded"

    bundle = ENV["PATH"].split(":").map { |d| File.join(d, "bundle") }.find { |f| File.executable?(f) }
    skip "bundler is not installed (apt-get install ruby-bundler; scripts/test.sh does)" unless bundle
    File.write(File.join(@app, "Gemfile"), <<~GEMFILE)
      source "https://rubygems.org" # not reached: every gem is installed (Debian) or a path
      gem "railties", "~> 6.1"
      gem "tasker", path: #{File.expand_path("..", __dir__).inspect}
    GEMFILE
    benv = env.merge("TASKER_GEM" => "installed", "BUNDLE_GEMFILE" => File.join(@app, "Gemfile"))
    out, err, st = Open3.capture3(benv, bundle, "lock", "--local", chdir: @app)
    assert st.success?, "bundle lock --local: #{out}#{err}"
    out, err, st = Open3.capture3(benv, bundle, "exec", RbConfig.ruby, "bin/rails", "runner",
                                  'puts Gem.loaded_specs["tasker"].full_gem_path; puts Tasker.engine.templates.size', chdir: @app)
    assert st.success?, "bundle exec: #{out}#{err}"
    assert_equal File.expand_path("..", __dir__), out.lines.first.chomp
  end
end
