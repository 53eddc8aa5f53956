// The dashboard of `tasker serve` in a real headless browser (Debian's Chromium via
// playwright-core): live list, a failed task's page, retry and resolve from the page, auth.
// Screenshots go to target/browser-artifacts (TASKER_DOCS_SCREENSHOTS=1 also writes the two
// under docs/ that the README shows).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, copyFileSync } from 'node:fs';
import { createHmac } from 'node:crypto';
import { join } from 'node:path';
import { Db, call, launch, artifacts, root } from './harness.mjs';

const template = (db) => `
name: pipeline
namespace_name: shop
version: 1.0.0
step_templates:
  - name: fetch
    handler_class: command
    handler_config: {command: ["sh", "-c", "echo '{\\"rows\\": 3}'"]}
  - name: flaky
    handler_class: command
    depends_on_step: fetch
    default_retry_limit: 1
    handler_config: {command: ["sh", "-c", "test -f ${db.path('ok')} && echo '{\\"ok\\": true}' || (echo 'the upstream file is missing' >&2; exit 3)"]}
  - name: report
    handler_class: command
    depends_on_steps: [fetch, flaky]
    handler_config: {command: ["sh", "-c", "echo '{\\"done\\": true}'"]}
`;

let browser;
const dbs = [];
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); for (const d of dbs) d.stop(); });

function freshDb() {
  const db = new Db();
  dbs.push(db);
  db.register(template(db));
  return db;
}

async function create(base, token) {
  const r = await call(base, 'POST', '/tasks', { name: 'pipeline', namespace: 'shop', context: { order: 7 } }, token);
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.task.task_id;
}

async function page() {
  const p = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  p.on('pageerror', (e) => { throw e; });
  return p;
}

const shot = (p, name) => p.screenshot({ path: join(artifacts(), name), fullPage: true });

test('the list shows a task created over the API and its status changes live when a worker completes it', async () => {
  const db = freshDb();
  const base = await db.serve();
  const p = await page();
  await p.goto(base + '/');
  await p.waitForSelector('#task-rows');
  await p.evaluate(() => { window.notReloaded = true; });
  const id = await create(base);
  const row = p.locator(`tr[data-task="${id}"]`);
  await row.waitFor();
  assert.equal(await row.locator('.badge').textContent(), 'pending');
  writeFileSync(db.path('ok'), '');
  db.startWorker();
  await p.waitForSelector(`tr[data-task="${id}"] .badge[data-state="complete"]`, { timeout: 20000 });
  assert.equal(await p.evaluate(() => window.notReloaded), true, 'updated without a reload');
  assert.match(await row.textContent(), /shop\.pipeline@1\.0\.0/);
  assert.match(await row.textContent(), /3 \/ 3/);
  await shot(p, 'tasks-list.png');
  if (process.env.TASKER_DOCS_SCREENSHOTS) copyFileSync(join(artifacts(), 'tasks-list.png'), join(root, 'docs/dashboard-tasks.png'));
  await p.close();
});

test("a failed task's page shows the error and the DAG with the failed step marked; retry from the page completes it", async () => {
  const db = freshDb();
  const base = await db.serve();
  const id = await create(base);
  db.work(); // flaky fails for good (one attempt, no `ok` file): the task is in error
  const p = await page();
  await p.goto(`${base}/#/tasks/${id}`);
  await p.waitForSelector('.node[data-step="flaky"][data-state="error"]');
  assert.equal(await p.getAttribute('.node[data-step="fetch"]', 'data-state'), 'complete');
  assert.equal(await p.getAttribute('.node[data-step="report"]', 'data-state'), 'pending');
  assert.equal(await p.locator('#task-status .badge').textContent(), 'error');
  // The failed step is chosen first: its error and attempts are shown.
  await p.waitForSelector('#step-panel .step-error');
  assert.match(await p.locator('#step-panel .step-error').textContent(), /upstream file is missing|exit/);
  assert.match(await p.locator('#step-panel').textContent(), /1 of 1/);
  assert.match(await p.locator('#context').textContent(), /"order": 7/);
  await p.waitForSelector('#history tr');
  await shot(p, 'task-failed.png');
  if (process.env.TASKER_DOCS_SCREENSHOTS) copyFileSync(join(artifacts(), 'task-failed.png'), join(root, 'docs/dashboard-task.png'));

  writeFileSync(db.path('ok'), '');
  db.startWorker();
  await p.click('#retry-step');
  await p.waitForSelector('#confirm[open]');
  await p.click('#confirm-ok');
  await p.waitForSelector('#task-status .badge[data-state="complete"]', { timeout: 20000 });
  assert.equal(await p.getAttribute('.node[data-step="flaky"]', 'data-state'), 'complete');
  assert.equal(await p.getAttribute('.node[data-step="report"]', 'data-state'), 'complete');
  await shot(p, 'task-retried.png');
  await p.close();
});

