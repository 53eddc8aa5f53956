'use strict'
/**
 * Tasker: workflow orchestration with a Rust core.
 *
 * This module holds no orchestration rule: claims, retries, readiness, leases, timeouts,
 * batching and finalization are the Rust core's (its host driver runs the worker loop off the
 * JS thread). It runs your handlers as ordinary (async) functions on the JS thread and hands
 * their outcomes back.
 */
const fs = require('node:fs')
const path = require('node:path')
const crypto = require('node:crypto')

const native = require('./tasker.node')

class TaskerError extends Error {
  constructor (message) {
    super(message)
    this.name = this.constructor.name
  }
}
class TemplateError extends TaskerError {}
class ValidationError extends TaskerError {}
class NotFoundError extends TaskerError {}
class ConflictError extends TaskerError {}
class DatabaseError extends TaskerError {}
class TimeoutError extends TaskerError {}

/** Throw from a handler to fail this attempt; retried while attempts remain. */
class RetryableError extends Error {
  constructor (message, options = {}) {
    super(message)
    this.name = 'RetryableError'
    this.retryAfter = options.retryAfter ?? null
  }
}

/** Throw from a handler to fail the step for good: it is never retried. */
class PermanentError extends Error {
  constructor (message) {
    super(message)
    this.name = 'PermanentError'
  }
}

/**
 * Return from the handler of a `type: decision` step: `steps` names which of the steps that
 * depend on it directly are created (none is allowed); `results` are its own results, which its
 * children see. A name outside its children fails the step permanently, naming the allowed ones.
 */
class Decision {
  constructor (steps, options = {}) {
    this.steps = typeof steps === 'string' ? [steps] : Array.from(steps ?? [])
    this.results = options.results ?? null
  }

  /** The one shape core reads in every language (core/src/protocol.rs, `Decision`). */
  toJSON () {
    const out = { $decision: this.steps }
    if (this.results !== null) out.results = this.results
    return out
  }
}

/**
 * Return from the handler of a `type: batchable` step: each of its `batch_worker` children runs
 * once per item (any JSON value), seen as `step.batch`; `results` are its own results. No
 * items: no instance.
 */
class Batches {
  constructor (items, options = {}) {
    this.items = Array.from(items ?? [])
    this.results = options.results ?? null
  }

  /** The one shape core reads in every language (core/src/protocol.rs, `Batches`). */
  toJSON () {
    const out = { $batches: this.items }
    if (this.results !== null) out.results = this.results
    return out
  }
}

/**
 * Return from a handler to run another task for this step: the engine creates it (its snapshot
 * has `parent_task_id` and `parent_step`) and the step is `waiting` until it finishes. Child
 * complete: the step completes with `{task_id, status: 'complete', results: {step: results}}`;
 * child in error or cancelled: the step fails permanently with the child's error.
 */
class ChildTask {
  constructor (name, options = {}) {
    this.name = name
    this.context = options.context ?? null
    this.namespace = options.namespace ?? null
    this.version = options.version ?? null
  }

  /** The one shape core reads in every language (core/src/protocol.rs, `ChildTask`). */
  toJSON () {
    const spec = { name: this.name }
    for (const key of ['context', 'namespace', 'version']) {
      if (this[key] !== null) spec[key] = this[key]
    }
    return { $child_task: spec }
  }
}

/**
 * Return from a handler to leave the step `waiting` until something outside ends it:
 * `engine.signal(taskId, signal, payload)`, `engine.completeCorrelated(correlationId, results)`,
 * `engine.completeStep` / `engine.failStep`, or `timeout` seconds passing (a retryable failure:
 * the handler runs again). `results` show while it waits. It holds no lease and no worker slot.
 */
class Wait {
  constructor ({ signal = null, correlationId = null, timeout = null, results = null } = {}) {
    this.signal = signal
    this.correlationId = correlationId
    this.timeout = timeout
    this.results = results
  }

