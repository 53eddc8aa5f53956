# frozen_string_literal: true

require "rails/railtie"

module Tasker
  class << self
    # The application's engine (Rails): opened on first use with +config.tasker+, the templates
    # of +config.tasker.templates_path+ registered, lifecycle events published through
    # ActiveSupport::Notifications as +<event>.tasker+. A forked child (Puma, Spring) opens its
    # own.
    def engine
      return @engine if @engine && @engine_pid == Process.pid

      @engine_lock ||= Mutex.new
      @engine_lock.synchronize do
        return @engine if @engine && @engine_pid == Process.pid

        @engine = Railtie.open_engine
        @engine_pid = Process.pid
        @engine
      end
    end
  end

  # Makes the gem native to a Rails app; see README.md ("Rails").
  class Railtie < Rails::Railtie
    config.tasker = ActiveSupport::OrderedOptions.new
    config.tasker.database_url = nil     # default: see Railtie.database_url
    config.tasker.schema = nil           # default "tasker" on the app's PostgreSQL database
    config.tasker.concurrency = 8
    config.tasker.environment = nil      # default Rails.env
    config.tasker.templates_path = "config/tasker/tasks"
    config.tasker.register_templates_at_boot = true
    # Event definition files (the original's +custom_events_directories+): each a directory of
    # *.yml / *.yaml files, or one file; registered with the templates.
    config.tasker.custom_events_directories = ["config/tasker/events"]
    # YAML subscriptions (the original's config/tasker/subscriptions/*.yml), subscribed at boot.
    config.tasker.subscriptions_path = "config/tasker/subscriptions"

    initializer "tasker.logger" do
      ActiveSupport.on_load(:after_initialize) { Tasker.logger = Rails.logger if Rails.logger }
    end

    config.after_initialize do |app|
      if app.config.tasker.register_templates_at_boot && (Railtie.template_files.any? || Railtie.event_paths.any?)
        Tasker.engine
      end
    end

    rake_tasks do
      load File.expand_path("tasks/tasker.rake", __dir__)
    end

    generators do
      require_relative "../generators/tasker/install/install_generator"
      require_relative "../generators/tasker/task_handler/task_handler_generator"
    end

    class << self
      def settings
        Rails.application.config.tasker
      end

      # +config.tasker.database_url+, else TASKER_DATABASE_URL, else the app's primary database
      # when it is PostgreSQL (Tasker's tables in the schema +tasker+), else
      # db/tasker_<env>.sqlite3.
      def database_url
        return [settings.database_url, settings.schema] if settings.database_url.present?
        return [ENV["TASKER_DATABASE_URL"], settings.schema] if ENV["TASKER_DATABASE_URL"].present?

        pg = primary_postgres_url
        return [pg, settings.schema || "tasker"] if pg

        ["sqlite://#{Rails.root.join("db", "tasker_#{Rails.env}.sqlite3")}", settings.schema]
      end

      def primary_postgres_url
        url = ENV["DATABASE_URL"]
        return url if url.to_s.match?(%r{\Apostgres(ql)?://})

        cfg = Rails.application.config.database_configuration[Rails.env] rescue nil # rubocop:disable Style/RescueModifier -- no database.yml is fine
        cfg = cfg["primary"] if cfg.is_a?(Hash) && cfg["primary"].is_a?(Hash)
        return nil unless cfg.is_a?(Hash)
        return cfg["url"] if cfg["url"].to_s.match?(%r{\Apostgres(ql)?://})
        return nil unless %w[postgresql postgres postgis].include?(cfg["adapter"].to_s)

        auth = cfg["username"] ? "#{ERB::Util.url_encode(cfg['username'])}#{cfg['password'] ? ":#{ERB::Util.url_encode(cfg['password'].to_s)}" : ''}@" : ""
        "postgres://#{auth}#{cfg['host'] || 'localhost'}:#{cfg['port'] || 5432}/#{cfg['database']}"
      end

      def template_files
        dir = Rails.root.join(settings.templates_path.to_s)
        Dir[dir.join("*.{yml,yaml}").to_s].sort
      end

      # The existing entries of +config.tasker.custom_events_directories+.
      def event_paths
        Array(settings.custom_events_directories).map { |d| Rails.root.join(d.to_s).to_s }.select { |p| File.exist?(p) }
      end

      def open_engine
        url, schema = database_url
        engine = Tasker::Engine.new(url, schema: schema, environment: (settings.environment || Rails.env).to_s)
        event_paths.each { |p| engine.register_events(p) }
        template_files.each { |f| engine.register_template(f) }
        engine.on("*") do |event|
          ActiveSupport::Notifications.instrument("#{event['name']}.tasker", event)
        end
        subscriptions = Rails.root.join(settings.subscriptions_path.to_s)
        Tasker::Events::SubscriptionLoader.load(engine, subscriptions.to_s) if subscriptions.exist?
        engine
      end
    end
  end
end
