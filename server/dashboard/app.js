// Tasker dashboard: plain JavaScript over the REST API of `tasker serve` (no build step, no CDN).
// Hash routes: #/tasks, #/tasks/ID, #/templates, #/schedules, #/analytics. Live: the open view re-reads the
// API every POLL_MS (workers may run in other processes, so the server has no events to push).
'use strict';

const POLL_MS = 1500;
const BASE = document.documentElement.dataset.base || '';
const STATES = ['pending', 'in_progress', 'complete', 'error', 'cancelled', 'resolved_manually'];
const STEP_LABELS = {
  pending: 'pending', running: 'running', backing_off: 'backing off', complete: 'complete',
  error: 'error', resolved_manually: 'resolved manually', cancelled: 'cancelled', waiting: 'waiting',
};
let token = sessionStorage.getItem('tasker.token');
let timer = null;
let view = null; // {render(), poll?()}

// ---- API ----

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts = {}) {
  const headers = { accept: 'application/json' };
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = 'Bearer ' + token;
  const r = await fetch(BASE + path, {
    method: opts.method || 'GET', headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await r.text();
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
  const message = (body && body.error && body.error.message) || text || r.statusText;
  if (r.status === 401) {
    showLogin(token ? 'The token was refused: ' + message : 'This server requires a token.');
    throw new ApiError(401, message);
  }
  if (!r.ok) throw new ApiError(r.status, message);
  return body;
}

// ---- helpers ----

const $ = (sel, root = document) => root.querySelector(sel);
function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
function json(v) { return esc(JSON.stringify(v, null, 2)); }
function when(t) { return t ? esc(new Date(t).toLocaleString()) : '–'; }
function badge(state, label) {
  return `<span class="badge" data-state="${esc(state)}">${esc(label || STEP_LABELS[state] || state.replace('_', ' '))}</span>`;
}
function say(message, kind = 'ok') {
  $('#status').innerHTML = message ? `<p class="${kind}">${esc(message)}</p>` : '';
}
function ms(v) { return v == null ? '–' : v < 1000 ? `${v.toFixed(1)} ms` : `${(v / 1000).toFixed(2)} s`; }
function pct(v) { return `${(v * 100).toFixed(1)} %`; }

function confirmAction(text) {
  const d = $('#confirm');
  $('#confirm-text').textContent = text;
  return new Promise((resolve) => {
    d.onclose = () => resolve(d.returnValue === 'ok');
    d.returnValue = '';
    d.showModal();
    $('#confirm-ok').focus();
  });
}

async function act(label, fn) {
  try {
    await fn();
    say(label + ': done.');
  } catch (e) {
    if (e.status === 403) say(`${label}: refused: you lack the permission (${e.message}).`, 'error');
    else if (e.status !== 401) say(`${label}: ${e.message}`, 'error');
  }
  await refresh();
}

// ---- login ----

function showLogin(why) {
  stopPolling();
  $('#main').innerHTML = '';
  $('#main').hidden = true;
  $('#login').hidden = false;
  $('#login-why').textContent = why;
  $('#token').focus();
}

$('#login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  token = $('#token').value.trim();
  sessionStorage.setItem('tasker.token', token);
  $('#login').hidden = true;
  $('#main').hidden = false;
  route();
});

// ---- the step's state as drawn: running and backing off are told apart ----

function stepState(s, now = Date.now()) {
  if (s.status === 'in_progress') return 'running';
  if (s.status === 'error' && s.next_attempt_at && Date.parse(s.next_attempt_at) > now - 1000) return 'backing_off';
  return s.status;
}

// ---- a fan-out's instances are drawn as one node named after their batch worker ----

const ATTENTION = ['error', 'backing_off', 'running', 'waiting', 'pending', 'resolved_manually', 'cancelled', 'complete'];

function dagNodes(steps) {
  const groups = new Map();
  const nodes = [];
  for (const s of steps) {
    if (!s.instance_of) { nodes.push({ name: s.name, parents: s.parents, state: stepState(s) }); continue; }
    let g = groups.get(s.instance_of);
    if (!g) {
      g = { name: s.instance_of, parents: s.parents, instances: [] };
      groups.set(s.instance_of, g);
      nodes.push(g);
    }
    g.instances.push(s);
  }
  for (const g of groups.values()) {
    const states = g.instances.map((x) => stepState(x));
    g.state = ATTENTION.find((x) => states.includes(x)) || states[0];
  }
  return nodes;
}

// ---- DAG: layered layout (longest path from the roots), drawn as SVG ----

const NODE_W = 150, NODE_H = 34, GAP_X = 50, GAP_Y = 14;

function layout(nodes) {
  // nodes: [{name, parents: [names]}] in template order
  const index = new Map(nodes.map((n, i) => [n.name, i]));
  const level = new Array(nodes.length).fill(-1);
  const depth = (i, seen = 0) => {
    if (level[i] >= 0) return level[i];
    if (seen > nodes.length) return 0; // a cycle cannot happen (templates are DAGs); never loop
    let l = 0;
    for (const p of nodes[i].parents) {
      const j = index.get(p);
      if (j !== undefined) l = Math.max(l, depth(j, seen + 1) + 1);
    }
    level[i] = l;
    return l;
  };
  nodes.forEach((_, i) => depth(i));
  const rows = [];
  const pos = nodes.map((n, i) => {
    const l = level[i];
    rows[l] = (rows[l] || 0) + 1;
    return { x: l * (NODE_W + GAP_X) + 10, y: (rows[l] - 1) * (NODE_H + GAP_Y) + 10 };
  });
  const width = (Math.max(0, ...level) + 1) * (NODE_W + GAP_X) + 10;
  const height = Math.max(1, ...rows.filter(Boolean)) * (NODE_H + GAP_Y) + 10;
  return { index, pos, width, height };
}

function dagSvg(nodes, selected) {
  const { index, pos, width, height } = layout(nodes);
  const edges = [];
  nodes.forEach((n, i) => {
    for (const p of n.parents) {
      const j = index.get(p);
      if (j === undefined) continue;
      const a = pos[j], b = pos[i];
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      const mx = (x1 + x2) / 2;
      edges.push(`<path class="edge" d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}" marker-end="url(#arrow)"/>`);
    }
  });
  const boxes = nodes.map((n, i) => {
    const p = pos[i];
    const count = n.instances ? ` ×${n.instances.length}` : '';
    const short = n.name.length > 20 - count.length ? n.name.slice(0, 19 - count.length) + '…' : n.name;
    const label = short + count;
    const isSel = n.name === selected || (n.instances || []).some((x) => x.name === selected);
    const what = n.instances ? `${n.instances.length} instances, ` : '';
    return `<g class="node${isSel ? ' selected' : ''}${n.instances ? ' group' : ''}" data-step="${esc(n.name)}" data-state="${esc(n.state)}" tabindex="0" role="button" aria-label="${esc(n.name)}: ${what}${esc(STEP_LABELS[n.state] || n.state)}">`
      + `<title>${esc(n.name)}${count} (${what}${esc(STEP_LABELS[n.state] || n.state)})</title>`
      + `<rect x="${p.x}" y="${p.y}" width="${NODE_W}" height="${NODE_H}"></rect>`
      + `<text x="${p.x + 8}" y="${p.y + 21}">${esc(label)}</text></g>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" role="img" aria-label="Dependency graph of ${nodes.length} steps">`
    + '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#8b949e"/></marker></defs>'
    + edges.join('') + boxes.join('') + '</svg>';
}

function legend() {
  return '<ul class="legend" aria-label="Step states">'
    + Object.keys(STEP_LABELS).map((s) => `<li>${badge(s)}</li>`).join('') + '</ul>';
}

function onNodeActivate(container, fn) {
  container.onclick = (ev) => {
    const g = ev.target.closest('.node');
    if (g) fn(g.dataset.step);
  };
  container.onkeydown = (ev) => {
    const g = ev.target.closest('.node');
    if (g && (ev.key === 'Enter' || ev.key === ' ')) { ev.preventDefault(); fn(g.dataset.step); }
  };
}

// ---- views ----

function tasksView(params) {
  const f = {
    status: params.get('status') || '', namespace: params.get('namespace') || '',
    name: params.get('name') || '', since: params.get('since') || '', until: params.get('until') || '',
    limit: Number(params.get('limit') || 25), offset: Number(params.get('offset') || 0),
  };
  const main = $('#main');
  main.innerHTML = `<h1>Tasks</h1>
    <ul class="counts" id="counts" aria-label="Tasks by state"></ul>
    <form class="filters" id="filters" aria-label="Filter tasks">
      <label>Status<select name="status"><option value="">any</option>${STATES.map((s) => `<option${s === f.status ? ' selected' : ''}>${s}</option>`).join('')}</select></label>
      <label>Namespace<input name="namespace" value="${esc(f.namespace)}"></label>
      <label>Name<input name="name" value="${esc(f.name)}"></label>
      <label>Created from<input name="since" type="datetime-local" value="${esc(f.since)}"></label>
      <label>Created before<input name="until" type="datetime-local" value="${esc(f.until)}"></label>
      <label>Per page<select name="limit">${[25, 50, 100].map((n) => `<option${n === f.limit ? ' selected' : ''}>${n}</option>`).join('')}</select></label>
      <button type="submit">Apply</button>
    </form>
    <div class="table-wrap"><table aria-label="Tasks"><thead><tr><th scope="col">Id</th><th scope="col">Task</th><th scope="col">Status</th><th scope="col">Steps</th><th scope="col">Requested</th><th scope="col">Finished</th></tr></thead>
    <tbody id="task-rows"><tr><td colspan="6" class="muted">Loading…</td></tr></tbody></table></div>
    <nav class="pager" aria-label="Pages"><button class="secondary" id="prev">Previous</button><span id="range" aria-live="polite"></span><button class="secondary" id="next">Next</button></nav>`;
  const go = (over) => {
    const q = new URLSearchParams();
    const all = Object.assign({}, f, over);
    for (const [k, v] of Object.entries(all)) if (v !== '' && !(k === 'offset' && v === 0) && !(k === 'limit' && v === 25)) q.set(k, v);
    location.hash = '#/tasks' + (q.toString() ? '?' + q : '');
  };
  $('#filters').onsubmit = (ev) => {
    ev.preventDefault();
    const d = new FormData(ev.target);
    go({ status: d.get('status'), namespace: d.get('namespace').trim(), name: d.get('name').trim(), since: d.get('since'), until: d.get('until'), limit: Number(d.get('limit')), offset: 0 });
  };
  let total = 0;
  $('#prev').onclick = () => go({ offset: Math.max(0, f.offset - f.limit) });
  $('#next').onclick = () => go({ offset: f.offset + f.limit });
  return {
    async poll() {
      const q = new URLSearchParams({ limit: f.limit, offset: f.offset, sort_order: 'desc' });
      for (const k of ['status', 'namespace', 'name']) if (f[k]) q.set(k, f[k]);
      if (f.since) q.set('since', new Date(f.since).toISOString());
      if (f.until) q.set('until', new Date(f.until).toISOString());
      const list = await api('/tasks?' + q);
      total = list.pagination.total;
      $('#task-rows').innerHTML = list.tasks.length ? list.tasks.map((t) => `<tr data-task="${t.task_id}">
        <td><a href="#/tasks/${t.task_id}">${t.task_id}</a></td><td>${esc(t.full_name)}</td>
        <td>${badge(t.status)}</td><td>${t.steps_done} / ${t.steps_total}</td>
        <td>${when(t.requested_at)}</td><td>${when(t.completed_at)}</td></tr>`).join('')
        : '<tr><td colspan="6" class="muted">No tasks match.</td></tr>';
      const end = Math.min(total, f.offset + list.tasks.length);
      $('#range').textContent = total ? `${f.offset + 1}–${end} of ${total}` : '0 tasks';
      $('#prev').disabled = f.offset === 0;
      $('#next').disabled = end >= total;
      try {
        const h = await api('/health/status');
        $('#counts').innerHTML = STATES.map((s) => `<li>${badge(s)} <b>${h.metrics.tasks[s] || 0}</b></li>`).join('');
      } catch (e) {
        if (e.status === 403) $('#counts').innerHTML = '<li class="muted">Counts need the tasker.health_status:index permission.</li>';
        else throw e;
      }
    },
  };
}

function taskView(id) {
  let selected = null;
  let task = null;
  const main = $('#main');
  main.innerHTML = `<div class="task-head"><h1 id="task-title">Task ${esc(id)}</h1><span id="task-status"></span>
      <button class="danger" id="cancel-task">Cancel task</button></div>
    <p class="muted" id="task-meta"></p>
    <p id="task-parent" hidden></p>
    ${legend()}
    <div class="layout">
      <div><div class="dag" id="dag" aria-label="Steps"></div>
        <h2>Context</h2><pre id="context"></pre>
        <h2>History</h2><div class="table-wrap"><table aria-label="Transitions"><thead><tr><th scope="col">When</th><th scope="col">Step</th><th scope="col">From</th><th scope="col">To</th><th scope="col">Detail</th></tr></thead><tbody id="history"></tbody></table></div></div>
      <aside class="panel" id="step-panel" aria-live="polite"><p class="muted">Choose a step in the graph.</p></aside>
    </div>`;
  $('#cancel-task').onclick = async () => {
    if (await confirmAction(`Cancel task ${id}? Steps not started will not run.`)) {
      await act('Cancel task', () => api(`/tasks/${id}`, { method: 'DELETE' }));
    }
  };
  onNodeActivate($('#dag'), (name) => { selected = name; draw(); renderStep(); });

  function draw() {
    const nodes = dagNodes(task.workflow_steps);
    const dag = $('#dag');
    const scroll = [dag.scrollLeft, dag.scrollTop];
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest('.node');
    dag.innerHTML = dagSvg(nodes, selected);
    [dag.scrollLeft, dag.scrollTop] = scroll;
    if (focused) {
      const again = dag.querySelector(`.node[data-step="${CSS.escape(focused.dataset.step)}"]`);
      if (again) again.focus();
    }
  }

  function renderStep() {
    const panel = $('#step-panel');
    const s = task.workflow_steps.find((x) => x.name === selected);
    if (!s) {
      const list = task.workflow_steps.filter((x) => x.instance_of === selected);
      if (list.length) renderGroup(panel, list);
      return;
    }
    const editing = panel.dataset.step === s.name && $('#resolve-json', panel);
    const draft = editing ? editing.value : null;
    const answering = panel.dataset.step === s.name && $('#approval-json', panel);
    const answer = answering ? answering.value : null;
    const err = s.error || null;
    const detail = err && err.detail;
    const trace = detail && (detail.backtrace || detail.traceback || detail.stack);
    const state = stepState(s);
    panel.dataset.step = s.name;
    panel.innerHTML = `<h2>Step ${esc(s.name)}</h2>
      <dl class="kv"><dt>State</dt><dd>${badge(state)}</dd>
      <dt>Handler</dt><dd>${esc(s.handler)}</dd>
      <dt>Attempts</dt><dd>${s.attempts} of ${s.retry_limit}</dd>
      <dt>Next attempt</dt><dd>${when(s.next_attempt_at)}</dd>
      <dt>Last attempt</dt><dd>${when(s.last_attempted_at)}</dd>
      <dt>Finished</dt><dd>${when(s.processed_at)}${s.duration_ms != null ? ` (${ms(s.duration_ms)})` : ''}</dd>
      <dt>Depends on</dt><dd>${s.parents.map(esc).join(', ') || '–'}</dd>
      ${s.waiting_for && s.waiting_for.signal ? `<dt>Waits for</dt><dd>signal <code>${esc(s.waiting_for.signal)}</code></dd>` : ''}
      ${s.waiting_for && s.waiting_for.correlation_id ? `<dt>Correlation id</dt><dd><code>${esc(s.waiting_for.correlation_id)}</code></dd>` : ''}
      ${s.waiting_for && s.waiting_for.timeout_at ? `<dt>Times out</dt><dd>${when(s.waiting_for.timeout_at)}</dd>` : ''}
      ${s.child_task_id ? `<dt>Child task</dt><dd><a href="#/tasks/${esc(s.child_task_id)}" id="child-task">Task ${esc(s.child_task_id)}</a>${s.status === 'waiting' ? ' (this step waits for it)' : ''}</dd>` : ''}</dl>
      ${err ? `<h3>Error</h3><pre class="step-error">${esc(err.message)}${err.kind ? `\n(${esc(err.kind)}, attempt ${esc(err.attempt)})` : ''}</pre>` : ''}
      ${trace ? `<h3>Backtrace</h3><pre>${esc(Array.isArray(trace) ? trace.join('\n') : trace)}</pre>` : ''}
      ${detail && !trace ? `<h3>Detail</h3><pre>${json(detail)}</pre>` : ''}
      <h3>Results</h3><pre class="step-results">${json(s.results)}</pre>
      ${s.status === 'waiting' && !s.child_task_id ? `<form id="approval" aria-label="Answer the waiting step">
        <h3>Approval</h3>
        <label for="approval-json">${s.waiting_for && s.waiting_for.signal ? `Payload of signal ${esc(s.waiting_for.signal)}` : 'Results'} (JSON)</label>
        <textarea id="approval-json" spellcheck="false" aria-describedby="approval-error">${esc(answer ?? '{}')}</textarea>
        <p class="field-error" id="approval-error" role="alert"></p>
        ${s.waiting_for && s.waiting_for.signal ? '<button type="submit" id="send-signal">Send signal</button>' : ''}
        <button type="button" id="complete-step" class="secondary">Complete</button>
      </form>` : ''}
      <div class="actions">
        <button id="retry-step" ${s.status === 'error' ? '' : 'disabled'}>Retry step</button>
        <button id="cancel-step" class="secondary" ${['pending', 'error'].includes(s.status) ? '' : 'disabled'}>Cancel step</button>
      </div>
      <form id="resolve-form" aria-label="Resolve the step by hand">
        <label for="resolve-json">Resolve with results (JSON)</label>
        <textarea id="resolve-json" spellcheck="false" aria-describedby="resolve-error">${esc(draft ?? '{}')}</textarea>
        <p class="field-error" id="resolve-error" role="alert"></p>
        <button type="submit" id="resolve-step" ${['pending', 'error', 'waiting'].includes(s.status) ? '' : 'disabled'}>Resolve step</button>
      </form>`;
    const area = $('#resolve-json', panel);
    const check = () => {
      try { JSON.parse(area.value); area.setAttribute('aria-invalid', 'false'); $('#resolve-error').textContent = ''; return true; } catch (e) {
        area.setAttribute('aria-invalid', 'true'); $('#resolve-error').textContent = 'Not valid JSON: ' + e.message; return false;
      }
    };
    area.oninput = check;
    if (editing) { area.focus(); check(); }
    const approval = $('#approval', panel);
    if (approval) {
      const box = $('#approval-json', panel);
      const value = () => {
        try { const v = JSON.parse(box.value); box.setAttribute('aria-invalid', 'false'); $('#approval-error').textContent = ''; return { v }; } catch (e) {
          box.setAttribute('aria-invalid', 'true'); $('#approval-error').textContent = 'Not valid JSON: ' + e.message; return null;
        }
      };
      box.oninput = value;
      const signal = s.waiting_for && s.waiting_for.signal;
      approval.onsubmit = async (ev) => {
        ev.preventDefault();
        const got = value();
        if (!got || !signal) return;
        if (await confirmAction(`Send signal ${signal} to task ${id}?`)) await act('Send signal', () => api(`/tasks/${id}/signals/${encodeURIComponent(signal)}`, { method: 'POST', body: { payload: got.v } }));
      };
      $('#complete-step', panel).onclick = async () => {
        const got = value();
        if (!got) return;
        if (await confirmAction(`Complete step ${s.name} with these results?`)) await act('Complete step', () => api(`/tasks/${id}/workflow_steps/${encodeURIComponent(s.name)}/complete`, { method: 'POST', body: { results: got.v } }));
      };
    }
    $('#retry-step').onclick = async () => {
      if (await confirmAction(`Retry step ${s.name} with a fresh set of attempts?`)) await act('Retry step', () => api(`/tasks/${id}/workflow_steps/${encodeURIComponent(s.name)}/retry`, { method: 'POST', body: {} }));
    };
    $('#cancel-step').onclick = async () => {
      if (await confirmAction(`Cancel step ${s.name} and every step that depends on it?`)) await act('Cancel step', () => api(`/tasks/${id}/workflow_steps/${encodeURIComponent(s.name)}`, { method: 'DELETE' }));
    };
    $('#resolve-form').onsubmit = async (ev) => {
      ev.preventDefault();
      if (!check()) { area.focus(); return; }
      const results = JSON.parse(area.value);
      if (await confirmAction(`Resolve step ${s.name} by hand with these results?`)) {
        area.value = '{}';
        await act('Resolve step', () => api(`/tasks/${id}/workflow_steps/${encodeURIComponent(s.name)}/resolve`, { method: 'POST', body: { results } }));
      }
    };
  }

  // A fan-out: its instances in item order, each opening its own panel.
  function renderGroup(panel, list) {
    panel.dataset.step = selected;
    panel.innerHTML = `<h2>Fan-out ${esc(selected)}</h2>
      <p class="muted">${list.length} instances, one per item.</p>
      <div class="table-wrap"><table aria-label="Instances of ${esc(selected)}"><thead><tr><th scope="col">Instance</th><th scope="col">State</th><th scope="col">Attempts</th></tr></thead>
      <tbody>${list.map((x) => `<tr><td><button class="link" data-instance="${esc(x.name)}">${esc(x.name)}</button></td><td>${badge(stepState(x))}</td><td>${x.attempts} of ${x.retry_limit}</td></tr>`).join('')}</tbody></table></div>`;
    panel.querySelectorAll('[data-instance]').forEach((b) => {
      b.onclick = () => { selected = b.dataset.instance; draw(); renderStep(); };
    });
  }

  return {
    async poll() {
      const [t, tr] = await Promise.all([api(`/tasks/${id}`), api(`/tasks/${id}/transitions`)]);
      task = t.task;
      document.title = `Task ${task.task_id} · Tasker`;
      $('#task-title').textContent = `Task ${task.task_id}: ${task.full_name}`;
      $('#task-status').innerHTML = badge(task.status);
      $('#task-meta').textContent = `Requested ${new Date(task.requested_at).toLocaleString()} by ${task.initiator} (${task.source_system}); reason: ${task.reason}; ${task.workflow_steps.length} steps.`;
      $('#cancel-task').disabled = ['complete', 'cancelled'].includes(task.status);
      const parent = $('#task-parent');
      parent.hidden = task.parent_task_id == null;
      if (task.parent_task_id != null) {
        const link = `Child task of <a href="#/tasks/${esc(task.parent_task_id)}" id="parent-task">task ${esc(task.parent_task_id)}</a>, created by its step ${esc(task.parent_step)}.`;
        if (parent.innerHTML !== link) parent.innerHTML = link;
      }
      const ctx = json(task.context);
      if ($('#context').innerHTML !== ctx) $('#context').innerHTML = ctx;
      if (!selected) {
        const first = task.workflow_steps.find((s) => s.status === 'error') || task.workflow_steps[0];
        selected = first && first.name;
      }
      draw();
      const panel = $('#step-panel');
      const typing = document.activeElement && panel.contains(document.activeElement) && ['resolve-json', 'approval-json'].includes(document.activeElement.id);
      if (!typing) renderStep();
      $('#history').innerHTML = tr.transitions.slice(-200).reverse().map((r) => `<tr><td>${when(r.created_at)}</td><td>${esc(r.step_name || '(task)')}</td><td>${esc(r.from_state || '–')}</td><td>${badge(r.to_state)}</td><td><code>${esc(JSON.stringify(r.metadata))}</code></td></tr>`).join('');
    },
  };
}

function templatesView() {
  $('#main').innerHTML = '<h1>Templates</h1><div id="templates"><p class="muted">Loading…</p></div>';
  return {
    async poll() {
      const ns = await api('/handlers');
      const parts = [];
      for (const n of ns.namespaces) {
        const list = await api(`/handlers/${encodeURIComponent(n.name)}`);
        for (const h of list.handlers) {
          const t = (await api(`/handlers/${encodeURIComponent(n.name)}/${encodeURIComponent(h.name)}`)).handler;
          const nodes = t.step_templates.map((s) => ({ name: s.name, parents: s.depends_on_steps, state: 'template' }));
          parts.push(`<section class="template" aria-labelledby="tpl-${esc(t.full_name)}"><h2 id="tpl-${esc(t.full_name)}">${esc(t.full_name)}</h2>
            ${t.description ? `<p>${esc(t.description)}</p>` : ''}
            <p class="muted">Versions: ${h.versions.map(esc).join(', ')}</p>
            <div class="dag">${dagSvg(nodes, null)}</div>
            <div class="table-wrap"><table aria-label="Steps of ${esc(t.full_name)}"><thead><tr><th scope="col">Step</th><th scope="col">Handler</th><th scope="col">Depends on</th><th scope="col">Retryable</th><th scope="col">Attempts</th><th scope="col">Skippable</th><th scope="col">Timeout</th><th scope="col">Config</th></tr></thead><tbody>
            ${t.step_templates.map((s) => `<tr><td>${esc(s.name)}</td><td>${esc(s.handler_class)}</td><td>${s.depends_on_steps.map(esc).join(', ') || '–'}</td><td>${s.default_retryable ? 'yes' : 'no'}</td><td>${s.default_retry_limit}</td><td>${s.skippable ? 'yes' : 'no'}</td><td>${s.timeout_seconds ? s.timeout_seconds + ' s' : '–'}</td><td><code>${esc(JSON.stringify(s.handler_config))}</code></td></tr>`).join('')}
            </tbody></table></div></section>`);
        }
      }
      $('#templates').innerHTML = parts.join('') || '<p class="muted">No templates registered.</p>';
    },
    once: true,
  };
}

function schedulesView() {
  $('#main').innerHTML = '<h1>Schedules</h1><p class="muted">Every worker process and <code>tasker serve</code> fire them; each tick makes one task.</p><div id="schedules" class="table-wrap"></div>';
  $('#schedules').addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-schedule]');
    if (!b) return;
    const name = b.dataset.schedule, op = b.dataset.op;
    if (await confirmAction(`${op === 'pause' ? 'Pause' : 'Resume'} schedule ${name}?`)) {
      await act(`${op === 'pause' ? 'Pause' : 'Resume'} schedule`, () => api(`/schedules/${encodeURIComponent(name)}/${op}`, { method: 'POST', body: {} }));
    }
  });
  return {
    async poll() {
      const { schedules } = await api('/schedules');
      $('#schedules').innerHTML = schedules.length ? `<table aria-label="Schedules"><thead><tr><th scope="col">Name</th><th scope="col">Template</th><th scope="col">Cron</th><th scope="col">Time zone</th><th scope="col">Next run</th><th scope="col">Last run</th><th scope="col">Fired</th><th scope="col">Skipped</th><th scope="col">Overlap · catch-up</th><th scope="col"></th></tr></thead><tbody>
        ${schedules.map((s) => `<tr data-name="${esc(s.name)}"><td>${esc(s.name)}</td><td>${esc(s.namespace)}.${esc(s.template)}${s.version ? '@' + esc(s.version) : ''}</td><td><code>${esc(s.cron)}</code></td><td>${esc(s.timezone)}</td>
          <td class="next-run">${s.paused ? 'paused' : when(s.next_run_at)}</td><td>${s.last_task_id ? `<a href="#/tasks/${esc(s.last_task_id)}">${when(s.last_run_at)}</a>` : '–'}</td>
          <td>${s.fired}</td><td>${s.skipped}</td><td>${esc(s.overlap)} · ${esc(s.catch_up)}</td>
          <td><button type="button" class="secondary" data-schedule="${esc(s.name)}" data-op="${s.paused ? 'resume' : 'pause'}">${s.paused ? 'Resume' : 'Pause'}</button></td></tr>`).join('')}
        </tbody></table>` : '<p class="muted">No schedules. Create one with <code>tasker schedule create</code>, <code>POST /schedules</code> or a template\'s <code>schedules:</code> block.</p>';
    },
  };
}

