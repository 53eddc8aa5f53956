import tasker

engine = tasker.Engine("sqlite://quickstart.db")
engine.register_template({"name": "hello", "steps": [{"name": "greet"}, {"name": "shout", "dependencies": ["greet"]}]})

@engine.handler("greet")
def greet(step):
    return f"hello {step.context['who']}"

@engine.handler("shout")
async def shout(step):
    return step.results["greet"].upper() + "!"

print(engine.run_until_complete(engine.create_task("hello", {"who": "world"}))["steps"][1]["results"])
