# frozen_string_literal: true

# Tasker: workflow orchestration with a Rust core. See README.md ("Ruby").
require "pathname"
require_relative "tasker/version"
require_relative "tasker/errors"
require_relative "tasker/outcomes"
require_relative "tasker/config"
require_relative "tasker/tasker" # the native half (tasker.so, built by `rake build`)
require_relative "tasker/step"
require_relative "tasker/http_connection"
require_relative "tasker/step_handler"
require_relative "tasker/engine"
require_relative "tasker/subscribers"
require_relative "tasker/railtie" if defined?(Rails::Railtie)
