# frozen_string_literal: true

module Tasker
  # The one shape core reads in every language (core/src/protocol.rs): +{key => value}+, with
  # +"results"+ when given.
  def self.shape_json(key, value, results)
    out = { key => value }
    out["results"] = results unless results.nil?
    out
  end

  # Return from the handler of a +type: decision+ step (a block, a class with +call+, or a
  # +StepHandler::Base#process+): +steps+ names which of the steps that depend on it directly are
  # created (none is allowed); +results+ are its own results, which its children see. A name
  # outside its children fails the step permanently, naming the allowed ones.
  #
  #   Tasker::Decision.new(amount < 1000 ? "auto_approve" : "finance_review", results: { amount: amount })
  class Decision
    attr_reader :steps, :results

    def initialize(steps, results: nil)
      @steps = steps.is_a?(String) || steps.is_a?(Symbol) ? [steps.to_s] : Array(steps).map(&:to_s)
      @results = results
    end

    def to_tasker_json
      Tasker.shape_json("$decision", steps, results)
    end

    def inspect
      "#<Tasker::Decision #{steps.inspect} results=#{results.inspect}>"
    end
  end

  # Return from the handler of a +type: batchable+ step: each of its +batch_worker+ children
  # runs once per item (any JSON value), seen as +step.batch+; +results+ are its own results. No
  # items: no instance.
  #
  #   Tasker::Batches.new((0...rows).step(200).map { |s| { start: s, end: [s + 200, rows].min } })
  class Batches
    attr_reader :items, :results

    def initialize(items, results: nil)
      @items = Array(items)
      @results = results
    end

    def to_tasker_json
      Tasker.shape_json("$batches", items, results)
    end

    def inspect
      "#<Tasker::Batches #{items.size} items results=#{results.inspect}>"
    end
  end

  # Return from a handler to run another task for this step: the engine creates it (its
  # snapshot has +parent_task_id+ and +parent_step+) and the step is +waiting+ until it
  # finishes. Child complete: the step completes with +{"task_id" => ID, "status" => "complete",
  # "results" => {step name => results}}+; child in error or cancelled: the step fails
  # permanently with the child's error. Cancelling the parent task cancels the child.
  #
  #   Tasker::ChildTask.new("payment", context: { amount: 42 }, namespace: "billing")
  class ChildTask
    attr_reader :name, :context, :namespace, :version

    def initialize(name, context: {}, namespace: nil, version: nil)
      @name = name.to_s
      @context = context
      @namespace = namespace&.to_s
      @version = version&.to_s
    end

    def to_tasker_json
      spec = { "name" => name }
      spec["context"] = context unless context.nil?
      spec["namespace"] = namespace unless namespace.nil?
      spec["version"] = version unless version.nil?
      { "$child_task" => spec }
    end

    def inspect
      "#<Tasker::ChildTask #{name.inspect} context=#{context.inspect} namespace=#{namespace.inspect} version=#{version.inspect}>"
    end
  end

  # Return from a handler to leave the step +waiting+ until something outside ends it:
  # +engine.signal(task_id, signal, payload)+, +engine.complete_correlated(correlation_id,
  # results)+, +engine.complete_step+ / +engine.fail_step+, or +timeout+ seconds passing (a
  # retryable failure: the handler runs again). +results+ show while it waits.
  #
  #   Tasker::Wait.new(signal: "approved", timeout: 86_400)
  class Wait
    attr_reader :signal, :correlation_id, :timeout, :results

    def initialize(signal: nil, correlation_id: nil, timeout: nil, results: nil)
      @signal = signal&.to_s
      @correlation_id = correlation_id&.to_s
      @timeout = timeout
      @results = results
    end

    def to_tasker_json
      spec = { "signal" => signal, "correlation_id" => correlation_id, "timeout" => timeout, "results" => results }
      { "$wait" => spec.compact }
    end

    def inspect
      "#<Tasker::Wait signal=#{signal.inspect} correlation_id=#{correlation_id.inspect} timeout=#{timeout.inspect}>"
    end
  end

  # Return from a handler to run the step again after +after+ seconds without counting an
  # attempt (polling an outside job); the step's +max_reschedules+ bounds how often.
  class Reschedule
    attr_reader :after

    def initialize(after:)
      @after = after
    end

    def to_tasker_json
      { "$reschedule" => { "after" => after } }
    end

    def inspect
      "#<Tasker::Reschedule after=#{after.inspect}>"
    end
  end
end