  /** The one shape core reads in every language (core/src/protocol.rs, `Wait`). */
  toJSON () {
    const spec = {}
    if (this.signal !== null) spec.signal = this.signal
    if (this.correlationId !== null) spec.correlation_id = this.correlationId
    if (this.timeout !== null) spec.timeout = this.timeout
    if (this.results !== null) spec.results = this.results
    return { $wait: spec }
  }
}

/**
 * Return from a handler to run the step again after `after` seconds without counting an
 * attempt (polling an outside job); the step's `max_reschedules` bounds how often.
 */
class Reschedule {
  constructor ({ after } = {}) {
    this.after = after
  }

  /** The one shape core reads in every language (core/src/protocol.rs, `Reschedule`). */
  toJSON () {
    return { $reschedule: { after: this.after } }
  }
}

const KINDS = {
  template: TemplateError,
  validation: ValidationError,
  not_found: NotFoundError,
  conflict: ConflictError,
  illegal_transition: ConflictError,
  database: DatabaseError,
  timeout: TimeoutError
}

/** Turns a native error (`[tasker:KIND] message`) into its TaskerError subclass. */
function convert (e) {
  const m = /^\[tasker:([a-z_]+)\] ([\s\S]*)$/.exec(e && e.message)
  if (!m) return e
  const Cls = KINDS[m[1]] || TaskerError
  return new Cls(m[2])
}

async function call (promiseOrFn) {
  try {
    return await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn)
  } catch (e) {
    throw convert(e)
  }
}

/** A bulk action's `since` as core takes it: a Date as RFC 3339, text (a time or an age such as '24h') as given. */
function sinceText (since) {
  return since instanceof Date ? since.toISOString() : since
}

function jsonText (what, value, Err = ValidationError) {
  let text
  try {
    text = JSON.stringify(value)
  } catch (e) {
    throw new Err(`${what} is not JSON: ${e.message}`)
  }
  if (text === undefined) throw new Err(`${what} is not JSON: ${typeof value}`)
  return text
}

/** What a handler receives. */
class Step {
  constructor (job, core) {
    this.taskId = job.taskId
    this.stepId = job.stepId
    this.name = job.name
    this.handler = job.handler
    this.attempt = job.attempt
    this.maxAttempts = job.maxAttempts
    this.context = JSON.parse(job.context)
    this.results = JSON.parse(job.results)
    this.config = JSON.parse(job.config)
    this.customEvents = job.customEvents
    this.batch = job.batch == null ? null : JSON.parse(job.batch)
    this.batchIndex = job.batchIndex ?? null
    this.checkpoint = job.checkpoint == null ? null : JSON.parse(job.checkpoint)
    Object.defineProperty(this, '_job', { value: job })
    Object.defineProperty(this, '_core', { value: core })
  }

  /** Publishes a custom event the template declares, to every subscriber, at once. */
  publishCustomEvent (name, payload = null) {
    try {
      this._core.publishCustomEvent(this._job, name, jsonText(`custom event ${name}: payload`, payload))
    } catch (e) {
      throw convert(e)
    }
  }

  /** Saves a checkpoint durably; the next attempt sees it as `step.checkpoint`. */
  async saveCheckpoint (value) {
    const text = jsonText('checkpoint', value)
    const j = this._job
    await call(this._core.saveCheckpoint(j.taskId, j.stepId, j.attempt, j.position, text))
    this.checkpoint = JSON.parse(text)
  }
}

function failure (kind, message, retryAfter, detail) {
  const f = { message, kind }
  if (retryAfter !== null && retryAfter !== undefined) f.retry_after_seconds = Number(retryAfter)
  if (detail !== undefined) f.detail = detail
  return JSON.stringify(f)
}

/** The stored failure of a thrown value: RetryableError / PermanentError as thrown, any other
 * error retryable with its class name, message and stack. */
function failureOf (e) {
  if (e instanceof PermanentError) return failure('permanent', e.message)
  if (e instanceof RetryableError) return failure('retryable', e.message, e.retryAfter)
  if (e instanceof Error) {
    return failure('retryable', `${e.name}: ${e.message}`, null, { exception: e.name, stack: e.stack })
  }
  return failure('retryable', `a non-Error value was thrown: ${String(e)}`, null, { thrown: String(e) })
}

