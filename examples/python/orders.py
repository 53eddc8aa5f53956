"""A ten-line Tasker workflow in Python: run with `python examples/python/orders.py`."""
import tasker

engine = tasker.Engine("sqlite://orders-example.db")
engine.register_template("""
name: order
step_templates:
  - {name: validate}
  - {name: charge, depends_on_step: validate}
  - {name: ship, depends_on_step: charge}
""")

@engine.handler("validate")
def validate(step):
    return {"total": sum(i["price"] for i in step.context["items"])}

@engine.handler("charge")
async def charge(step):                      # async handlers work too
    if step.attempt == 1:
        raise tasker.RetryableError("gateway timeout", retry_after=0.1)
    return {"charged": step.results["validate"]["total"]}

@engine.handler("ship")
def ship(step):
    return {"shipped": True, "charged": step.results["charge"]["charged"]}

task = engine.run_until_complete(engine.create_task("order", {"items": [{"price": 12.5}, {"price": 3}]}))
print(task["status"], [(s["name"], s["status"], s["attempts"]) for s in task["steps"]])
