# frozen_string_literal: true

require "json"

module Tasker
  # What a block handler receives.
  #
  # +task_id+, +step_id+, +name+ (the step's), +handler+, +attempt+ (1 for the first),
  # +max_attempts+, +context+ (the task's context), +config+ (the step's +handler_config+),
  # +results+ (each dependency's name => its results; a batch worker's is the list of its
  # instances' results, in item order), +custom_events+ (the names this step may publish),
  # +batch+ and +batch_index+ (a fan-out instance's item and 0-based place; nil otherwise) and
  # +checkpoint+ (what an earlier attempt saved with +save_checkpoint+; nil at first). Hashes
  # have string keys, as JSON gives them.
  class Step
    attr_reader :task_id, :step_id, :name, :handler, :attempt, :max_attempts, :custom_events, :batch_index

    # +job+ is the Tasker::Native::Job the native driver hands out (core's HostJob).
    def initialize(job, core = nil)
      @task_id = job.task_id
      @step_id = job.step_id
      @attempt = job.attempt
      @name = job.step_name
      @handler = job.handler
      @max_attempts = job.max_attempts
      @context_json = job.context
      @results_json = job.results
      @config_json = job.config
      @custom_events = job.custom_events
      @batch_index = job.batch_index
      @job = job
      @core = core
    end

    # The JSON texts are parsed on first use: a handler that never reads its config does not
    # pay for it.
    def context
      @context ||= JSON.parse(@context_json)
    end

    def results
      @results ||= JSON.parse(@results_json)
    end

    def config
      @config ||= JSON.parse(@config_json)
    end

    def batch
      @batch ||= @job.batch && JSON.parse(@job.batch)
    end

    def checkpoint
      return @checkpoint if defined?(@checkpoint)

      @checkpoint = @job.checkpoint && JSON.parse(@job.checkpoint)
    end

    # Saves +value+ (JSON) as this step's checkpoint, durably, before returning: the next
    # attempt (a retry, a crashed worker's successor, an operator's retry) sees it as
    # +checkpoint+. Raises Tasker::ConflictError when this attempt no longer holds the step.
    def save_checkpoint(value)
      raise Tasker::Error, "this step is not running in a worker" unless @core

      text = Tasker::Json.text("checkpoint", value)
      @core.save_checkpoint(@job, text)
      @checkpoint = JSON.parse(text)
    end

    # Publishes a custom event the template declares (+custom_events+) to every subscriber
    # (+engine.on(name)+) at once. An undeclared name raises Tasker::ValidationError.
    def publish_custom_event(name, payload = nil)
      raise Tasker::Error, "this step is not running in a worker" unless @core

      @core.publish_custom_event(@job, name.to_s, Tasker::Json.text("custom event #{name}: payload", payload))
    end

    def inspect
      "#<Tasker::Step task_id=#{@task_id} name=#{@name.inspect} attempt=#{@attempt}/#{@max_attempts}>"
    end
  end

  # JSON conversions that refuse what JSON cannot hold instead of writing +to_s+ of it.
  module Json
    module_function

    # +value+ as JSON text; raises Tasker::ValidationError naming +what+ and the offending path.
    def text(what, value)
      problem = problem(value, "")
      raise ValidationError, "#{what} is not JSON: #{problem}" if problem

      JSON.generate(value)
    end

    # Why +value+ is not JSON (nil when it is). Hash keys may be strings or symbols; values
    # may be symbols (written as strings), as Rails code often returns them.
    def problem(value, path)
      case value
      when nil, true, false, String, Integer, Symbol then nil
      when Float then value.finite? ? nil : "#{at(path)} is #{value} (not a JSON number)"
      when Array
        value.each_with_index do |v, i|
          p = problem(v, "#{path}[#{i}]")
          return p if p
        end
        nil
      when Hash
        value.each do |k, v|
          return "#{at(path)} has a #{k.class} key #{k.inspect} (keys must be strings or symbols)" unless k.is_a?(String) || k.is_a?(Symbol)

          p = problem(v, "#{path}.#{k}")
          return p if p
        end
        nil
      else
        "#{at(path)} is a #{value.class}"
      end
    end

    def at(path)
      path.empty? ? "the value" : path.delete_prefix(".")
    end
  end

  # The stored failure of an exception, as the native driver reads it.
  module Failure
    module_function

    BACKTRACE_LINES = 50

    def of(error)
      return error.failure_json if error.respond_to?(:failure_json)

      case error
      when PermanentError
        detail = { "exception" => error.class.name, "context" => error.context }
        detail["error_code"] = error.error_code if error.error_code
        json("permanent", error.message, nil, detail)
      when RetryableError
        json("retryable", error.message, error.retry_after, { "exception" => error.class.name, "context" => error.context })
      else
        json("retryable", "#{error.class.name}: #{error.message}", nil,
             { "exception" => error.class.name, "backtrace" => (error.backtrace || []).first(BACKTRACE_LINES) })
      end
    end

    def json(kind, message, retry_after, detail)
      f = { "message" => message.to_s, "kind" => kind }
      f["retry_after_seconds"] = Float(retry_after) unless retry_after.nil?
      f["detail"] = Json.problem(detail, "").nil? ? detail : { "unconvertible" => detail.inspect }
      JSON.generate(f)
    end
  end
end
