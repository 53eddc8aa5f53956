# frozen_string_literal: true

require "json"

module Tasker
  # The engine on a database. It holds no orchestration rule: claims, retries, readiness,
  # leases, timeouts, batching and finalization are the Rust core's, whose host driver runs the
  # worker loop on threads of its own. This class runs your handlers on a pool of Ruby threads
  # and hands their outcomes back.
  class Engine
    TERMINAL = %w[complete error cancelled resolved_manually].freeze
    CREATE_OPTIONS = %i[namespace version idempotency_key initiator source_system reason tags bypass_steps priority
                        deadline_seconds].freeze

    # +url+: sqlite://PATH or postgres://USER@HOST:PORT/DB (default $TASKER_DATABASE_URL, else
    # sqlite://tasker.db). +environment+ picks a template's +environments:+ overrides.
    def initialize(url = nil, environment: nil, schema: nil, lease_seconds: nil, listen: nil, strict_templates: nil)
      opts = { url: url, environment: environment, schema: schema, lease_seconds: lease_seconds,
               listen: listen, strict_templates: strict_templates }.compact
      @core = Native::Core.open(JSON.generate(opts))
      @handlers = {}
      @subscribers = Hash.new { |h, k| h[k] = [] }
      @stop = nil
      @lock = Mutex.new
    end

    # Registers a template from YAML text, a file path or a Hash; returns its key
    # (+namespace.name@version+). Keys its format does not know are kept and passed to +warn+
    # (+strict_templates: true+ refuses them).
    def register_template(src)
      key, notes = @core.register_template(*template_source(src))
      notes.each { |note| warn "tasker: template #{key}: #{note}" }
      key
    end

    # [kind, text] of what #register_template was given.
    def template_source(src)
      case src
      when Hash then ["json", Json.text("template", src)]
      when String, Pathname
        text = src.to_s
        return ["yaml", text] if text.include?("\n") || !text.match?(/\.(ya?ml|json)\z/)
        raise TemplateError, "template file #{text}: No such file or directory" unless File.exist?(text)

        ["file", File.expand_path(text)]
      else
        raise ArgumentError, "register_template takes YAML text, a path or a Hash, not #{src.class}"
      end
    end
    private :template_source

    # Registers the handler +name+: a block taking a Tasker::Step, or a
    # Tasker::StepHandler::Base subclass. A template's +handler_class+ naming such a class
    # needs no registration: it is resolved with Object.const_get.
    def handler(name, klass = nil, &block)
      raise ArgumentError, "handler name must be a non-empty String" unless name.is_a?(String) && !name.empty?
      raise ArgumentError, "handler #{name}: give a block or a class, not both" if klass && block

      target = klass || block
      raise ArgumentError, "handler #{name}: give a block or a Tasker::StepHandler::Base subclass" unless target
      if target.is_a?(Class) && !(target <= StepHandler::Base)
        raise ArgumentError, "handler #{name}: #{target} does not derive from Tasker::StepHandler::Base"
      end

      @handlers[name] = target
      self
    end

    # Subscribes the block to a lifecycle event (+"step.completed"+), a declared custom event,
    # or +"*"+; it receives the event as a Hash with string keys.
    def on(event, &block)
      raise ArgumentError, "on(#{event.inspect}) needs a block" unless block

      Native.check_subscription(event.to_s)
      @subscribers[event.to_s] << block
      @core.subscribe
      self
    end

    # Creates a task; returns its id (the existing one for a repeated +idempotency_key+).
    def create_task(name, context = {}, **options)
      @core.create_task(Json.text("task #{name}: request", request(name, context, options)))
    end

    # Creates many tasks in one transaction: +[{name:, context:, **options}]+; returns the ids.
    def create_tasks(requests)
      reqs = requests.map do |r|
        r = r.transform_keys(&:to_sym)
        request(r.delete(:name), r.delete(:context) || {}, r)
      end
      @core.create_tasks(Json.text("task requests", reqs))
    end

    # Registers event definitions (the original's +config/tasker/events/*.yml+) from YAML
    # text, a file or a directory; returns the names registered. Stored: every process opened
    # afterwards knows them; any handler may publish a defined event, its payload checked.
    def register_events(src)
      text = src.to_s
      defs = if text.include?("\n") || text.lstrip.start_with?("events:")
               @core.register_events("yaml", text)
             else
               @core.register_events("path", File.expand_path(text))
             end
      JSON.parse(defs).map { |d| d["name"] }
    end

    # The stored event definitions (Hashes with name, key, description, payload_schema,
    # fired_by, source).
    def event_definitions
      JSON.parse(@core.event_definitions)
    end

    # Every event a subscriber may hear (Hashes with name, category, description,
    # payload_keys, emitted, note, fired_by, source): the engine's, the original's (emitted
    # false where they have no meaning here), the defined ones and those templates declare.
    def event_catalog
      JSON.parse(@core.event_catalog)
    end

    # The task with its steps, as a Hash.
    def get_task(id)
      JSON.parse(@core.get_task(Integer(id)))
    end

    # Tasks, newest first: +status:+, +name:+, +namespace:+, +limit:+ (100), +offset:+ (0).
    def list_tasks(status: nil, name: nil, namespace: nil, limit: nil, offset: nil)
      f = { status: status&.to_s, name: name, namespace: namespace, limit: limit, offset: offset }.compact
      JSON.parse(@core.list_tasks(JSON.generate(f)))
    end

    def cancel_task(id)
      @core.cancel_task(Integer(id))
      nil
    end

    def retry_step(id, step)
      @core.retry_step(Integer(id), step.to_s)
      nil
    end

    # Changes a task's +reason+ and/or +tags+ (not its state), as +PATCH /tasks/:id+.
    def update_task(id, reason: nil, tags: nil)
      @core.update_task(Integer(id), reason&.to_s, tags&.map(&:to_s))
      nil
    end

    # Cancels a step that has not run to the end, with the steps that depend on it.
    def cancel_step(id, step)
      @core.cancel_step(Integer(id), step.to_s)
      nil
    end

    # Gives a step another attempt limit (1..); an exhausted step given more runs again.
    def set_step_retry_limit(id, step, retry_limit)
      @core.set_step_retry_limit(Integer(id), step.to_s, Integer(retry_limit))
      nil
    end

    # The task's audit history, oldest first (Hashes with task_id, workflow_step_id,
    # step_name, from_state, to_state, metadata, sort_key, created_at).
    def transitions(id)
      JSON.parse(@core.transitions(Integer(id)))
    end

    # Figures for the tasks created in the last +window_seconds+.
    def analytics(window_seconds: 3600, namespace: nil, name: nil)
      JSON.parse(@core.analytics(Float(window_seconds), namespace&.to_s, name&.to_s))
    end

    def resolve_step_manually(id, step, results = nil)
      @core.resolve_step_manually(Integer(id), step.to_s, Json.text("results", results))
      nil
    end

    # Completes each step of the task waiting for signal +name+, with +payload+ as its results
    # (nil: the wait's own); returns how many. When none waits yet, the signal is kept and
    # taken by the first step of the task that waits for it.
    def signal(id, name, payload = nil)
      @core.signal(Integer(id), name.to_s, Json.text("payload", payload))
    end

    # Completes a waiting step (+Tasker::ConflictError+ naming its state when it is not).
    def complete_step(id, step, results = nil)
      @core.complete_step(Integer(id), step.to_s, Json.text("results", results))
      nil
    end

    # Fails a waiting step: for good with +permanent+, else its handler runs again.
    def fail_step(id, step, message, permanent: false)
      @core.fail_step(Integer(id), step.to_s, message.to_s, permanent ? true : false)
      nil
    end

    # Completes every step waiting with this correlation id; returns how many.
    def complete_correlated(correlation_id, results = nil)
      @core.complete_correlated(correlation_id.to_s, Json.text("results", results))
    end

    # Pauses a task: no new step of it starts until #resume_task; running steps finish.
    # Returns whether it changed (false when already paused).
    def pause_task(id) = flow_op("pause_task", task_id: id)
    # Resumes a paused task; returns whether it changed.
    def resume_task(id) = flow_op("resume_task", task_id: id)
    # Pauses every unfinished task of a template (any version); returns how many.
    def pause_template(name, namespace: "default") = flow_op("pause_template", name: name.to_s, namespace: namespace.to_s)
    # Resumes every paused task of a template; returns how many.
    def resume_template(name, namespace: "default") = flow_op("resume_template", name: name.to_s, namespace: namespace.to_s)
    # Puts +step+ and every step below it back to pending with fresh attempts (a complete,
    # resolved or failed task); returns how many steps.
    def rerun_from(id, step) = flow_op("rerun_from", task_id: id, step: step.to_s)
    # Retries every step out of attempts of a task in error; returns how many.
    def retry_task(id) = flow_op("retry_task", task_id: id)

    # Retries every failed task matching the filters (+since+: a Time, RFC 3339 text or an
    # age such as "24h"); returns how many tasks.
    def retry_tasks(status: "error", name: nil, namespace: nil, since: nil)
      flow_op("retry_tasks", status: status&.to_s, name: name&.to_s, namespace: namespace&.to_s, since: since_text(since))
    end

    # Cancels every unfinished task matching the filters; returns how many.
    def cancel_tasks(status: nil, name: nil, namespace: nil, since: nil)
      flow_op("cancel_tasks", status: status&.to_s, name: name&.to_s, namespace: namespace&.to_s, since: since_text(since))
    end

    # Removes tasks that ended more than +older_than+ ago (seconds or an age such as "30d")
    # in +statuses+ (complete, cancelled, resolved_manually unless given); returns how many.
    def prune(older_than, statuses: nil)
      flow_op("prune", older_than: older_than, statuses: statuses&.map(&:to_s))
    end

    # Creates a schedule: a task of +template+ at each tick of +cron+ (5 fields, or 6 with
    # seconds first) in +timezone+. +overlap+: "skip", "allow", "cancel_previous"; +catch_up+
    # after every process was down: "none", "latest", "all". Every worker process fires it.
    # Returns the schedule as a Hash (+"next_run_at"+, ...).
    def create_schedule(name, template, cron, context: nil, namespace: nil, version: nil,
                        timezone: "UTC", overlap: "skip", catch_up: "latest")
      spec = { name: name.to_s, template: template.to_s, cron: cron.to_s, context: context,
               namespace: namespace&.to_s, version: version&.to_s, timezone: timezone.to_s,
               overlap: overlap.to_s, catch_up: catch_up.to_s }
      schedule_op("create", Json.text("schedule", spec))
    end

    # Every schedule, by name, with its next run time.
    def list_schedules = schedule_op("list", "")
    def get_schedule(name) = schedule_op("get", name.to_s)
    # Its ticks make no task until resumed (and are not caught up).
    def pause_schedule(name) = schedule_op("pause", name.to_s)
    # Resumes from its next tick after now.
    def resume_schedule(name) = schedule_op("resume", name.to_s)

    # Deletes it (its tasks stay).
    def delete_schedule(name)
      schedule_op("delete", name.to_s)
      nil
    end

    # What the database says commits get: +{"description" => ..., "durable" => true/false}+.
    def durability
      description, durable = @core.durability
      { "description" => description, "durable" => durable }
    end

    # Waits until another process or run finishes the task; returns its snapshot. Raises
    # Tasker::TimeoutError after +timeout+ seconds.
    def wait_for_task(id, timeout: nil)
      deadline = timeout && now + timeout
      loop do
        left = deadline ? [1.0, deadline - now].min : 1.0
        raise TimeoutError, "task #{id} did not finish within #{timeout} s" if left <= 0

        return get_task(id) if TERMINAL.include?(@core.wait_for_task(Integer(id), left))
      end
    end

    # Runs this process's handlers until the task is finished; returns its snapshot.
    def run_until_complete(id, timeout: nil, concurrency: 8)
      run(concurrency: concurrency, mode: "until_task", task_id: Integer(id), timeout: timeout)
      get_task(id)
    end

    # Runs this process's handlers for every task: until nothing is left (+until_idle+), or until
    # #stop, Ctrl-C or SIGTERM. Then steps not started are handed back, and running ones get
    # +shutdown_grace+ seconds before they are reported as +worker_shutdown+.
    # Returns +{"completed" =>, "failed" =>, "stale" =>, "cycles" =>}+.
    def run_worker(concurrency: 8, until_idle: false, shutdown_grace: 30)
      run(concurrency: concurrency, mode: until_idle ? "until_idle" : "forever", shutdown_grace: shutdown_grace)
    end

    # Every registered template (each revision), as Hashes: namespace, name, version, revision,
    # current, description, steps (count), registered_at.
    def templates
      JSON.parse(@core.templates)
    end

    # Asks a running #run_worker to stop, as Ctrl-C does (safe from any thread or a trap).
    def stop
      @stop&.call
      nil
    end

    # The handler names this process runs: registered ones, and every template handler name
    # that resolves to a Tasker::StepHandler::Base subclass.
    def handler_names
      names = @handlers.keys
      @core.handler_names.each do |n|
        names << n if !names.include?(n) && handler_class(n)
      end
      names
    end

    private

    def schedule_op(op, arg)
      JSON.parse(@core.schedule_op(op, arg))
    end

    def flow_op(op, **args)
      JSON.parse(@core.flow_op(op, JSON.generate(args.compact)))
    end

    # A Time (or Date, DateTime) as RFC 3339 in UTC; text as given.
    def since_text(since)
      return since if since.nil? || since.is_a?(String)

      time = since.is_a?(Time) ? since : since.to_time
      time.getutc.strftime("%Y-%m-%dT%H:%M:%S.%LZ")
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def request(name, context, options)
      raise ValidationError, "create_task: the template name must be a String, got #{name.inspect}" unless name.is_a?(String) || name.is_a?(Symbol)

      unknown = options.keys - CREATE_OPTIONS
      raise ValidationError, "create_task: unknown option #{unknown.first} (known: #{CREATE_OPTIONS.join(', ')})" unless unknown.empty?

      req = { "name" => name.to_s, "context" => context.nil? ? {} : context }
      options.each { |k, v| req[k.to_s] = v unless v.nil? }
      req
    end

    def handler_class(name)
      return nil unless name.match?(/\A(::)?[A-Z]\w*(::[A-Z]\w*)*\z/)

      k = Object.const_get(name)
      k.is_a?(Class) && k <= StepHandler::Base ? k : nil
    rescue NameError
      nil
    end

    def run(concurrency:, mode:, task_id: nil, timeout: nil, shutdown_grace: 30)
      raise ValidationError, "concurrency must be an Integer >= 1, got #{concurrency.inspect}" unless concurrency.is_a?(Integer) && concurrency >= 1

      names = handler_names
      driver = @core.start_driver(names, concurrency, mode, task_id, Float(shutdown_grace))
      Tasker.logger.info("tasker: worker started (#{mode}, concurrency #{concurrency}, Ruby handlers: #{names.join(', ')})") if mode != "until_task"
      queue = Thread::Queue.new
      pool = Array.new(concurrency) do |i|
        Thread.new do
          Thread.current.name = "tasker-handler-#{i}"
          Thread.current.report_on_exception = false
          while (job = queue.pop)
            run_job(driver, job)
          end
        end
      end
      stopping = false
      stop = lambda do
        stopping = true
        driver.shutdown
      end
      @lock.synchronize { @stop = stop }
      deadline = timeout && now + timeout
      timed_out = false
      interrupts = 0
      begin
        loop do
          jobs, done = driver.next(50)
          jobs.each { |j| queue << j }
          dispatch_events
          break if done

          if deadline && !stopping && now >= deadline
            timed_out = true
            stop.call
          end
        rescue Interrupt, SignalException => e
          # The first Ctrl-C or SIGTERM stops gracefully; a second one (or another signal) raises.
          interrupts += 1
          raise if interrupts > 1 || !(e.is_a?(Interrupt) || %w[SIGTERM SIGINT].include?(e.message))

          stop.call
        end
        stats = driver.join
        dispatch_events
      ensure
        @lock.synchronize { @stop = nil }
        queue.close
        pool.each { |t| t.join(stopping ? 0 : nil) }
      end
      raise TimeoutError, "task #{task_id} did not finish within #{timeout} s" if timed_out

      stats = %w[completed failed stale cycles].zip(stats).to_h
      Tasker.logger.info("tasker: worker stopped (#{stats.map { |k, v| "#{k} #{v}" }.join(', ')})") if mode != "until_task"
      stats
    end

    def run_job(driver, job)
      k = job.key
      driver.started(*k)
      begin
        value = call_handler(job)
      rescue Exception => e # rubocop:disable Lint/RescueException -- a handler must never take the worker down
        driver.finished(*k, false, Failure.of(e))
        Tasker.logger.public_send(e.is_a?(RetryableError) ? :info : :warn,
                                  "tasker: step #{job.step_name} of task #{job.task_id} (attempt #{job.attempt}/#{job.max_attempts}) failed: #{e.class}: #{e.message}")
        raise if e.is_a?(NoMemoryError)

        return
      end
      value = value.to_tasker_json if [Decision, Batches, ChildTask, Wait, Reschedule].any? { |k| value.is_a?(k) }
      problem = Json.problem(value, "")
      if problem
        driver.finished_not_json(*k, "#{job.step_name} returned a value that is not JSON: #{problem}")
      else
        driver.finished(*k, true, JSON.generate(value))
      end
    end

    def call_handler(job)
      step = Step.new(job, @core)
      target = @handlers[step.handler] || handler_class(step.handler)
      raise PermanentError, "no handler named #{step.handler} in this process" unless target

      if target.is_a?(Class)
        target.new(config: step.config).tasker_call(step)
      else
        target.call(step)
      end
    end

    def dispatch_events
      return if @subscribers.empty?

      @core.drain_events.each do |raw|
        ev = JSON.parse(raw)
        (@subscribers.fetch(ev["name"], []) + @subscribers.fetch("*", [])).each do |fn|
          fn.call(ev)
        rescue StandardError => e
          Tasker.logger.error("tasker: an event subscriber of #{ev['name']} raised #{e.class}: #{e.message}")
        end
      end
    end
  end
end
