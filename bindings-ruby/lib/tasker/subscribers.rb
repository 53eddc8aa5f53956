# frozen_string_literal: true

require "yaml"

module Tasker
  module Events
    module Subscribers
      # tasker-engine 1.0's subscriber base class:
      #
      #   class OrderNotificationSubscriber < Tasker::Events::Subscribers::BaseSubscriber
      #     subscribe_to "task.completed", "order.shipped"
      #     def handle_task_completed(event) = OrderMailer.done(event[:task_id]).deliver_later
      #     def handle_order_shipped(event) = Tracking.start(event[:payload]["order_id"])
      #   end
      #   OrderNotificationSubscriber.subscribe(Tasker.engine)
      #
      # An event reaches +handle_<name with . as _>+ as a Hash whose keys are strings and
      # symbols alike (+event[:task_id]+ and +event["task_id"]+), its +metadata+ keys also at
      # the top (+event[:error]+ of a +step.failed+); a subscriber for +*+ (from a YAML
      # subscription) gets events with no +handle_*+ method of their own in +handle_event+.
      # +subscribe_to :task_completed+ (the original's docs write it so) means +task.completed+.
      class BaseSubscriber
        class << self
          # Adds events this subscriber handles (accumulates; subclasses inherit).
          def subscribe_to(*events)
            @subscribed_events = (own_events + events.map(&:to_s)).uniq
          end

          def subscribed_events
            inherited = superclass.respond_to?(:subscribed_events) ? superclass.subscribed_events : []
            (inherited + own_events).uniq
          end

          # Only events whose name the block accepts are handled.
          def filter_events(&block)
            @event_filter = block
          end

          def event_filter
            @event_filter || (superclass.respond_to?(:event_filter) ? superclass.event_filter : nil)
          end

          # A new subscriber listening on +engine+ (default +Tasker.engine+).
          def subscribe(engine = Tasker.engine)
            new.tap { |s| s.subscribe_to_engine(engine) }
          end

          private

          def own_events
            @subscribed_events || []
          end
        end

        attr_reader :name, :config

        # +name+, +events+ and +config+ come from a YAML subscription; +events+ replaces the
        # class's +subscribe_to+ list when given.
        def initialize(name: nil, events: nil, config: {})
          @name = name
          @events = events&.map(&:to_s)
          @config = config || {}
        end

        # The events this instance handles.
        def events
          @events || self.class.subscribed_events
        end

        # Subscribes every event that has a handler method; returns the names subscribed. An
        # event without one is logged and skipped, as in the original.
        def subscribe_to_engine(engine)
          events.filter_map do |e|
            event = self.class.resolve_event_name(e)
            method = handler_method(event)
            unless method
              Tasker.logger.warn("#{self.class.name}: no #{self.class.handler_method_name(event)} for #{event}")
              next
            end
            engine.on(event) { |ev| dispatch(ev) if should_handle_event?(ev["name"]) }
            event
          end
        end

        # +:task_completed+ and +"task_completed"+ for +task.completed+; anything else as given.
        def self.resolve_event_name(event)
          name = event.to_s
          return name if name.include?(".") || name == "*"

          lifecycle = Tasker::Native.event_names.find { |n| n.tr(".", "_") == name }
          lifecycle || name
        end

        def self.handler_method_name(event)
          event == "*" ? :handle_event : :"handle_#{event.tr('.', '_')}"
        end

        protected

        # Instance-level filter (override in subclasses); the class's +filter_events+ first.
        def should_process_event?(_name)
          true
        end

        # The original's accessor: +key+ as a symbol or a string, else +default+.
        def safe_get(event, key, default = nil)
          return default if event.nil?

          event.fetch(key.to_sym) { event.fetch(key.to_s, default) }
        end

        private

        def handler_method(event)
          m = self.class.handler_method_name(event)
          return m if respond_to?(m, true)

          :handle_event if event == "*" && respond_to?(:handle_event, true)
        end

        def should_handle_event?(name)
          filter = self.class.event_filter
          return false if filter && !filter.call(name)

          should_process_event?(name)
        end

        def dispatch(raw)
          event = indifferent(raw)
          m = self.class.handler_method_name(raw["name"])
          respond_to?(m, true) ? send(m, event) : send(:handle_event, event)
        end

        def indifferent(raw)
          flat = raw.merge((raw["metadata"].is_a?(Hash) ? raw["metadata"] : {}).reject { |k, _| raw.key?(k) })
          flat.merge(flat.transform_keys(&:to_sym))
        end
      end
    end

    # YAML subscriptions (the original's +config/tasker/subscriptions/*.yml+):
    #
    #   subscriptions:
    #     slack_notifications:
    #       class: "SlackSubscriber"     # a BaseSubscriber subclass
    #       enabled: true
    #       events: ["task.completed", "task.failed"]
    #       config: {channel: "#ops"}
    module SubscriptionLoader
      module_function

      # Subscribes the enabled subscriptions of +paths+ (files, or directories of *.yml) on
      # +engine+; returns the subscriber instances. A class that cannot be found, or an event
      # this engine does not know, is logged and skipped (the original's files name some), so
      # one bad entry does not stop the app from booting.
      def load(engine, paths)
        files(paths).flat_map { |f| load_file(engine, f) }
      end

      def files(paths)
        Array(paths).flat_map do |p|
          File.directory?(p.to_s) ? Dir[File.join(p.to_s, "*.{yml,yaml}")].sort : [p.to_s]
        end
      end

      def load_file(engine, file)
        doc = YAML.safe_load(File.read(file)) || {}
        subs = doc["subscriptions"]
        raise Tasker::ValidationError, "#{file}: expected `subscriptions: <name>: {class, events, config}`" unless subs.is_a?(Hash)

        subs.filter_map { |name, spec| subscriber(engine, file, name, spec || {}) }
      end

      def subscriber(engine, file, name, spec)
        return nil if spec.fetch("enabled", true) == false

        klass = Object.const_get(spec["class"].to_s)
        events = Array(spec["events"]).map(&:to_s).select do |e|
          known = known?(e)
          Tasker.logger.warn("tasker: #{file}: subscription #{name}: #{known}, skipped") unless known == true
          known == true
        end
        klass.new(name: name, events: events, config: spec["config"] || {}).tap { |s| s.subscribe_to_engine(engine) }
      rescue NameError => e
        Tasker.logger.warn("tasker: #{file}: subscription #{name}: class #{spec['class'].inspect} not found (#{e.message}), skipped")
        nil
      end

      def known?(event)
        Tasker::Native.check_subscription(Subscribers::BaseSubscriber.resolve_event_name(event))
        true
      rescue Tasker::ValidationError => e
        e.message
      end
    end
  end
end