/** The handler's value as JSON text, or the reason it is not JSON. */
function resultText (value) {
  if (value === undefined) return { text: 'null' }
  if (typeof value === 'function' || typeof value === 'symbol') return { notJson: `a ${typeof value}` }
  try {
    const text = JSON.stringify(value)
    return text === undefined ? { notJson: typeof value } : { text }
  } catch (e) {
    return { notJson: e.message }
  }
}

class Engine {
  /**
   * @param {string} [url] sqlite://PATH or postgres://USER@HOST:PORT/DB; default
   *   $TASKER_DATABASE_URL, else sqlite://tasker.db
   * @param {object} [options] {environment, schema, leaseSeconds, listen, strictTemplates}
   */
  constructor (url, options = {}) {
    this._handlers = new Map()
    this._subscribers = new Map()
    this._stopping = null
    this._opened = call(native.open({
      url: url ?? undefined,
      environment: options.environment,
      schema: options.schema,
      leaseSeconds: options.leaseSeconds,
      listen: options.listen,
      strictTemplates: options.strictTemplates
    }))
    // An engine that fails to open rejects its first call, not an unhandled promise.
    this._opened.catch(() => {})
  }

  async _core () {
    return this._opened
  }

  /**
   * Registers a template from YAML text, a file path or an object; resolves to its key. Keys
   * its format does not know are kept and emitted as a `TemplateWarning` process warning
   * (`strictTemplates: true` refuses them).
   */
  async registerTemplate (src) {
    const core = await this._core()
    let registered
    if (src !== null && typeof src === 'object') {
      registered = await call(core.registerTemplate('json', jsonText('template', src, TemplateError)))
    } else if (typeof src !== 'string') {
      throw new TypeError(`registerTemplate takes YAML text, a path or an object, not ${typeof src}`)
    } else if (!src.includes('\n') && /\.(ya?ml|json)$/.test(src)) {
      if (!fs.existsSync(src)) throw new TemplateError(`template file ${src}: No such file or directory`)
      registered = await call(core.registerTemplate('file', path.resolve(src)))
    } else {
      registered = await call(core.registerTemplate('yaml', src))
    }
    for (const w of registered.warnings) {
      process.emitWarning(`template ${registered.key}: ${w}`, { type: 'TemplateWarning' })
    }
    return registered.key
  }

  /** Registers `fn(step)` (it may return a value or a Promise) as the handler `name`. */
  handler (name, fn) {
    if (typeof name !== 'string' || !name) throw new TypeError('handler name must be a non-empty string')
    if (typeof fn !== 'function') throw new TypeError(`handler ${name} must be a function`)
    this._handlers.set(name, fn)
    return this
  }

  /** Subscribes to a lifecycle event, a declared custom event, or '*'. */
  on (event, fn) {
    try {
      native.Core.checkSubscription(event)
    } catch (e) {
      throw convert(e)
    }
    if (typeof fn !== 'function') throw new TypeError('on(event, fn): fn must be a function')
    if (!this._subscribers.has(event)) this._subscribers.set(event, [])
    this._subscribers.get(event).push(fn)
    this._opened.then((core) => core.subscribe(), () => {})
    return this
  }

  _dispatchEvents (core) {
    if (this._subscribers.size === 0) return
    for (const raw of core.drainEvents()) {
      const ev = JSON.parse(raw)
      for (const fn of [...(this._subscribers.get(ev.name) || []), ...(this._subscribers.get('*') || [])]) {
        try {
          fn(ev)
        } catch (e) {
          console.error('tasker: an event subscriber threw:', e)
        }
      }
    }
  }

  static _request (name, context, options = {}) {
    const req = { name, context: context ?? {} }
    const map = {
      namespace: 'namespace',
      version: 'version',
      idempotencyKey: 'idempotency_key',
      initiator: 'initiator',
      sourceSystem: 'source_system',
      reason: 'reason',
      tags: 'tags',
      bypassSteps: 'bypass_steps',
      priority: 'priority',
      deadlineSeconds: 'deadline_seconds'
    }
    for (const [k, v] of Object.entries(options)) {
      if (!(k in map)) throw new ValidationError(`createTask: unknown option ${k} (known: ${Object.keys(map).join(', ')})`)
      if (v !== undefined && v !== null) req[map[k]] = v
    }
    return req
  }