test('resolving with invalid JSON is refused; with valid JSON the step is resolved and the task completes', async () => {
  const db = freshDb();
  const base = await db.serve();
  const id = await create(base);
  db.work();
  db.startWorker(); // runs `report` once flaky is resolved
  const p = await page();
  await p.goto(`${base}/#/tasks/${id}`);
  await p.waitForSelector('.node[data-step="flaky"][data-state="error"]');
  await p.click('.node[data-step="flaky"]');
  await p.fill('#resolve-json', '{"fixed": tru');
  assert.match(await p.locator('#resolve-error').textContent(), /Not valid JSON/);
  await p.click('#resolve-step');
  assert.equal(await p.locator('#confirm[open]').count(), 0, 'no confirmation for invalid JSON');
  assert.equal(await p.getAttribute('#resolve-json', 'aria-invalid'), 'true');
  const still = await call(base, 'GET', `/tasks/${id}/workflow_steps/flaky`);
  assert.equal(still.body.step.status, 'error', 'nothing was sent');

  await p.fill('#resolve-json', '{"fixed": true, "by": "ops"}');
  assert.equal(await p.locator('#resolve-error').textContent(), '');
  await p.click('#resolve-step');
  await p.waitForSelector('#confirm[open]');
  await p.click('#confirm-ok');
  await p.waitForSelector('.node[data-step="flaky"][data-state="resolved_manually"]');
  await p.waitForSelector('#task-status .badge[data-state="complete"]', { timeout: 20000 });
  await p.click('.node[data-step="flaky"]');
  assert.match(await p.locator('#step-panel .step-results').textContent(), /"by": "ops"/);
  await p.close();
});

const fanOut = `
name: fan
namespace_name: shop
version: 1.0.0
step_templates:
  - name: plan
    type: batchable
    handler_class: command
    handler_config: {command: ["sh", "-c", "echo '{\\"$batches\\": [10, 20, 30]}'"]}
  - name: work
    type: batch_worker
    depends_on_step: plan
    handler_class: command
    handler_config:
      permanent_exit_codes: [3]
      command: ["sh", "-c", "if grep -q '\\"batch_index\\":1[,}]'; then echo 'item 20 is bad' >&2; exit 3; fi; echo '{\\"ok\\": true}'"]
  - name: total
    type: deferred_convergence
    depends_on_step: work
    handler_class: command
    handler_config: {command: ["sh", "-c", "echo '{}'"]}
`;

test("a fan-out's instances are one node; its panel lists them, each opening its own", async () => {
  const db = new Db();
  dbs.push(db);
  db.register(fanOut);
  const base = await db.serve();
  const r = await call(base, 'POST', '/tasks', { name: 'fan', namespace: 'shop', context: {} });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const id = r.body.task.task_id;
  db.work(); // the second instance fails for good: the task is in error
  const p = await page();
  await p.goto(`${base}/#/tasks/${id}`);
  const group = p.locator('.node.group[data-step="work"]');
  await group.waitFor();
  assert.equal(await group.getAttribute('data-state'), 'error', 'the group shows what needs attention');
  assert.match(await group.textContent(), /work ×3/);
  assert.equal(await p.locator('.node[data-step^="work_"]').count(), 0, 'instances are not drawn one by one');
  await group.click();
  await p.waitForSelector('#step-panel [data-instance="work_003"]');
  assert.match(await p.locator('#step-panel').textContent(), /3 instances/);
  await p.click('#step-panel [data-instance="work_002"]');
  await p.waitForSelector('#step-panel .step-error');
  assert.match(await p.locator('#step-panel .step-error').textContent(), /item 20 is bad/);
  assert.match(await p.locator('#step-panel h2').textContent(), /work_002/);
  assert.equal(await group.getAttribute('class'), 'node selected group', 'the group stays chosen');
  await shot(p, 'task-fan-out.png');
  await p.close();
});