function seriesChart(series) {
  const W = 360, H = 120, max = Math.max(1, ...series.map((s) => Math.max(s.created, s.completed + s.failed)));
  const bw = W / series.length;
  const bars = series.map((s, i) => {
    const h1 = (s.created / max) * (H - 20), h2 = (s.completed / max) * (H - 20), h3 = (s.failed / max) * (H - 20);
    const x = i * bw;
    return `<rect class="bar-created" x="${x + 1}" y="${H - 14 - h1}" width="${bw / 3 - 1}" height="${h1}"><title>${esc(s.start)}: ${s.created} created</title></rect>`
      + `<rect class="bar-completed" x="${x + bw / 3}" y="${H - 14 - h2}" width="${bw / 3 - 1}" height="${h2}"><title>${s.completed} completed</title></rect>`
      + `<rect class="bar-failed" x="${x + 2 * bw / 3}" y="${H - 14 - h3}" width="${bw / 3 - 1}" height="${h3}"><title>${s.failed} failed</title></rect>`;
  }).join('');
  return `<svg class="chart" width="100%" viewBox="0 0 ${W} ${H}" role="img" aria-label="Tasks created, completed and failed over the window">${bars}<text x="0" y="${H - 2}">older</text><text x="${W - 30}" y="${H - 2}">now</text></svg>`;
}

