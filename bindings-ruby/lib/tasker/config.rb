# frozen_string_literal: true

require "logger"

module Tasker
  class << self
    # Where the gem logs: worker start and stop (info), failed attempts (info when retryable
    # by design, warn otherwise), subscriber errors (error). Default: warnings and worse to
    # stderr; the Railtie sets Rails.logger.
    attr_writer :logger

    def logger
      @logger ||= Logger.new($stderr, level: Logger::WARN, formatter: proc { |sev, _t, _p, msg| "#{sev}: #{msg}\n" })
    end
  end
end