const checkout = `
name: checkout
namespace_name: shop
version: 1.0.0
step_templates:
  - name: pay
    handler_class: command
    handler_config: {command: ["sh", "-c", "echo '{\\"$child_task\\": {\\"name\\": \\"payment\\", \\"namespace\\": \\"shop\\", \\"context\\": {\\"amount\\": 5}}}'"]}
  - name: done
    depends_on_step: pay
    handler_class: command
    handler_config: {command: ["sh", "-c", "echo '{}'"]}
`;
// No worker runs `approval`: the child waits for an operator.
const payment = `
name: payment
namespace_name: shop
version: 1.0.0
step_templates:
  - {name: approve, handler_class: approval}
`;

test('a waiting step links to its child task, and the child back to its parent', async () => {
  const db = new Db();
  dbs.push(db);
  db.register(checkout);
  db.register(payment);
  const base = await db.serve();
  const r = await call(base, 'POST', '/tasks', { name: 'checkout', namespace: 'shop', context: {} });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const id = r.body.task.task_id;
  db.work();
  const p = await page();
  await p.goto(`${base}/#/tasks/${id}`);
  await p.waitForSelector('.node[data-step="pay"][data-state="waiting"]');
  assert.equal(await p.locator('#task-parent').isHidden(), true, 'a task created by hand has no parent');
  await p.click('.node[data-step="pay"]');
  await p.waitForSelector('#step-panel #child-task');
  assert.match(await p.locator('#step-panel').textContent(), /this step waits for it/);
  const child = (await call(base, 'GET', `/tasks/${id}`)).body.task.workflow_steps[0].child_task_id;
  await p.click('#child-task');
  await p.waitForSelector('#parent-task');
  assert.match(await p.locator('#task-title').textContent(), new RegExp(`Task ${child}: shop\\.payment`));
  assert.match(await p.locator('#task-parent').textContent(), /created by its step pay/);
  await shot(p, 'task-child.png');
  // The operator approves the child; the parent's step completes and its next step runs.
  const ok = await call(base, 'POST', `/tasks/${child}/workflow_steps/approve/resolve`, { results: { by: 'ops' } });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  db.work();
  await p.click('#parent-task');
  await p.waitForSelector('#task-status .badge[data-state="complete"]', { timeout: 20000 });
  assert.equal(await p.getAttribute('.node[data-step="pay"]', 'data-state'), 'complete');
  await p.close();
});

const release = `
name: release
namespace_name: shop
version: 1.0.0
step_templates:
  - {name: approve, handler_class: wait, handler_config: {signal: approved, timeout_seconds: 86400}}
  - {name: confirm, depends_on_step: approve, handler_class: wait}
`;

test('a waiting step is an approval: Send signal and Complete with a JSON box', async () => {
  const db = new Db();
  dbs.push(db);
  db.register(release);
  const base = await db.serve();
  const r = await call(base, 'POST', '/tasks', { name: 'release', namespace: 'shop', context: {} });
  const id = r.body.task.task_id;
  db.work();
  const p = await page();
  await p.goto(`${base}/#/tasks/${id}`);
  await p.click('.node[data-step="approve"][data-state="waiting"]');
  await p.waitForSelector('#approval #send-signal');
  assert.match(await p.locator('#step-panel').textContent(), /signal approved/);
  await p.fill('#approval-json', '{"by": ');
  assert.match(await p.locator('#approval-error').textContent(), /Not valid JSON/);
  await p.fill('#approval-json', '{"by": "kim"}');
  await p.click('#send-signal');
  await p.click('#confirm-ok');
  await p.waitForSelector('#status .ok');
  const approved = await call(base, 'GET', `/tasks/${id}/workflow_steps/approve`);
  assert.deepEqual(approved.body.step.results, { by: 'kim' });
  await shot(p, 'task-approval.png');
  // The next wait has no signal: it offers Complete only.
  db.work();
  await p.click('.node[data-step="confirm"][data-state="waiting"]');
  await p.waitForSelector('#approval #complete-step');
  assert.equal(await p.locator('#send-signal').count(), 0);
  await p.fill('#approval-json', '{"ok": true}');
  await p.click('#complete-step');
  await p.click('#confirm-ok');
  await p.waitForSelector('#task-status .badge[data-state="complete"]', { timeout: 20000 });
  await p.close();
});

