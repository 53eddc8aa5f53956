// npm install ./bindings-node   (from the repository root; builds the native addon with cargo)
import { Engine } from 'tasker'

const engine = new Engine('sqlite://quickstart-node.db')
await engine.registerTemplate({ name: 'hello', steps: [{ name: 'greet' }, { name: 'shout', dependencies: ['greet'] }] })

engine.handler('greet', (step) => `hello ${step.context.who}`)
engine.handler('shout', async (step) => step.results.greet.toUpperCase() + '!')

const task = await engine.runUntilComplete(await engine.createTask('hello', { who: 'world' }))
console.log(task.steps[1].results)
