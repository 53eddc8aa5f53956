# frozen_string_literal: true

# The Rails way to hear Tasker's lifecycle events: ActiveSupport::Notifications.
if (log = ENV["TASKER_EVENTS_LOG"])
  ActiveSupport::Notifications.subscribe(/\.tasker\z/) do |name, _start, _finish, _id, event|
    File.open(log, "a") { |f| f.puts "#{name} #{event['task_id']} #{event['step_name']}" }
  end
end