function durationChart(stats) {
  if (!stats.length) return '<p class="muted">No data in the window.</p>';
  const max = Math.max(...stats.map((s) => s.p95_ms)) || 1;
  const rows = stats.map((s, i) => {
    const y = i * 22;
    const label = `${s.name}${s.step ? ' · ' + s.step : ''}`;
    return `<text x="0" y="${y + 14}">${esc(label.length > 28 ? label.slice(0, 27) + '…' : label)}</text>`
      + `<rect class="bar-p95" x="180" y="${y + 3}" width="${(s.p95_ms / max) * 170}" height="8"><title>p95 ${ms(s.p95_ms)}</title></rect>`
      + `<rect class="bar-p50" x="180" y="${y + 11}" width="${(s.p50_ms / max) * 170}" height="8"><title>p50 ${ms(s.p50_ms)}</title></rect>`;
  }).join('');
  return `<svg class="chart" width="360" height="${stats.length * 22}" viewBox="0 0 360 ${stats.length * 22}" role="img" aria-label="p50 (light) and p95 (dark) durations">${rows}</svg>`
    + `<table><thead><tr><th scope="col">Template · step</th><th scope="col">Runs</th><th scope="col">p50</th><th scope="col">p95</th></tr></thead><tbody>${stats.map((s) => `<tr><td>${esc(s.namespace)}.${esc(s.name)}${s.step ? ' · ' + esc(s.step) : ''}</td><td>${s.count}</td><td>${ms(s.p50_ms)}</td><td>${ms(s.p95_ms)}</td></tr>`).join('')}</tbody></table>`;
}

