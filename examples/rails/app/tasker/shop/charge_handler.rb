# frozen_string_literal: true

module Shop
  # Autoloaded by Zeitwerk from app/tasker/.
  class ChargeHandler < Tasker::StepHandler::Base
    def process(task, _sequence, _step)
      { "charged" => task.context["amount"] + config["fee"], "env" => Rails.env }
    end
  end
end