  /** Creates a task; resolves to its id (the existing one for a repeated idempotencyKey). */
  async createTask (name, context = {}, options = {}) {
    const core = await this._core()
    return call(core.createTask(jsonText(`task ${name}: request`, Engine._request(name, context, options))))
  }

  /** Creates many tasks in one transaction: [{name, context, ...options}]. */
  async createTasks (requests) {
    const core = await this._core()
    const reqs = requests.map(({ name, context, ...options }) => Engine._request(name, context, options))
    return call(core.createTasks(jsonText('task requests', reqs)))
  }

  /** What the database says commits get: {description, durable}. */
  async durability () {
    return call(async () => (await this._core()).durability())
  }

  /**
   * Registers event definitions (the original's `config/tasker/events/*.yml`) from YAML text,
   * a file or a directory; resolves to the names registered. Stored: every process opened
   * afterwards knows them; any handler may publish a defined event, its payload checked.
   */
  async registerEvents (src) {
    if (typeof src !== 'string') throw new TypeError(`registerEvents takes YAML text or a path, not ${typeof src}`)
    const core = await this._core()
    const isPath = !src.includes('\n') && !src.trimStart().startsWith('events:')
    const defs = JSON.parse(await call(core.registerEvents(isPath ? 'path' : 'yaml', isPath ? path.resolve(src) : src)))
    return defs.map((d) => d.name)
  }

  /** Every event a subscriber may hear (the engine's, the original's, defined and declared ones). */
  async eventCatalog () {
    const core = await this._core()
    return JSON.parse(await call(core.eventCatalog()))
  }

  /** The stored event definitions. */
  async eventDefinitions () {
    const core = await this._core()
    return JSON.parse(await call(core.eventDefinitions()))
  }

  async getTask (id) {
    const core = await this._core()
    return JSON.parse(await call(core.getTask(id)))
  }

  async listTasks (filter = {}) {
    const core = await this._core()
    return JSON.parse(await call(core.listTasks(jsonText('listTasks options', filter))))
  }

  async cancelTask (id) {
    return call(async () => (await this._core()).cancelTask(id))
  }

  async retryStep (id, step) {
    return call(async () => (await this._core()).retryStep(id, step))
  }

  /** Changes a task's `reason` and/or `tags` (not its state), as `PATCH /tasks/{id}`. */
  async updateTask (id, { reason = null, tags = null } = {}) {
    return call(async () => (await this._core()).updateTask(id, reason, tags))
  }

  /** Cancels a step that has not run to the end, with the steps that depend on it. */
  async cancelStep (id, step) {
    return call(async () => (await this._core()).cancelStep(id, step))
  }

  /** Gives a step another attempt limit (1..); an exhausted step given more runs again. */
  async setStepRetryLimit (id, step, retryLimit) {
    return call(async () => (await this._core()).setStepRetryLimit(id, step, retryLimit))
  }

  /** The task's audit history, oldest first. */
  async transitions (id) {
    return JSON.parse(await call(async () => (await this._core()).transitions(id)))
  }

  /** Figures for the tasks created in the last `windowSeconds` (default 3600). */
  async analytics ({ windowSeconds = 3600, namespace = null, name = null } = {}) {
    return JSON.parse(await call(async () => (await this._core()).analytics(windowSeconds, namespace, name)))
  }

  async resolveStepManually (id, step, results = null) {
    const core = await this._core()
    return call(core.resolveStepManually(id, step, jsonText('results', results)))
  }

  /**
   * Completes each step of the task waiting for signal `name`, with `payload` as its results
   * (null: the wait's own); resolves to how many. When none waits yet, the signal is kept and
   * taken by the first step of the task that waits for it.
   */
  async signal (id, name, payload = null) {
    const core = await this._core()
    return call(core.signal(id, name, jsonText('payload', payload)))
  }

