# frozen_string_literal: true

require "rails/generators"

module Tasker
  module Generators
    # rails generate tasker:task_handler NAME — a YAML template, a handler class and a test.
    class TaskHandlerGenerator < Rails::Generators::NamedBase
      source_root File.expand_path("templates", __dir__)
      desc "Adds config/tasker/tasks/NAME.yaml, app/tasker/NAME/ handler classes and a test"

      def template_file
        template "task.yaml.tt", "config/tasker/tasks/#{file_name}.yaml"
      end

      def handler_classes
        template "handler.rb.tt", "app/tasker/#{file_name}/fetch_handler.rb", step: "fetch"
        template "handler.rb.tt", "app/tasker/#{file_name}/process_handler.rb", step: "process"
      end

      def test_file
        template "handler_test.rb.tt", "test/tasker/#{file_name}_test.rb"
      end

      private

      def module_name
        file_name.camelize
      end
    end
  end
end
