# frozen_string_literal: true

# No Bundler here (no RubyGems registry): Debian's railties, and the gem from this repository
# (TASKER_GEM_LIB, default ../../bindings-ruby/lib) unless TASKER_GEM=installed (then `require "tasker"`
# finds an installed gem).
unless ENV["TASKER_GEM"] == "installed"
  $LOAD_PATH.unshift(ENV["TASKER_GEM_LIB"] || File.expand_path("../../../bindings-ruby/lib", __dir__))
end
