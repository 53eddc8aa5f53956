// A TypeScript example: types for templates, handlers, steps and snapshots come with the
// package. `npx tsc --noEmit -p examples/node` type-checks it (scripts/test.sh does).
import { Engine, RetryableError, PermanentError, TaskerError, type Step, type TaskSnapshot } from 'tasker'

interface Cart { items: { sku: string, price: number, qty: number }[] }

const engine = new Engine(process.env.TASKER_DATABASE_URL ?? 'sqlite://orders-node.db')

async function main (): Promise<TaskSnapshot> {
  await engine.registerTemplate(`
name: order
step_templates:
  - {name: price_cart}
  - {name: charge, depends_on_step: price_cart, default_retry_limit: 3}
`)
  engine.handler('price_cart', (step: Step) => {
    const cart = step.context.cart as unknown as Cart
    return { total: cart.items.reduce((n, i) => n + i.price * i.qty, 0) }
  })
  engine.handler('charge', async (step: Step) => {
    const { total } = step.results.price_cart as { total: number }
    if (total <= 0) throw new PermanentError('nothing to charge')
    if (step.attempt === 1) throw new RetryableError('gateway busy', { retryAfter: 0.1 })
    return { charged: total, attempt: step.attempt }
  })
  const id: number = await engine.createTask('order', { cart: { items: [{ sku: 'a', price: 2.5, qty: 4 }] } }, { reason: 'example' })
  return engine.runUntilComplete(id, { timeout: 30 })
}

main().then(
  (t) => console.log(t.status, t.steps.map((s) => [s.name, s.status, s.attempts])),
  (e: unknown) => { console.error(e instanceof TaskerError ? `tasker: ${e.message}` : e); process.exit(1) }
)