  /** Completes a waiting step (a ConflictError naming its state when it is not waiting). */
  async completeStep (id, step, results = null) {
    const core = await this._core()
    return call(core.completeStep(id, step, jsonText('results', results)))
  }

  /** Fails a waiting step: for good with `permanent`, else its handler runs again after backoff. */
  async failStep (id, step, message, { permanent = false } = {}) {
    return call(async () => (await this._core()).failStep(id, step, message, permanent))
  }

  /** Completes every step waiting with this correlation id; resolves to how many. */
  async completeCorrelated (correlationId, results = null) {
    const core = await this._core()
    return call(core.completeCorrelated(correlationId, jsonText('results', results)))
  }

  /** Pauses a task: no new step of it starts until resumed; running steps finish. Resolves to whether it changed. */
  async pauseTask (id) { return this._flow('pause_task', { task_id: id }) }
  /** Resumes a paused task; resolves to whether it changed. */
  async resumeTask (id) { return this._flow('resume_task', { task_id: id }) }
  /** Pauses every unfinished task of a template; resolves to how many. */
  async pauseTemplate (name, namespace = 'default') { return this._flow('pause_template', { name, namespace }) }
  /** Resumes every paused task of a template; resolves to how many. */
  async resumeTemplate (name, namespace = 'default') { return this._flow('resume_template', { name, namespace }) }
  /** Puts `step` and every step below it back to pending with fresh attempts; resolves to how many steps. */
  async rerunFrom (id, step) { return this._flow('rerun_from', { task_id: id, step }) }
  /** Retries every step out of attempts of a task in error; resolves to how many. */
  async retryTask (id) { return this._flow('retry_task', { task_id: id }) }
  /** Retries every failed task matching the filters; resolves to how many tasks. */
  async retryTasks ({ status = 'error', name, namespace, since } = {}) {
    return this._flow('retry_tasks', { status, name, namespace, since: sinceText(since) })
  }
  /** Cancels every unfinished task matching the filters; resolves to how many. */
  async cancelTasks ({ status, name, namespace, since } = {}) {
    return this._flow('cancel_tasks', { status, name, namespace, since: sinceText(since) })
  }
  /** Removes tasks that ended more than `olderThan` ago (seconds or an age such as '30d'); resolves to how many. */
  async prune (olderThan, { statuses } = {}) { return this._flow('prune', { older_than: olderThan, statuses }) }

  async _flow (op, args) {
    const core = await this._core()
    const given = Object.fromEntries(Object.entries(args).filter(([, v]) => v !== undefined && v !== null))
    return JSON.parse(await call(core.flowOp(op, JSON.stringify(given))))
  }

  /**
   * Creates a schedule: a task of `template` at each tick of `cron` (5 fields, or 6 with
   * seconds first). `overlap`: skip | allow | cancel_previous; `catchUp`: none | latest | all.
   * Every worker process fires it. Resolves to the schedule.
   */
  async createSchedule (name, template, cron, { context = null, namespace = null, version = null, timezone = 'UTC', overlap = 'skip', catchUp = 'latest' } = {}) {
    const spec = { name, template, cron, context, namespace, version, timezone, overlap, catch_up: catchUp }
    return this._schedule('create', jsonText('schedule', spec))
  }

  /** Every schedule, by name, with its next run time. */
  async listSchedules () { return this._schedule('list', '') }
  async getSchedule (name) { return this._schedule('get', name) }
  /** Its ticks make no task until resumed (and are not caught up). */
  async pauseSchedule (name) { return this._schedule('pause', name) }
  /** Resumes from its next tick after now. */
  async resumeSchedule (name) { return this._schedule('resume', name) }
  /** Deletes it (its tasks stay). */
  async deleteSchedule (name) { await this._schedule('delete', name) }

  async _schedule (op, arg) {
    const core = await this._core()
    return JSON.parse(await call(core.scheduleOp(op, arg)))
  }

