// Dashboard render benchmark (not a test: prints figures). A 1,000-step task's page, from
// navigation until all 1,000 nodes are drawn; the task list over 100,000 tasks, first and last
// page. Medians of 5 runs in Debian's headless Chromium against `tasker serve` on SQLite.
//   node server/tests/browser/bench-render.mjs [--tasks 100000]
import { Db, call, launch } from './harness.mjs';

const args = process.argv.slice(2);
const TASKS = Number(args[args.indexOf('--tasks') + 1] || 100000) || 100000;
const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

const steps = [];
for (let i = 0; i < 1000; i++) {
  // 100 levels of 10: step i depends on the step 10 before it and its neighbour there.
  const deps = i >= 10 ? [`s${i - 10}`, ...(i % 10 ? [`s${i - 11}`] : [])] : [];
  steps.push(`  - {name: s${i}, handler_class: command, handler_config: {command: ["true"]}${deps.length ? `, depends_on_steps: [${deps.join(', ')}]` : ''}}`);
}
const db = new Db();
db.register(`name: big\nstep_templates:\n${steps.join('\n')}\n`);
db.register('name: one\nstep_templates:\n  - {name: a, handler_class: command, handler_config: {command: ["true"]}}\n');
const base = await db.serve();
const browser = await launch();
try {
  const big = (await call(base, 'POST', '/tasks', { name: 'big' })).body.task.task_id;
  const times = [];
  for (let r = 0; r < 5; r++) {
    const p = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    const t0 = Date.now();
    await p.goto(`${base}/#/tasks/${big}`);
    await p.waitForFunction(() => document.querySelectorAll('.node').length === 1000, null, { timeout: 30000 });
    times.push(Date.now() - t0);
    await p.close();
  }
  console.log(`1,000-step task page, navigation to 1,000 nodes drawn: median ${median(times)} ms (runs: ${times.join(', ')})`);

  // Fill the list: POST /tasks from 16 concurrent clients.
  const t1 = Date.now();
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < TASKS) { next++; await call(base, 'POST', '/tasks', { name: 'one' }); }
  }));
  console.log(`created ${TASKS} tasks in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
  for (const [label, hash] of [['first page', '#/tasks'], ['last page', `#/tasks?offset=${TASKS - 25 + 1}`]]) {
    const times = [];
    let rows = 0;
    for (let r = 0; r < 5; r++) {
      const p = await browser.newPage();
      let bytes = 0;
      p.on('response', async (resp) => { if (resp.url().includes('/tasks?')) bytes += (await resp.body()).length; });
      const t0 = Date.now();
      await p.goto(`${base}/${hash}`);
      await p.waitForSelector('#task-rows tr[data-task]');
      await p.waitForFunction(() => /of \d+/.test(document.querySelector('#range').textContent));
      times.push(Date.now() - t0);
      rows = await p.locator('#task-rows tr[data-task]').count();
      if (r === 4) console.log(`  ${label}: ${rows} rows shown, ${await p.locator('#range').textContent()}, ${bytes} bytes of task JSON read`);
      await p.close();
    }
    console.log(`task list over ${TASKS + 1} tasks, ${label}: median ${median(times)} ms (runs: ${times.join(', ')})`);
  }
} finally {
  await browser.close();
  db.stop();
}
