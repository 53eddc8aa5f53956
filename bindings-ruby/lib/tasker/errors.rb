# frozen_string_literal: true

module Tasker
  # Base class of every error the engine raises.
  class Error < StandardError; end
  # A template is malformed (the message names the field and the step).
  class TemplateError < Error; end
  # A request is invalid: unknown template, a context that breaks its schema, bad arguments.
  class ValidationError < Error; end
  # No such task, step or template.
  class NotFoundError < Error; end
  # The action conflicts with the task's state (retrying a complete step, ...).
  class ConflictError < Error; end
  # The database is unreachable or failed.
  class DatabaseError < Error; end
  # A wait ran out of time.
  class TimeoutError < Error; end

  # Raise from a handler to fail this attempt; it is retried while attempts remain, after
  # +retry_after+ seconds when given (else the step's backoff). +context+ is stored with the error.
  class RetryableError < StandardError
    attr_reader :retry_after, :context

    def initialize(message = nil, retry_after: nil, context: {})
      super(message)
      @retry_after = retry_after
      @context = context || {}
    end
  end

  # Raise from a handler to fail the step for good: it is never retried. +error_code+ and
  # +context+ are stored with the error.
  class PermanentError < StandardError
    attr_reader :error_code, :context

    def initialize(message = nil, error_code: nil, context: {})
      super(message)
      @error_code = error_code
      @context = context || {}
    end
  end
end
