// Real processes: the process exits by itself, ESM and CommonJS, SIGINT, two Node workers on
// PostgreSQL with one killed by SIGKILL, and one task handled by a Python and a Node worker.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Engine } from 'tasker'
import { BACKEND, freshDb, freshEngine, step } from './helpers.mjs'

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const REPO = path.resolve(PKG, '..')
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-node-proc-'))

function script (dir, name, text) {
  const p = path.join(dir, name)
  fs.writeFileSync(p, text)
  return p
}

/** Runs `node file args` to its end (in `cwd`, where `tasker` resolves to this package). */
function node (file, args = [], opts = {}) {
  return spawnSync(process.execPath, [file, ...args], { encoding: 'utf8', timeout: 60_000, cwd: PKG, ...opts })
}

test('the process exits by itself after runUntilComplete, runWorker({untilIdle}) and close()', () => {
  const db = freshDb()
  const dir = tmp()
  const f = script(PKG, `.exit-test-${process.pid}.mjs`, `
import { Engine } from 'tasker'
const engine = new Engine(process.argv[2], JSON.parse(process.argv[3]))
await engine.registerTemplate('name: one\\nstep_templates:\\n  - {name: only}\\n')
engine.handler('only', async () => 'done')
await engine.runUntilComplete(await engine.createTask('one'))
await engine.createTask('one')
await engine.runWorker({ untilIdle: true })
await engine.close()
console.log('finished')
`)
  try {
    const started = Date.now()
    const r = node(f, [db.url, JSON.stringify(db.options)], { cwd: dir })
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.stdout.trim(), 'finished')
    assert.ok(Date.now() - started < 20_000, 'nothing kept the event loop alive')
  } finally {
    fs.rmSync(f)
  }
})

test('ESM import and CommonJS require both work', () => {
  const dir = tmp()
  const cjs = script(PKG, `.cjs-test-${process.pid}.cjs`, "const t = require('tasker'); console.log(typeof t.Engine, typeof t.RetryableError, new t.ValidationError('x') instanceof t.TaskerError)")
  const esm = script(PKG, `.esm-test-${process.pid}.mjs`, "import { Engine, TaskerError, ValidationError } from 'tasker'; import d from 'tasker'; console.log(typeof Engine, d.Engine === Engine, new ValidationError('x') instanceof TaskerError)")
  try {
    assert.equal(node(cjs, [], { cwd: dir }).stdout.trim(), 'function function true')
    assert.equal(node(esm, [], { cwd: dir }).stdout.trim(), 'function true true')
  } finally {
    fs.rmSync(cjs)
    fs.rmSync(esm)
  }
})

const WORKER = `
import { Engine } from 'tasker'
import fs from 'node:fs'
const [url, options, log, sleepMs, mode] = process.argv.slice(2)
const engine = new Engine(url, { ...JSON.parse(options), leaseSeconds: 1 })
engine.handler('slow', async (step) => {
  fs.appendFileSync(log, 'start ' + step.taskId + ' ' + process.pid + '\\n')
  await new Promise((r) => setTimeout(r, Number(sleepMs)))
  fs.appendFileSync(log, 'end ' + step.taskId + ' ' + process.pid + '\\n')
  return { pid: process.pid, attempt: step.attempt }
})
console.log('ready')
await engine.runWorker({ concurrency: 2, untilIdle: mode === 'idle', shutdownGrace: 0.5 })
console.log('stopped cleanly')
`

function startWorker (db, log, sleepMs, mode) {
  const f = script(PKG, `.worker-${process.pid}-${Math.random().toString(16).slice(2)}.mjs`, WORKER)
  const child = spawn(process.execPath, [f, db.url, JSON.stringify(db.options), log, String(sleepMs), mode], { cwd: PKG, stdio: ['ignore', 'pipe', 'pipe'] })
  child.on('exit', () => fs.rmSync(f, { force: true }))
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => { out += d })
  child.stderr.on('data', (d) => { err += d })
  child.output = () => ({ out, err })
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  return child
}

async function until (cond, ms, what) {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

test('SIGINT stops runWorker: unstarted steps are handed back, running ones reported', async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: slow\nstep_templates:\n  - {name: slow}\n')
  const ids = await engine.createTasks(Array.from({ length: 5 }, () => ({ name: 'slow' })))
  const log = path.join(tmp(), 'runs.log')
  const w = startWorker(engine.db, log, 30_000, 'forever')
  await until(() => fs.existsSync(log) && fs.readFileSync(log, 'utf8').split('start').length - 1 === 2, 20_000, 'two steps to start')
  w.kill('SIGINT')
  const { code } = await w.exited
  assert.equal(code, 0, w.output().err)
  assert.match(w.output().out, /stopped cleanly/)
  const steps = await Promise.all(ids.map(async (id) => (await engine.getTask(id)).steps[0]))
  assert.equal(steps.filter((s) => s.status === 'in_progress').length, 0, 'no step is left to its lease')
  assert.equal(steps.filter((s) => s.error?.kind === 'worker_shutdown').length, 2)
  assert.equal(steps.filter((s) => s.status === 'pending' && s.attempts === 0).length, 3)
})

