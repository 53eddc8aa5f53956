# frozen_string_literal: true

require "rails/generators"

module Tasker
  module Generators
    # rails generate tasker:install — an initializer and the directories templates and handler
    # classes live in.
    class InstallGenerator < Rails::Generators::Base
      source_root File.expand_path("templates", __dir__)
      desc "Adds config/initializers/tasker.rb, config/tasker/tasks/ and app/tasker/"

      def initializer
        template "initializer.rb.tt", "config/initializers/tasker.rb"
      end

      def directories
        create_file "config/tasker/tasks/.keep", ""
        create_file "app/tasker/.keep", ""
      end

      def next_steps
        say "Tasker installed. Add a workflow with `bin/rails generate tasker:task_handler NAME`, run workers with `bin/rails tasker:worker`."
      end
    end
  end
end
