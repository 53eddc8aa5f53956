# frozen_string_literal: true

require_relative "lib/tasker/version"

# A precompiled ("platform") gem: `rake build` compiles the native half with cargo and copies it
# to lib/tasker/tasker.so; `rake gem` packs it. (A source gem would need the rb_sys gem and
# rake-compiler from rubygems.org, which this project does not assume.)
Gem::Specification.new do |spec|
  spec.name = "tasker"
  spec.version = Tasker::VERSION
  spec.summary = "Workflow orchestration with a Rust core: DAGs of steps, retries, many workers on one PostgreSQL"
  spec.description = "Ruby handlers (blocks or tasker-engine 1.0 handler classes) for the Tasker engine, with a Railtie."
  spec.authors = ["Tasker contributors"]
  spec.license = "MIT"
  spec.homepage = "https://example.invalid/tasker"
  spec.required_ruby_version = ">= 3.0"
  spec.platform = Gem::Platform.local
  spec.files = Dir["lib/**/*.{rb,rake,tt,yml}"] + Dir["lib/tasker/tasker.so"] + ["README.md"]
  spec.require_paths = ["lib"]
  spec.metadata["rubygems_mfa_required"] = "true"
end