test('two Node workers share PostgreSQL; a worker killed mid-step loses its steps to the other after the lease', { skip: BACKEND !== 'postgres' && 'several worker processes need PostgreSQL' }, async () => {
  const engine = freshEngine()
  await engine.registerTemplate('name: slow\nstep_templates:\n  - {name: slow}\n')
  const ids = await engine.createTasks(Array.from({ length: 30 }, () => ({ name: 'slow' })))
  const log = path.join(tmp(), 'runs.log')
  const a = startWorker(engine.db, log, 200, 'idle')
  const b = startWorker(engine.db, log, 200, 'idle')
  await until(() => fs.existsSync(log) && fs.readFileSync(log, 'utf8').includes(`start`) && fs.readFileSync(log, 'utf8').includes(String(a.pid)), 20_000, 'worker a to start a step')
  a.kill('SIGKILL')
  assert.equal((await a.exited).signal, 'SIGKILL')
  const rb = await b.exited
  assert.equal(rb.code, 0, b.output().err)
  const tasks = await Promise.all(ids.map((id) => engine.getTask(id)))
  assert.ok(tasks.every((t) => t.status === 'complete'), JSON.stringify(tasks.map((t) => t.status)))
  const retried = tasks.filter((t) => t.steps[0].attempts > 1)
  assert.ok(retried.length >= 1, 'the killed worker held steps that ran again')
  for (const t of retried) {
    assert.equal(t.steps[0].results.pid, b.pid, 'the survivor ran them')
  }
})

const PY_WORKER = `
import sys, tasker
engine = tasker.Engine(sys.argv[1], schema=sys.argv[2] or None)

@engine.handler("py_prepare")
def prepare(step):
    return {"items": [1, 2, 3], "by": "python", "note": "h\\u00e9llo \\u2713"}

@engine.handler("py_finish")
def finish(step):
    return {"python_saw": step.results["total"]}

print("ready", flush=True)
engine.run_worker(concurrency=2)  # until Ctrl-C
`

test('one task whose steps are handled by a Python worker and a Node worker', { skip: (BACKEND !== 'postgres' && 'separate worker processes need PostgreSQL') || (!process.env.TASKER_PYTHON && 'TASKER_PYTHON (a python with the tasker package; scripts/test.sh sets it) is not set') }, async () => {
  const engine = freshEngine()
  await engine.registerTemplate(`
name: polyglot
step_templates:
  - {name: prepare, handler_class: py_prepare}
  - {name: total, handler_class: node_total, depends_on_step: prepare}
  - {name: finish, handler_class: py_finish, depends_on_step: total}
`)
  const id = await engine.createTask('polyglot')
  const py = spawn(process.env.TASKER_PYTHON, ['-c', PY_WORKER, engine.db.url, engine.db.options.schema || ''], { stdio: ['ignore', 'pipe', 'pipe'] })
  let pyErr = ''
  py.stderr.on('data', (d) => { pyErr += d })
  const pyDone = new Promise((resolve) => py.on('exit', resolve))
  engine.handler('node_total', (step) => ({
    sum: step.results.prepare.items.reduce((a, b) => a + b, 0),
    echoed: step.results.prepare
  }))
  // This process handles node_total; the Python process the other two, in either order.
  const ac = new AbortController()
  const nodeWorker = engine.runWorker({ signal: ac.signal })
  const t = await engine.waitForTask(id, { timeout: 60 })
  ac.abort()
  await nodeWorker
  py.kill('SIGINT')
  assert.equal(await pyDone, 0, pyErr)
  assert.equal(t.status, 'complete', JSON.stringify(t.steps.map((s) => [s.name, s.status, s.error])))
  assert.deepEqual(step(t, 'total').results.echoed, { items: [1, 2, 3], by: 'python', note: 'héllo ✓' })
  assert.deepEqual(step(t, 'finish').results, { python_saw: { sum: 6, echoed: { items: [1, 2, 3], by: 'python', note: 'héllo ✓' } } })
})

test('the README quickstart example runs', () => {
  const dir = tmp()
  fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(dir, 'node_modules'))
  const r = node(path.join(REPO, 'examples/node/quickstart.mjs'), [], { cwd: dir })
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.trim(), 'HELLO WORLD!')
}, { skip: !fs.existsSync(path.join(REPO, 'node_modules/tasker')) && 'npm install ./bindings-node at the repository root first (scripts/test.sh does)' })

test('npm pack makes a tarball with the built addon that installs and runs without Rust', { skip: BACKEND === 'postgres' && 'backend-independent: runs in the SQLite pass' }, () => {
  const dir = tmp()
  const pack = spawnSync('npm', ['pack', '--pack-destination', dir, '--silent'], { cwd: PKG, encoding: 'utf8', timeout: 600_000 })
  assert.equal(pack.status, 0, pack.stderr)
  const tgz = path.join(dir, pack.stdout.trim().split('\n').pop())
  const proj = path.join(dir, 'proj')
  fs.mkdirSync(proj)
  fs.writeFileSync(path.join(proj, 'package.json'), '{"name": "proj", "version": "1.0.0", "private": true}')
  // No cargo on PATH: the tarball must not need it.
  const env = { ...process.env, PATH: path.dirname(process.execPath) + ':/usr/bin:/bin' }
  const inst = spawnSync('npm', ['install', '--no-audit', '--no-fund', tgz], { cwd: proj, encoding: 'utf8', env, timeout: 120_000 })
  assert.equal(inst.status, 0, inst.stderr)
  const db = path.join(proj, 't.db')
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', `
import { Engine } from 'tasker'
const e = new Engine('sqlite://${db}')
await e.registerTemplate('name: one\\nstep_templates:\\n  - {name: only}\\n')
e.handler('only', () => 41 + 1)
console.log((await e.runUntilComplete(await e.createTask('one'))).steps[0].results)
`], { cwd: proj, encoding: 'utf8', timeout: 60_000 })
  assert.equal(run.status, 0, run.stderr)
  assert.equal(run.stdout.trim(), '42')
})
