// W1-W4 (shared/bench/README.md) with Node no-op handlers: the same workloads and measurement
// as bindings-python/bench/bench.py.
//
//   node bindings-node/bench/bench.mjs [--backend sqlite|postgres] [--pg-url URL]
//        [--workload W1,W2,W3,W4] [--reps 3]
//
// One worker (this process) at concurrency 10. Each repetition runs on a fresh database
// (SQLite file or PostgreSQL schema). Prints the median of each metric over the repetitions.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { Engine, PermanentError } from 'tasker'

const CONCURRENCY = 10
const CHAIN = 100
const args = { backend: 'sqlite', pgUrl: process.env.DATABASE_URL, workload: 'W1,W2,W3,W4', reps: 3, allowUnsafe: false }
for (let i = 2; i < process.argv.length; i += 2) {
  const [k, v] = [process.argv[i], process.argv[i + 1]]
  if (k === '--allow-unsafe') { args.allowUnsafe = true; i--; continue }
  if (k === '--backend') args.backend = v
  else if (k === '--pg-url') args.pgUrl = v
  else if (k === '--workload') args.workload = v
  else if (k === '--reps') args.reps = Number(v)
  else { console.error(`unknown argument ${k}`); process.exit(2) }
}
if (args.backend === 'postgres' && !args.pgUrl) { console.error('--backend postgres needs --pg-url or DATABASE_URL'); process.exit(2) }

function fresh () {
  if (args.backend === 'postgres') return new Engine(args.pgUrl, { schema: 'nodebench_' + crypto.randomBytes(5).toString('hex') })
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-nodebench'))
  return new Engine(`sqlite://${d}/bench.db`)
}

function template (w) {
  if (w === 'W1' || w === 'W3') return 'name: job\nstep_templates:\n  - {name: noop}\n'
  if (w === 'W2') return 'name: diamond\nstep_templates:\n  - {name: A}\n  - {name: B, depends_on_step: A}\n  - {name: C, depends_on_step: A}\n  - {name: D, depends_on_steps: [B, C]}\n'
  const lines = ['name: chain', 'step_templates:', '  - {name: s1, handler_class: step}']
  for (let k = 2; k <= CHAIN; k++) lines.push(`  - {name: s${k}, handler_class: step, depends_on_step: s${k - 1}}`)
  return lines.join('\n') + '\n'
}

function handlers (engine, w, first) {
  const mark = () => { if (first.t === null) first.t = performance.now() }
  if (w === 'W1' || w === 'W3') engine.handler('noop', () => { mark(); return { ok: true } })
  else if (w === 'W2') {
    engine.handler('A', (s) => { mark(); return { wf: s.context.wf, a: 1 } })
    engine.handler('B', (s) => ({ wf: s.results.A.wf, b: 2 }))
    engine.handler('C', (s) => ({ wf: s.results.A.wf, c: 3 }))
    engine.handler('D', (s) => {
      if (s.results.B.b !== 2 || s.results.C.c !== 3 || s.results.B.wf !== s.context.wf) throw new PermanentError(`D saw ${JSON.stringify(s.results)}`)
      return { wf: s.context.wf, d: 4 }
    })
  } else {
    engine.handler('step', (s) => {
      mark()
      const parents = Object.values(s.results)
      const x = (parents.length ? parents[0].x : 0) + 1
      if (s.name === `s${CHAIN}` && x !== CHAIN) throw new PermanentError(`chain ended at ${x}`)
      return { x }
    })
  }
}

async function throughput (w) {
  const engine = fresh()
  await engine.registerTemplate(template(w))
  const first = { t: null }
  handlers(engine, w, first)
  let steps, tasks
  if (w === 'W1') {
    tasks = steps = 20000
    for (let i = 0; i < tasks; i += 1000) await engine.createTasks(Array.from({ length: 1000 }, (_, j) => ({ name: 'job', context: { i: i + j } })))
  } else if (w === 'W2') {
    tasks = 2000
    for (let i = 0; i < tasks; i++) await engine.createTask('diamond', { wf: i })
    steps = 4 * tasks
  } else {
    tasks = 20
    for (let i = 0; i < tasks; i++) await engine.createTask('chain', { wf: i })
    steps = tasks * CHAIN
  }
  await engine.runWorker({ concurrency: CONCURRENCY, untilIdle: true })
  const end = performance.now()
  const done = (await engine.listTasks({ status: 'complete', limit: tasks + 1 })).length
  if (done !== tasks) throw new Error(`${done} of ${tasks} complete`)
  return { steps_per_s: steps / ((end - first.t) / 1000) }
}

async function latency () {
  const engine = fresh()
  await engine.registerTemplate(template('W3'))
  handlers(engine, 'W3', { t: null })
  const ac = new AbortController()
  const worker = engine.runWorker({ concurrency: CONCURRENCY, signal: ac.signal })
  const lat = []
  for (let i = 0; i < 310; i++) {
    const t0 = performance.now()
    const t = await engine.waitForTask(await engine.createTask('job', { i }), { timeout: 30 })
    const dt = performance.now() - t0
    if (t.status !== 'complete') throw new Error(t.status)
    if (i >= 10) lat.push(dt)
  }
  ac.abort()
  await worker
  lat.sort((a, b) => a - b)
  const pct = (p) => lat[Math.max(1, Math.min(lat.length, Math.ceil(p / 100 * lat.length))) - 1]
  return { p50_ms: pct(50), p95_ms: pct(95), p99_ms: pct(99) }
}

const dur = await fresh().durability()
const conditions = `${dur.description}; worker concurrency ${CONCURRENCY}, prefetch ${2 * CONCURRENCY}, batch window 1 ms`
console.error(`# conditions: ${conditions}`)
if (!dur.durable && !args.allowUnsafe) {
  console.error(`refusing to report figures measured without durable commits (${dur.description}); pass --allow-unsafe`)
  process.exit(2)
}

const results = new Map()
for (let rep = 0; rep < args.reps; rep++) {
  for (const w of args.workload.split(',')) {
    const m = w === 'W3' ? await latency() : await throughput(w)
    console.error(`rep ${rep + 1} ${w}: ` + Object.entries(m).map(([k, v]) => `${k}=${v.toFixed(3)}`).join(' '))
    for (const [k, v] of Object.entries(m)) {
      const key = `${w} ${k}`
      if (!results.has(key)) results.set(key, [])
      results.get(key).push(v)
    }
  }
}
const median = (v) => { const s = [...v].sort((a, b) => a - b); const n = s.length; return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2 }
console.log(`# node handlers, ${args.backend}, medians of ${args.reps}${dur.durable ? '' : ' -- NOT DURABLE'}`)
console.log(`# conditions: ${conditions}`)
for (const [k, v] of [...results.entries()].sort()) console.log(`${k} ${median(v).toFixed(3)} [reps: ${v.map((x) => x.toFixed(3)).join(', ')}]`)
