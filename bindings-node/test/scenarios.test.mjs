// The Python package's scenarios, in JavaScript, on the backend under test.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {
  Engine, RetryableError, PermanentError, TaskerError, TemplateError, ValidationError,
  NotFoundError, ConflictError, TimeoutError, Decision, Batches, ChildTask, Wait, Reschedule
} from 'tasker'
import { freshDb, freshEngine, step } from './helpers.mjs'

const DIAMOND = `
name: diamond
step_templates:
  - {name: a, handler_class: sum}
  - {name: b, handler_class: sum, depends_on_step: a}
  - {name: c, handler_class: sum, depends_on_step: a}
  - {name: d, handler_class: sum, depends_on_steps: [b, c]}
`
const sum = (s) => ({ v: 1 + (Object.keys(s.results).length ? Object.values(s.results).reduce((n, r) => n + r.v, 0) : s.context.seed) })

test('a diamond with sync handlers computes checkable values', async () => {
  const engine = freshEngine()
  assert.equal(await engine.registerTemplate(DIAMOND), 'default.diamond@0.1.0')
  engine.handler('sum', sum)
  const t = await engine.runUntilComplete(await engine.createTask('diamond', { seed: 1 }), { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.deepEqual(step(t, 'd').results, { v: 7 })
})

test('async and sync handlers mix; promises resolve on the JS thread', async () => {
  const engine = freshEngine()
  await engine.registerTemplate(DIAMOND)
  engine.handler('sum', async (s) => { await new Promise((r) => setTimeout(r, 5)); return sum(s) })
  const t = await engine.runUntilComplete(await engine.createTask('diamond', { seed: 10 }), { timeout: 30 })
  assert.deepEqual(step(t, 'd').results, { v: 25 })
})

test('a flaky step retries honouring retryAfter, then succeeds', async () => {
  const engine = freshEngine()
  await engine.registerTemplate({ name: 'flaky', steps: [{ name: 'f', retry: { max_attempts: 3 } }] })
  const seen = []
  engine.handler('f', (s) => { seen.push(s.attempt); if (s.attempt < 3) throw new RetryableError(`try ${s.attempt}`, { retryAfter: 0.05 }); return 'ok' })
  const t = await engine.runUntilComplete(await engine.createTask('flaky'), { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.deepEqual(seen, [1, 2, 3])
})

test('a permanent error is never retried and blocks the task', async () => {
  const engine = freshEngine()
  await engine.registerTemplate({ name: 'perm', steps: [{ name: 'p' }, { name: 'after', dependencies: ['p'] }] })
  let calls = 0
  engine.handler('p', () => { calls++; throw new PermanentError('card declined') })
  engine.handler('after', () => 'never')
  const t = await engine.runUntilComplete(await engine.createTask('perm'), { timeout: 30 })
  assert.equal(t.status, 'error')
  assert.equal(calls, 1)
  assert.deepEqual([step(t, 'p').error.kind, step(t, 'p').error.message], ['permanent', 'card declined'])
  assert.equal(step(t, 'after').status, 'pending')
})

test('a thrown error or a rejected promise keeps its class, message and stack', async () => {
  const engine = freshEngine()
  await engine.registerTemplate({ name: 'boom', steps: [{ name: 's', retry: { max_attempts: 1 } }, { name: 'r', retry: { max_attempts: 1 } }] })
  engine.handler('s', () => { throw new TypeError('bad input') })
  engine.handler('r', async () => { throw new RangeError('out of range') })
  const t = await engine.runUntilComplete(await engine.createTask('boom'), { timeout: 30 })
  const s = step(t, 's').error
  assert.equal(s.message, 'TypeError: bad input')
  assert.equal(s.detail.exception, 'TypeError')
  assert.match(s.detail.stack, /TypeError: bad input\n\s+at /)
  assert.equal(step(t, 'r').error.detail.exception, 'RangeError')
})

test('a result that is not JSON fails the step with a clear message; the process survives', async () => {
  const engine = freshEngine()
  await engine.registerTemplate({ name: 'nj', steps: ['big', 'cycle', 'fn'].map((n) => ({ name: n, retry: { max_attempts: 1 } })) })
  engine.handler('big', () => ({ n: 10n }))
  engine.handler('cycle', () => { const o = {}; o.self = o; return o })
  engine.handler('fn', () => () => 1)
  const t = await engine.runUntilComplete(await engine.createTask('nj'), { timeout: 30 })
  for (const n of ['big', 'cycle', 'fn']) {
    const e = step(t, n).error
    assert.equal(e.kind, 'permanent', n)
    assert.match(e.message, /the handler returned a value that is not JSON/, n)
  }
  assert.match(step(t, 'big').error.message, /BigInt/)
  assert.match(step(t, 'cycle').error.message, /circular/)
})

test('cancel, retry and resolve; errors are TaskerError subclasses', async () => {
  const engine = freshEngine()
  await engine.registerTemplate({ name: 'ops', steps: [{ name: 'x', retry: { max_attempts: 1 } }, { name: 'y', dependencies: ['x'] }] })
  engine.handler('x', () => { throw new Error('down') })
  engine.handler('y', (s) => ({ saw: s.results.x }))
  const id = await engine.createTask('ops')
  assert.equal((await engine.runUntilComplete(id, { timeout: 30 })).status, 'error')
  await assert.rejects(engine.retryStep(id, 'y'), (e) => e instanceof ConflictError && e instanceof TaskerError)
  await assert.rejects(engine.retryStep(id, 'nope'), NotFoundError)
  await assert.rejects(engine.getTask(999999), NotFoundError)
  await engine.resolveStepManually(id, 'x', { fixed: true })
  const t = await engine.runUntilComplete(id, { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.deepEqual(step(t, 'y').results, { saw: { fixed: true } })
  const id2 = await engine.createTask('ops')
  await engine.cancelTask(id2)
  assert.equal((await engine.getTask(id2)).status, 'cancelled')
  await assert.rejects(engine.cancelTask(id2), ConflictError)
  const listed = await engine.listTasks({ status: 'cancelled' })
  assert.deepEqual(listed.map((t) => t.id), [id2])
})

test('idempotency keys, bypassed steps, schema violations, bad templates', async () => {
  const engine = freshEngine()
  await engine.registerTemplate(`
name: order
schema: {type: object, required: [n], properties: {n: {type: integer}, when: {type: string, format: date}, mode: {type: string, default: fast}}}
step_templates:
  - {name: gift, skippable: true}
  - {name: pay}
`)
  const a = await engine.createTask('order', { n: 1 }, { idempotencyKey: 'k1', bypassSteps: ['gift'], tags: ['x'] })
  assert.equal(await engine.createTask('order', { n: 2 }, { idempotencyKey: 'k1' }), a)
  const t = await engine.getTask(a)
  assert.equal(step(t, 'gift').status, 'resolved_manually')
  assert.equal(t.context.mode, 'fast', 'schema defaults are filled in')
  await assert.rejects(engine.createTask('order', { n: 'one', when: 'soon' }), (e) => e instanceof ValidationError && /\/n/.test(e.message) && /\/when/.test(e.message))
  await assert.rejects(engine.createTask('order', {}, { nope: 1 }), /unknown option nope/)
  await assert.rejects(engine.registerTemplate('name: bad\nstep_templates:\n  - {name: a, depends_on_step: zz}\n'), (e) => e instanceof TemplateError && /unknown step "zz"/.test(e.message))
  await assert.rejects(engine.registerTemplate('name: [unclosed'), TemplateError)
  await assert.rejects(engine.registerTemplate('/no/such/file.yaml'), /No such file/)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-node-tpl-'))
  fs.writeFileSync(path.join(dir, 't.yaml'), 'name: f\nstep_templates:\n  - {name: y}\n')
  assert.equal(await engine.registerTemplate(path.join(dir, 't.yaml')), 'default.f@0.1.0')
})

test('built-in command steps run beside JS handlers', async () => {
  const engine = freshEngine()
  await engine.registerTemplate(`
name: mixed
step_templates:
  - {name: sh, handler_class: command, handler_config: {command: "printf '{\\"from\\": \\"sh\\"}'"}}
  - {name: js, depends_on_step: sh}
`)
  engine.handler('js', (s) => ({ got: s.results.sh }))
  const t = await engine.runUntilComplete(await engine.createTask('mixed'), { timeout: 30 })
  assert.deepEqual(step(t, 'js').results, { got: { from: 'sh' } })
})

test('events reach subscribers once per transition; custom events too', async () => {
  const engine = freshEngine()
  await engine.registerTemplate(`
name: ev
custom_events: [{name: order.shipped}]
step_templates:
  - {name: ship}
`)
  const seen = []
  const shipped = []
  engine.on('*', (e) => seen.push(e.name))
  engine.on('order.shipped', (e) => shipped.push(e.metadata.payload))
  assert.throws(() => engine.on('step.exploded', () => {}), /unknown event/)
  engine.handler('ship', (s) => {
    s.publishCustomEvent('order.shipped', { carrier: 'ups' })
    assert.throws(() => s.publishCustomEvent('order.lost'), (e) => e instanceof ValidationError && /declares only order.shipped/.test(e.message))
    return 1
  })
  await engine.runUntilComplete(await engine.createTask('ev'), { timeout: 30 })
  assert.deepEqual(shipped, [{ carrier: 'ups' }])
  for (const n of ['task.initialize_requested', 'step.execution_requested', 'step.completed', 'task.completed']) {
    assert.equal(seen.filter((x) => x === n).length, 1, n)
  }
})

test('runUntilComplete times out with TimeoutError', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: stuck\nstep_templates:\n  - {name: nobody_handles_this}\n')
  await assert.rejects(engine.runUntilComplete(await engine.createTask('stuck'), { timeout: 0.3 }), TimeoutError)
})

test('createTasks, waitForTask while a worker runs, and an AbortSignal stops it', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: job\nstep_templates:\n  - {name: noop}\n')
  engine.handler('noop', (s) => ({ i: s.context.i }))
  const ids = await engine.createTasks(Array.from({ length: 30 }, (_, i) => ({ name: 'job', context: { i } })))
  const ac = new AbortController()
  const worker = engine.runWorker({ concurrency: 4, signal: ac.signal })
  for (const [i, id] of ids.entries()) assert.deepEqual(step(await engine.waitForTask(id, { timeout: 30 }), 'noop').results, { i })
  ac.abort()
  await worker
  await assert.rejects(engine.waitForTask(await engine.createTask('job', { i: 99 }), { timeout: 0.3 }), TimeoutError)
})

test('a timeout counts from the handler start', async () => {
  const engine = freshEngine()
  await engine.registerTemplate({ name: 'slow', steps: [{ name: 's', timeout_seconds: 0.2, retry: { max_attempts: 1 } }] })
  engine.handler('s', () => new Promise((resolve) => setTimeout(() => resolve('late'), 1000)))
  const t = await engine.runUntilComplete(await engine.createTask('slow'), { timeout: 30 })
  assert.equal(step(t, 's').error.kind, 'timeout')
})

test('unknown template keys are emitted as warnings, plain event names are heard as written', async () => {
  const engine = freshEngine()
  const warnings = []
  const onWarning = (w) => { if (w.name === 'TemplateWarning') warnings.push(w.message) }
  process.on('warning', onWarning)
  const key = await engine.registerTemplate(`
# A top-level key the original ignores, and a plain custom event name.
name: monitored
owner: data-team
custom_events: [{name: data_extraction_started}]
step_templates:
  - {name: extract}
`)
  await new Promise((resolve) => setImmediate(resolve))
  process.off('warning', onWarning)
  assert.equal(key, 'default.monitored@0.1.0')
  assert.deepEqual(warnings, ['template default.monitored@0.1.0: unknown key `owner`: kept (compat.unknown_keys), no effect here'])
  const heard = []
  engine.on('data_extraction_started', (e) => heard.push(e.metadata.payload))
  engine.handler('extract', (s) => { s.publishCustomEvent('data_extraction_started', { rows: 3 }); return {} })
  const t = await engine.runUntilComplete(await engine.createTask('monitored'), { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.deepEqual(heard, [{ rows: 3 }])

  const db = freshDb()
  const strict = new Engine(db.url, { ...db.options, strictTemplates: true })
  await assert.rejects(strict.registerTemplate('name: s\nowner: x\nstep_templates:\n  - {name: a}\n'),
    (e) => e instanceof TemplateError && /unknown key `owner`.*strict templates are on/.test(e.message))
})

test('event definition files let any handler publish a defined event, its payload checked', async () => {
  const engine = freshEngine()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-events-'))
  fs.writeFileSync(path.join(dir, 'orders.yml'), `
events:
  custom:
    order_shipped:
      constant: "order.shipped"
      payload_schema:
        order_id: { type: "String", required: true }
      fired_by: ["ShippingService"]
`)
  assert.deepEqual(await engine.registerEvents(dir), ['order.shipped'])
  assert.deepEqual((await engine.eventDefinitions()).map((d) => [d.name, d.fired_by]), [['order.shipped', ['ShippingService']]])
  await engine.registerTemplate('name: ship\nstep_templates:\n  - {name: ship}\n')
  const heard = []
  engine.on('order.shipped', (e) => heard.push(e.metadata.payload))
  engine.handler('ship', (s) => {
    assert.throws(() => s.publishCustomEvent('order.shipped', { order_id: 7 }), (e) => e instanceof ValidationError && /\/order_id: 7 is not String/.test(e.message))
    s.publishCustomEvent('order.shipped', { order_id: 'o-1' })
    return {}
  })
  const t = await engine.runUntilComplete(await engine.createTask('ship'), { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.deepEqual(heard, [{ order_id: 'o-1' }])
  const catalog = new Map((await engine.eventCatalog()).map((e) => [e.name, e]))
  assert.deepEqual(catalog.get('order.shipped').fired_by, ['ShippingService'])
  assert.equal(catalog.get('workflow.task_completed').emitted, true)
  assert.equal(catalog.get('workflow.no_viable_steps').emitted, false)
  await assert.rejects(engine.registerEvents('events:\n  custom:\n    x: {constant: shipped}\n'),
    (e) => e instanceof ValidationError && /events\.custom\.x\.constant/.test(e.message))
})

test('the operator calls REST has: retry limit, update, cancel a step, transitions, analytics', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: ops\nstep_templates:\n  - {name: a, default_retry_limit: 1}\n  - {name: b, depends_on_step: a}\n  - {name: c}\n')
  const calls = []
  engine.handler('a', (s) => {
    calls.push(s.attempt)
    if (calls.length === 1) throw new RetryableError('flaky')
    return { ok: true }
  })
  engine.handler('b', () => 1)
  engine.handler('c', () => 1)
  const id = await engine.createTask('ops')
  assert.equal((await engine.runUntilComplete(id, { timeout: 30 })).status, 'error')
  await engine.setStepRetryLimit(id, 'a', 3)
  assert.equal((await engine.runUntilComplete(id, { timeout: 30 })).status, 'complete')
  assert.deepEqual(calls, [1, 2])
  await engine.updateTask(id, { reason: 'audited', tags: ['ops'] })
  const t = await engine.getTask(id)
  assert.deepEqual([t.reason, t.tags], ['audited', ['ops']])
  const aStates = (await engine.transitions(id)).filter((h) => h.step_name === 'a').map((h) => h.to_state)
  assert.ok(aStates.includes('error') && aStates.at(-1) === 'complete', String(aStates))
  const id2 = await engine.createTask('ops')
  await engine.cancelStep(id2, 'b')
  const done = await engine.runUntilComplete(id2, { timeout: 30 })
  assert.deepEqual(Object.fromEntries(done.steps.map((s) => [s.name, s.status])), { a: 'complete', b: 'cancelled', c: 'complete' })
  assert.equal((await engine.analytics({ windowSeconds: 3600 })).tasks_created, 2)
  await assert.rejects(engine.transitions(999999), (e) => e instanceof NotFoundError)
  await assert.rejects(engine.setStepRetryLimit(id, 'a', 0), (e) => e instanceof ValidationError && /retry_limit/.test(e.message))
})

test('a decision creates only the branch it chose; a name outside its children fails it', async () => {
  const engine = freshEngine()
  await engine.registerTemplate(`
name: approval
steps:
  - {name: route, type: decision}
  - {name: auto_approve, dependencies: [route]}
  - {name: finance_review, dependencies: [route]}
  - {name: finalize, type: deferred_convergence, dependencies: [auto_approve, finance_review]}
`)
  let target = null
  engine.handler('route', async (s) => target ?? new Decision([s.context.amount < 1000 ? 'auto_approve' : 'finance_review'], { results: { amount: s.context.amount } }))
  engine.handler('auto_approve', (s) => ({ by: 'auto', amount: s.results.route.amount }))
  engine.handler('finance_review', () => ({ by: 'finance' }))
  engine.handler('finalize', (s) => Object.keys(s.results).sort())
  let t = await engine.runUntilComplete(await engine.createTask('approval', { amount: 5000 }), { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.deepEqual(t.steps.map((x) => x.name).sort(), ['finalize', 'finance_review', 'route'])
  assert.deepEqual(step(t, 'finalize').results, ['finance_review'])

  target = new Decision('nowhere')
  t = await engine.runUntilComplete(await engine.createTask('approval', { amount: 1 }), { timeout: 30 })
  assert.equal(t.status, 'error')
  const err = step(t, 'route').error
  assert.equal(err.kind, 'permanent')
  assert.match(err.message, /"nowhere"/)
  assert.match(err.message, /auto_approve, finance_review/)
})

test('a waiting step ends by signal, by correlation id, or from outside', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: approve\nsteps:\n  - {name: ask}\n  - {name: act, dependencies: [ask]}\n')
  engine.handler('ask', (s) => new Wait({ signal: s.context.signal ?? null, correlationId: s.context.corr ?? null, results: { asked: true } }))
  engine.handler('act', (s) => ({ saw: s.results.ask }))
  const id = await engine.createTask('approve', { signal: 'approved' })
  await engine.runWorker({ untilIdle: true })
  let t = await engine.getTask(id)
  assert.equal(step(t, 'ask').status, 'waiting')
  assert.deepEqual(step(t, 'ask').waiting_for, { signal: 'approved' })
  assert.equal(await engine.signal(id, 'approved', { by: 'ops' }), 1)
  t = await engine.runUntilComplete(id, { timeout: 30 })
  assert.deepEqual(step(t, 'act').results, { saw: { by: 'ops' } })

  const early = await engine.createTask('approve', { signal: 'go' })
  assert.equal(await engine.signal(early, 'go', 7), 0)
  assert.equal(step(await engine.runUntilComplete(early, { timeout: 30 }), 'ask').results, 7)

  const corr = await engine.createTask('approve', { corr: 'order-7' })
  const outside = await engine.createTask('approve', {})
  await engine.runWorker({ untilIdle: true })
  assert.equal(await engine.completeCorrelated('order-7', { paid: true }), 1)
  assert.equal((await engine.runUntilComplete(corr, { timeout: 30 })).status, 'complete')
  await assert.rejects(engine.completeStep(await engine.createTask('approve', {}), 'ask'), (e) => e instanceof ConflictError && /pending/.test(e.message))
  await assert.rejects(engine.completeStep(outside, 'nope'), NotFoundError)
  await engine.failStep(outside, 'ask', 'rejected', { permanent: true })
  t = await engine.getTask(outside)
  assert.equal(t.status, 'error')
  assert.equal(step(t, 'ask').error.message, 'rejected')
  assert.deepEqual(new Wait({ correlationId: 'x', timeout: 5 }).toJSON(), { $wait: { correlation_id: 'x', timeout: 5 } })
})

test('a child task runs for its parent step; a failed one fails it permanently', async () => {
  const engine = freshEngine()
  await engine.registerTemplate(`
name: order
steps:
  - {name: charge}
  - {name: ship, dependencies: [charge]}
`)
  await engine.registerTemplate(`
name: payment
namespace: billing
steps:
  - {name: authorize, retry: {max_attempts: 1}}
  - {name: capture, dependencies: [authorize]}
`)
  engine.handler('charge', (s) => new ChildTask('payment', { context: { amount: s.context.amount }, namespace: 'billing' }))
  engine.handler('ship', (s) => ({ captured: s.results.charge.results.capture.captured }))
  engine.handler('authorize', (s) => { if (s.context.amount > 100) throw new PermanentError('card declined'); return { ok: true } })
  engine.handler('capture', async (s) => ({ captured: s.context.amount }))
  const t = await engine.runUntilComplete(await engine.createTask('order', { amount: 42 }), { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.equal(t.parent_task_id, null)
  const charge = step(t, 'charge')
  const child = await engine.getTask(charge.child_task_id)
  assert.deepEqual([child.namespace, child.name, child.parent_task_id, child.parent_step], ['billing', 'payment', t.id, 'charge'])
  assert.deepEqual(charge.results, { task_id: child.id, status: 'complete', results: { authorize: { ok: true }, capture: { captured: 42 } } })
  assert.deepEqual(step(t, 'ship').results, { captured: 42 })

  const failed = await engine.runUntilComplete(await engine.createTask('order', { amount: 500 }), { timeout: 30 })
  assert.equal(failed.status, 'error')
  const err = step(failed, 'charge').error
  assert.equal(err.kind, 'permanent')
  assert.match(err.message, /billing\/payment/)
  assert.match(err.message, /card declined/)
  assert.deepEqual(new ChildTask('payment').toJSON(), { $child_task: { name: 'payment' } })
})

test('a fan-out runs one instance per item; a checkpoint reaches the next attempt', async () => {
  const engine = freshEngine()
  await engine.registerTemplate(`
name: fan
steps:
  - {name: plan, type: batchable}
  - {name: work, type: batch_worker, dependencies: [plan], retry: {max_attempts: 2}, backoff: {base_seconds: 0, jitter: 0}}
  - {name: total, type: deferred_convergence, dependencies: [work]}
`)
  engine.handler('plan', () => new Batches([0, 10, 20].map((s) => ({ start: s, end: s + 10 })), { results: { rows: 30 } }))
  engine.handler('work', async (s) => {
    if (s.batchIndex === 1 && s.checkpoint === null) {
      await s.saveCheckpoint({ at: s.batch.start + 5 })
      throw new RetryableError('interrupted')
    }
    let sum = 0
    for (let i = s.checkpoint ? s.checkpoint.at : s.batch.start; i < s.batch.end; i++) sum += i
    return { name: s.name, sum, rows: s.results.plan.rows }
  })
  engine.handler('total', (s) => ({ sums: s.results.work.map((r) => r.sum), names: s.results.work.map((r) => r.name) }))
  const t = await engine.runUntilComplete(await engine.createTask('fan'), { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.deepEqual(step(t, 'total').results, { sums: [45, 85, 245], names: ['work_001', 'work_002', 'work_003'] })
  assert.equal(step(t, 'work_002').attempts, 2)
})

test('a schedule is fired by a running worker and managed by name', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: beat\nstep_templates:\n  - {name: pulse}\n')
  engine.handler('pulse', (s) => ({ tick: s.context.n }))
  const s = await engine.createSchedule('every_second', 'beat', '* * * * * *', { context: { n: 1 }, overlap: 'allow', catchUp: 'all' })
  assert.deepEqual([s.name, s.timezone, s.overlap, s.catch_up], ['every_second', 'UTC', 'allow', 'all'])
  await assert.rejects(engine.createSchedule('every_second', 'beat', '* * * * *'), ConflictError)
  await assert.rejects(engine.createSchedule('bad', 'beat', '* * *'), (e) => e instanceof ValidationError && /has 3 fields/.test(e.message))
  await assert.rejects(engine.createSchedule('bad', 'beat', '* * * * *', { catchUp: 'sometimes' }), (e) => e instanceof ValidationError && /catch_up/.test(e.message))
  const ac = new AbortController()
  const worker = engine.runWorker({ concurrency: 2, signal: ac.signal })
  const deadline = Date.now() + 10000
  while ((await engine.getSchedule('every_second')).fired < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100))
  const fired = await engine.getSchedule('every_second')
  assert.ok(fired.fired >= 2, JSON.stringify(fired))
  const task = await engine.waitForTask(fired.last_task_id, { timeout: 10 })
  assert.deepEqual([task.source_system, task.initiator], ['schedule', 'every_second'])
  assert.deepEqual(step(task, 'pulse').results, { tick: 1 })
  ac.abort()
  await worker
  assert.equal((await engine.pauseSchedule('every_second')).paused, true)
  assert.deepEqual((await engine.listSchedules()).map((x) => x.name), ['every_second'])
  assert.equal((await engine.resumeSchedule('every_second')).paused, false)
  await engine.deleteSchedule('every_second')
  assert.deepEqual(await engine.listSchedules(), [])
  await assert.rejects(engine.getSchedule('every_second'), NotFoundError)
})

test('a Reschedule runs the step again without spending an attempt', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: poller\nsteps:\n  - {name: poll, retry: {max_attempts: 1}, max_reschedules: 3}\n')
  const calls = []
  engine.handler('poll', (s) => {
    calls.push(s.attempt)
    return calls.length === 3 ? { doneAfter: 3 } : new Reschedule({ after: 0.05 })
  })
  const t = await engine.runUntilComplete(await engine.createTask('poller'), { timeout: 30 })
  assert.equal(t.status, 'complete')
  assert.deepEqual(calls, [1, 1, 1])
})

test('a task past its deadlineSeconds is failed by a running worker', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: stuck\nstep_templates:\n  - {name: nobody_handles_this}\n')
  engine.handler('other', () => ({}))
  const ac = new AbortController()
  const worker = engine.runWorker({ concurrency: 1, signal: ac.signal })
  const t = await engine.waitForTask(await engine.createTask('stuck', {}, { deadlineSeconds: 0.3 }), { timeout: 10 })
  ac.abort()
  await worker
  assert.equal(t.status, 'error')
  assert.equal(step(t, 'nobody_handles_this').status, 'cancelled')
})

test('operators pause, rerun, retry in bulk and prune', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: flow\nsteps:\n  - {name: fetch}\n  - {name: load, dependencies: [fetch], retry: {max_attempts: 1}}\n')
  let broken = true
  engine.handler('fetch', () => ({ rows: 3 }))
  engine.handler('load', () => {
    if (broken) throw new RetryableError('warehouse down')
    return { loaded: 3 }
  })
  const paused = await engine.createTask('flow')
  assert.equal(await engine.pauseTask(paused), true)
  assert.equal(await engine.pauseTask(paused), false)
  assert.equal((await engine.getTask(paused)).paused, true)
  await assert.rejects(engine.runUntilComplete(paused, { timeout: 0.5 }), TimeoutError)
  assert.equal(await engine.resumeTask(paused), true)
  const failed = [paused, await engine.createTask('flow'), await engine.createTask('flow')]
  for (const t of failed) assert.equal((await engine.runUntilComplete(t, { timeout: 30 })).status, 'error')
  broken = false
  assert.equal(await engine.retryTasks({ name: 'flow', since: new Date(Date.now() - 3600_000) }), 3)
  for (const t of failed) assert.equal((await engine.runUntilComplete(t, { timeout: 30 })).status, 'complete')
  assert.equal(await engine.rerunFrom(failed[0], 'fetch'), 2)
  assert.equal((await engine.runUntilComplete(failed[0], { timeout: 30 })).status, 'complete')
  assert.equal(await engine.pauseTemplate('flow'), 0)
  assert.equal(await engine.cancelTasks({ name: 'flow' }), 0)
  await assert.rejects(engine.retryTasks({ status: 'complete' }), ValidationError)
  await assert.rejects(engine.prune('soon'), /older_than/)
  assert.equal(await engine.prune('30d'), 0)
  assert.equal(await engine.prune(0), 3)
  await assert.rejects(engine.getTask(failed[1]), NotFoundError)
})
