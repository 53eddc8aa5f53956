# frozen_string_literal: true

require "logger"

module Tasker
  class << self
    # Where the gem logs (worker start and stop, failed steps, subscriber errors). The Railtie
    # sets Rails.logger.
    attr_writer :logger

    def logger
      @logger ||= Logger.new($stderr, level: Logger::INFO, progname: "tasker")
    end
  end
end