test('the schedules page lists next run times, and pauses and resumes a schedule', async () => {
  const db = freshDb();
  const base = await db.serve();
  const made = await call(base, 'POST', '/schedules', { name: 'nightly', template: 'pipeline', namespace: 'shop', cron: '0 2 * * *', timezone: 'Europe/Berlin' });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const p = await page();
  await p.goto(`${base}/#/schedules`);
  const row = p.locator('tr[data-name="nightly"]');
  await row.waitFor();
  assert.match(await row.textContent(), /Europe\/Berlin/);
  const next = new Date(made.body.schedule.next_run_at).toLocaleString();
  assert.equal((await row.locator('.next-run').textContent()).trim(), next);
  await row.locator('button[data-op="pause"]').click();
  await p.click('#confirm-ok');
  await p.waitForSelector('tr[data-name="nightly"] button[data-op="resume"]');
  assert.equal((await row.locator('.next-run').textContent()).trim(), 'paused');
  assert.equal((await call(base, 'GET', '/schedules/nightly')).body.schedule.paused, true);
  await shot(p, 'schedules.png');
  await row.locator('button[data-op="resume"]').click();
  await p.click('#confirm-ok');
  await p.waitForSelector('tr[data-name="nightly"] button[data-op="pause"]');
  await p.close();
});

function jwt(secret, permissions) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub: 'dash', permissions, exp: Math.floor(Date.now() / 1000) + 600 });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

test('with auth on, no data is shown before the token is given, and actions need their permission', async () => {
  const db = freshDb();
  const secret = 'dashboard-secret-0123456789';
  const base = await db.serve(['--jwt-secret', secret]);
  const admin = jwt(secret, ['tasker.task:create']);
  const id = await create(base, admin);
  db.work();
  const p = await page();
  await p.goto(`${base}/#/tasks/${id}`);
  await p.waitForSelector('#login:not([hidden])');
  assert.equal(await p.locator('.node').count(), 0);
  assert.doesNotMatch(await p.locator('body').textContent(), /pipeline|flaky/, 'no task data before the token');
  // A reader: sees the task, but retrying is refused by the server and the page says so.
  const reader = jwt(secret, ['tasker.task:show', 'tasker.workflow_step:index', 'tasker.workflow_step:show']);
  await p.fill('#token', reader);
  await p.click('#login button[type=submit]');
  await p.waitForSelector('.node[data-step="flaky"][data-state="error"]');
  await p.click('#retry-step');
  await p.click('#confirm-ok');
  await p.waitForSelector('#status .error');
  assert.match(await p.locator('#status').textContent(), /refused: you lack the permission/);
  assert.equal((await call(base, 'GET', `/tasks/${id}`, undefined, admin.replace(/./, 'x'))).status, 401);
  // The token is kept for the tab only.
  assert.equal(await p.evaluate(() => sessionStorage.getItem('tasker.token')), reader);
  assert.equal(await p.evaluate(() => localStorage.length), 0);
  await p.close();
});

test('templates and analytics render from the API', async () => {
  const db = freshDb();
  const base = await db.serve();
  await create(base);
  await create(base);
  db.work();
  const p = await page();
  await p.goto(`${base}/#/templates`);
  await p.waitForSelector('.template .node[data-step="report"]');
  assert.match(await p.locator('.template').first().textContent(), /shop\.pipeline@1\.0\.0/);
  await p.goto(`${base}/#/analytics`);
  await p.waitForSelector('#perf .card');
  assert.match(await p.locator('#perf').textContent(), /Last 24 hours/);
  await p.waitForSelector('#failing table');
  assert.match(await p.locator('#failing').textContent(), /flaky/);
  await shot(p, 'analytics.png');
  // On a phone: the page reflows instead of scrolling sideways (wide tables scroll in place).
  await p.setViewportSize({ width: 390, height: 844 });
  await p.goto(`${base}/#/tasks`);
  await p.waitForSelector('#task-rows tr[data-task]');
  const wide = await p.evaluate(() => [...document.querySelectorAll('body *')]
    .filter((el) => !el.closest('.table-wrap, .dag') && el.getBoundingClientRect().right > window.innerWidth + 1)
    .map((el) => `${el.tagName}#${el.id}.${el.className} ${Math.round(el.getBoundingClientRect().right)}`));
  assert.deepEqual(wide, [], 'no sideways scrolling: wide tables and graphs scroll in place');
  await shot(p, 'tasks-phone.png');
  await p.close();
});
