# frozen_string_literal: true

# A tasker-engine 1.0 subscriber class, subscribed by config/tasker/subscriptions/audit.yml.
class AuditSubscriber < Tasker::Events::Subscribers::BaseSubscriber
  def handle_task_completed(event)
    write("#{config['prefix']} #{event[:name]} #{event[:task_id]}")
  end

  def handle_shop_receipt_sent(event)
    write("#{config['prefix']} #{event[:name]} #{event[:payload]['amount']}")
  end

  private

  def write(line)
    log = ENV["TASKER_EVENTS_LOG"] or return
    File.open(log, "a") { |f| f.puts line }
  end
end