  /** Waits until another process or run finishes the task; resolves to its snapshot. */
  async waitForTask (id, { timeout } = {}) {
    const core = await this._core()
    const deadline = timeout === undefined ? null : Date.now() + timeout * 1000
    for (;;) {
      const left = deadline === null ? 1 : Math.min(1, (deadline - Date.now()) / 1000)
      if (left <= 0) throw new TimeoutError(`task ${id} did not finish within ${timeout} s`)
      const state = await call(core.waitForTask(id, left))
      if (['complete', 'error', 'cancelled', 'resolved_manually'].includes(state)) return this.getTask(id)
    }
  }

  /** Runs this process's handlers until the task is finished; resolves to its snapshot. */
  async runUntilComplete (id, { timeout, concurrency = 8 } = {}) {
    await this._run({ concurrency, mode: 'until_task', taskId: id, timeout })
    return this.getTask(id)
  }

  /**
   * Runs this process's handlers for every task. Resolves when nothing is left
   * (untilIdle), or after `signal` aborts or SIGINT/SIGTERM: steps not started are handed back,
   * running ones get `shutdownGrace` seconds, then are reported as worker_shutdown.
   */
  async runWorker ({ concurrency = 8, untilIdle = false, signal, shutdownGrace = 30 } = {}) {
    await this._run({ concurrency, mode: untilIdle ? 'until_idle' : 'forever', signal, shutdownGrace })
  }

  async _run ({ concurrency, mode, taskId, timeout, signal, shutdownGrace = 30 }) {
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new ValidationError(`concurrency must be an integer >= 1, got ${concurrency}`)
    const core = await this._core()
    const driver = await call(core.startDriver([...this._handlers.keys()], concurrency, mode, taskId, shutdownGrace))
    let timedOut = false
    const stop = () => driver.shutdown()
    const timer = timeout === undefined ? null : setTimeout(() => { timedOut = true; stop() }, timeout * 1000)
    if (signal) {
      if (signal.aborted) stop()
      else signal.addEventListener('abort', stop, { once: true })
    }
    this._stopping = stop
    process.on('SIGINT', stop)
    process.on('SIGTERM', stop)
    try {
      for (;;) {
        const batch = await driver.next(100)
        for (const job of batch.jobs) this._start(core, driver, job)
        this._dispatchEvents(core)
        if (batch.done) break
      }
      await call(driver.join())
      this._dispatchEvents(core)
    } finally {
      process.off('SIGINT', stop)
      process.off('SIGTERM', stop)
      if (signal) signal.removeEventListener('abort', stop)
      if (timer) clearTimeout(timer)
      this._stopping = null
    }
    if (timedOut) throw new TimeoutError(`task ${taskId} did not finish within ${timeout} s`)
  }

  _start (core, driver, job) {
    const fn = this._handlers.get(job.handler)
    const k = [job.taskId, job.stepId, job.attempt, job.position]
    driver.started(...k)
    let result
    try {
      result = fn(new Step(job, core))
    } catch (e) {
      driver.finished(...k, false, failureOf(e))
      return
    }
    Promise.resolve(result).then(
      (value) => {
        const r = resultText(value)
        if (r.notJson !== undefined) driver.finishedNotJson(...k, r.notJson)
        else driver.finished(...k, true, r.text)
      },
      (e) => driver.finished(...k, false, failureOf(e))
    )
  }

  /** Asks a running runWorker to stop (as SIGINT does). */
  stop () {
    if (this._stopping) this._stopping()
  }

  /** Lets go of the engine: a running worker stops; nothing keeps the process alive. */
  async close () {
    this.stop()
    this._handlers.clear()
    this._subscribers.clear()
  }

  /** A fresh worker identity. */
  static newWorkerId () {
    return `${process.pid}:${crypto.randomBytes(4).toString('hex')}`
  }
}

module.exports = {
  Engine,
  Step,
  TaskerError,
  TemplateError,
  ValidationError,
  NotFoundError,
  ConflictError,
  DatabaseError,
  TimeoutError,
  RetryableError,
  PermanentError,
  Decision,
  Batches,
  ChildTask,
  Wait,
  Reschedule
}