function analyticsView() {
  $('#main').innerHTML = '<h1>Analytics</h1><div id="perf" class="cards"></div><h2>Slowest tasks (24 h)</h2><div id="slow-tasks"></div><h2>Slowest steps (24 h)</h2><div id="slow-steps"></div><h2>Steps that fail most (24 h)</h2><div id="failing"></div>';
  return {
    async poll() {
      const [p, b] = await Promise.all([api('/analytics/performance'), api('/analytics/bottlenecks?period=24')]);
      const card = (title, a) => `<div class="card"><h3>${title}</h3><dl class="kv">
        <dt>Created</dt><dd>${a.tasks_created}</dd><dt>Throughput</dt><dd>${(a.throughput_per_second * 60).toFixed(1)} tasks/min</dd>
        <dt>Completion</dt><dd>${pct(a.completion_rate)}</dd><dt>Errors</dt><dd>${pct(a.error_rate)}</dd>
        <dt>Avg task</dt><dd>${ms(a.avg_task_duration_ms)}</dd><dt>Avg step</dt><dd>${ms(a.avg_step_duration_ms)}</dd></dl>${seriesChart(a.series)}</div>`;
      const t = p.performance_trends;
      $('#perf').innerHTML = card('Last hour', t.last_hour) + card('Last 4 hours', t.last_4_hours) + card('Last 24 hours', t.last_24_hours);
      $('#slow-tasks').innerHTML = durationChart(b.slowest_tasks);
      $('#slow-steps').innerHTML = durationChart(b.slowest_steps);
      $('#failing').innerHTML = b.error_patterns.length ? `<table><thead><tr><th scope="col">Template · step</th><th scope="col">Failed attempts</th><th scope="col">In error now</th><th scope="col">Runs</th></tr></thead><tbody>${b.error_patterns.map((f) => `<tr><td>${esc(f.namespace)}.${esc(f.name)} · ${esc(f.step)}</td><td>${f.failed_attempts}</td><td>${f.in_error}</td><td>${f.runs}</td></tr>`).join('')}</tbody></table>` : '<p class="muted">No failures in the window.</p>';
    },
  };
}

// ---- routing and polling ----

function stopPolling() { if (timer) clearTimeout(timer); timer = null; }

async function refresh() {
  if (!view) return;
  try {
    await view.poll();
    $('#live').textContent = view.once ? '' : `Live · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e.status === 401) return;
    say(e.status === 403 ? `You lack the permission to see this (${e.message}).` : e.message, 'error');
  }
}

async function loop(current) {
  await refresh();
  if (view === current && !current.once) timer = setTimeout(() => loop(current), POLL_MS);
}

function route() {
  stopPolling();
  say('');
  const [path, query] = (location.hash.slice(1) || '/tasks').split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === parts[0]) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.title = 'Tasker';
  if (parts[0] === 'tasks' && parts[1]) view = taskView(parts[1]);
  else if (parts[0] === 'templates') view = templatesView();
  else if (parts[0] === 'schedules') view = schedulesView();
  else if (parts[0] === 'analytics') view = analyticsView();
  else view = tasksView(params);
  loop(view);
}

window.addEventListener('hashchange', route);
document.addEventListener('visibilitychange', () => { if (!document.hidden && view) refresh(); });
route();
