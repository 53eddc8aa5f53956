# frozen_string_literal: true

namespace :tasker do
  desc "Run a Tasker worker for this app's handlers (CONCURRENCY=n, UNTIL_IDLE=1 to stop when nothing is left)"
  task worker: :environment do
    concurrency = Integer(ENV.fetch("CONCURRENCY", Rails.application.config.tasker.concurrency))
    until_idle = %w[1 true yes].include?(ENV["UNTIL_IDLE"].to_s.downcase)
    stats = Tasker.engine.run_worker(concurrency: concurrency, until_idle: until_idle)
    puts "tasker: worker stopped: #{stats.map { |k, v| "#{k} #{v}" }.join(', ')}"
  end

  desc "Create or upgrade Tasker's tables (they are also migrated whenever the engine opens)"
  task migrate: :environment do
    url, schema = Tasker::Railtie.database_url
    Tasker.engine
    puts "tasker: database ready at #{url.sub(%r{//[^@/]*@}, '//')}#{schema ? " (schema #{schema})" : ''}"
  end

  desc "List the registered templates"
  task templates: :environment do
    rows = Tasker.engine.templates
    puts "no templates registered (put them in #{Rails.application.config.tasker.templates_path})" if rows.empty?
    rows.each do |t|
      puts format("%-40s rev %-3d %s steps%s", "#{t['namespace']}.#{t['name']}@#{t['version']}", t["revision"], t["steps"], t["current"] ? "" : " (superseded)")
    end
  end
end
