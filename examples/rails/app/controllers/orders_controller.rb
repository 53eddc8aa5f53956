# frozen_string_literal: true

class OrdersController < ActionController::API
  rescue_from Tasker::ValidationError do |e|
    render json: { error: e.message }, status: :unprocessable_entity
  end

  def create
    id = Tasker.engine.create_task("checkout", { "amount" => params.require(:amount) }, namespace: "shop")
    render json: { task_id: id }, status: :created
  end

  def show
    render json: Tasker.engine.get_task(params[:id])
  end
end
