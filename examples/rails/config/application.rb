# frozen_string_literal: true

require_relative "boot"
require "rails"
require "action_controller/railtie"
require "tasker"

module ShopApp
  # A minimal Rails 6.1 app for the gem's Rails tests.
  class Application < Rails::Application
    config.load_defaults 6.1
    config.root = File.expand_path("..", __dir__)
    config.eager_load = false
    config.api_only = true
    config.secret_key_base = "not-a-secret"
    config.hosts.clear
    config.logger = ActiveSupport::Logger.new(ENV.fetch("RAILS_LOG", File.join(config.root, "log", "#{Rails.env}.log")))
    config.tasker.concurrency = 4
    config.tasker.schema = ENV["TASKER_SCHEMA"] if ENV["TASKER_SCHEMA"]
  end
end
