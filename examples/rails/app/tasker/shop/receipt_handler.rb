# frozen_string_literal: true

module Shop
  class ReceiptHandler < Tasker::StepHandler::Base
    def process(_task, sequence, _step)
      { "receipt_for" => sequence.find_step_by_name("charge").results["charged"] }
    end
  end
end
