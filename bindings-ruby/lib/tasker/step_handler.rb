# frozen_string_literal: true

require "json"
require "uri"

module Tasker
  # The handler classes of tasker-engine 1.0, kept so existing handlers run unchanged: a template
  # step whose +handler_class+ names a subclass of Base (resolved with Object.const_get, so
  # Rails autoloading works) runs +process(task, sequence, step)+ in a Ruby worker.
  module StepHandler
    # The task as +process+ sees it.
    class TaskView
      attr_reader :task_id, :name, :namespace, :version, :context

      def initialize(step)
        @task_id = step.task_id
        @name = nil
        @context = step.context
      end

      alias id task_id
    end

    # A step as +process+ sees it: the running one (+results+ may be assigned) or a dependency.
    class StepView
      attr_reader :workflow_step_id, :name, :attempts, :retry_limit, :results

      def initialize(name:, results:, workflow_step_id: nil, attempts: nil, retry_limit: nil)
        @name = name
        @results = results
        @workflow_step_id = workflow_step_id
        @attempts = attempts
        @retry_limit = retry_limit
        @results_set = false
      end

      alias id workflow_step_id

      def results=(value)
        @results_set = true
        @results = value
      end

      # Whether +results=+ was called.
      def results_set?
        @results_set
      end
    end

    # The step's dependencies, as +process+ sees them.
    class SequenceView
      attr_reader :steps

      def initialize(steps)
        @steps = steps
      end

      # The dependency named +name+, or nil (only the step's own dependencies are visible).
      def find_step_by_name(name)
        @steps.find { |s| s.name == name.to_s }
      end
    end

    # Derive from this and define +process(task, sequence, step)+; its return value becomes the
    # step's results unless +process+ assigned +step.results+ itself. A raised exception fails
    # the attempt (Tasker::PermanentError for good, anything else retryable).
    class Base
      attr_reader :config

      def initialize(config: nil)
        @config = config
      end

      def process(_task, _sequence, _step)
        raise NotImplementedError, "#{self.class.name} must define process(task, sequence, step)"
      end

      # Called with what +process+ returned; by default it becomes the results unless +process+
      # assigned +step.results+.
      def process_results(step, process_output, _initial_results)
        step.results = process_output unless step.results_set?
      end

      # Publishes a custom event the template declares for this step, or one an event
      # definition file defines (its payload checked against the payload_schema).
      def publish_custom_event(name, payload = {})
        raise Tasker::Error, "publish_custom_event is only available while process runs" unless @tasker_step

        @tasker_step.publish_custom_event(name, payload)
      end

      # Runs the handler for a claimed +Tasker::Step+ and returns the results (internal; the
      # engine calls it).
      def tasker_call(step)
        @tasker_step = step
        task = TaskView.new(step)
        sequence = SequenceView.new(step.results.map { |n, r| StepView.new(name: n, results: r) })
        view = StepView.new(name: step.name, results: nil, workflow_step_id: step.step_id,
                            attempts: step.attempt - 1, retry_limit: step.max_attempts)
        tasker_handle(task, sequence, view)
        view.results
      ensure
        @tasker_step = nil
      end

      private

      def tasker_handle(task, sequence, step)
        initial = step.results
        output = process(task, sequence, step)
        process_results(step, output, initial)
      end
    end

    # An HTTP call: +process+ returns the response of +connection.get/post/...+ (a Faraday
    # response, this gem's own response, or a Hash +{status:, headers:, body:}+), which is
    # classified by core's rule for the built-in +http+ handler: 2xx succeeds with the parsed
    # body as results; 429 and 503 are retried after Retry-After; 400, 401, 403, 404 and 422 fail
    # for good; anything else is retried.
    class Api < Base
      # Raised (internally) for a response core classified as a failure.
      class ResponseFailure < StandardError
        attr_reader :failure_json

        def initialize(failure_json)
          @failure_json = failure_json
          super(JSON.parse(failure_json)["message"])
        end
      end

      # The connection to +handler_config.url+ with its +params+, +headers+ and +ssl+:
      # Faraday when it is installed, else Tasker::HttpConnection (Net::HTTP).
      def connection
        @connection ||= Tasker::HttpConnection.build(api_config)
      end

      def process_results(step, _response, _initial_results)
        step.results = @tasker_response_results unless step.results_set?
      end

      private

      def api_config
        cfg = config.is_a?(Hash) ? config : {}
        url = cfg["url"] || cfg[:url]
        raise Tasker::PermanentError.new("#{self.class.name}: handler_config.url is required", error_code: "CONFIG") if url.to_s.empty?

        begin
          uri = URI.parse(url.to_s)
          raise URI::InvalidURIError, "not http(s)" unless %w[http https].include?(uri.scheme) && uri.host
        rescue URI::InvalidURIError => e
          raise Tasker::PermanentError.new("#{self.class.name}: handler_config.url #{url.inspect} is not a valid URL (#{e.message})", error_code: "CONFIG")
        end
        {
          url: url.to_s,
          params: cfg["params"] || cfg[:params] || {},
          headers: { "Content-Type" => "application/json", "Accept" => "application/json" }.merge(cfg["headers"] || cfg[:headers] || {}),
          ssl: cfg["ssl"] || cfg[:ssl]
        }
      end

      def tasker_handle(task, sequence, step)
        initial = step.results
        response = process(task, sequence, step)
        status, retry_after, body = Tasker::HttpConnection.parts(response)
        what = "#{self.class.name} (#{api_config[:url]})"
        ok, payload = Tasker::Native.classify_http(what, status, retry_after, body)
        raise ResponseFailure, with_code(payload, status) unless ok

        @tasker_response_results = JSON.parse(payload)
        process_results(step, response, initial)
      end

      def with_code(failure_json, status)
        f = JSON.parse(failure_json)
        f["detail"] = { "response_status" => status, "exception" => self.class.name }
        f["detail"]["error_code"] = "HTTP_#{status}" if f["kind"] == "permanent"
        JSON.generate(f)
      end
    end
  end
end
