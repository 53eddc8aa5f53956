// Shared by the browser tests and the render benchmark: the real `tasker` binary serving a
// throwaway SQLite database, worker processes, and Debian's Chromium through Playwright.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, '../../..');

/** The `tasker` binary: TASKER_BIN, else the release build, else the debug build. */
export function taskerBin() {
  if (process.env.TASKER_BIN) return process.env.TASKER_BIN;
  for (const p of ['target/release/tasker', 'target/debug/tasker']) {
    if (existsSync(join(root, p))) return join(root, p);
  }
  throw new Error('no tasker binary: run `cargo build --release -p tasker-cli` or set TASKER_BIN');
}

/** Where screenshots go (not committed): TASKER_ARTIFACTS, else target/browser-artifacts. */
export function artifacts() {
  const dir = process.env.TASKER_ARTIFACTS || join(root, 'target/browser-artifacts');
  mkdirSync(dir, { recursive: true });
  return dir;
}

export class Db {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'tasker-dash-'));
    this.url = `sqlite://${join(this.dir, 't.db')}`;
    this.children = [];
  }
  path(name) { return join(this.dir, name); }
  env(extra = {}) {
    const env = { ...process.env, ...extra };
    delete env.TASKER_API_TOKEN; delete env.TASKER_JWT_SECRET; delete env.TASKER_DATABASE_URL;
    return env;
  }
  run(args) {
    const r = spawnSync(taskerBin(), ['--db', this.url, ...args], { cwd: this.dir, env: this.env(), encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`tasker ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }
  register(yaml) {
    const p = this.path(`t${yaml.length}.yaml`);
    writeFileSync(p, yaml);
    this.run(['templates', 'register', p]);
  }
  /** Runs a worker process until nothing is left to do. */
  work() { this.run(['worker', '--until-idle']); }
  /** A worker process running in the background until `stop()`. */
  startWorker() {
    const c = spawn(taskerBin(), ['--db', this.url, 'worker'], { cwd: this.dir, env: this.env(), stdio: 'ignore' });
    this.children.push(c);
    return c;
  }
  /** `tasker serve` on a free port; resolves to its base URL. */
  async serve(extra = []) {
    const c = spawn(taskerBin(), ['--db', this.url, 'serve', '--bind', '127.0.0.1:0', ...extra], { cwd: this.dir, env: this.env(), stdio: ['ignore', 'pipe', 'inherit'] });
    this.children.push(c);
    const line = await new Promise((ok, fail) => {
      const rl = createInterface({ input: c.stdout });
      rl.once('line', ok);
      c.once('exit', (code) => fail(new Error(`tasker serve exited with ${code}`)));
    });
    const m = /serving on (\S+)/.exec(line);
    if (!m) throw new Error(`no serving line: ${line}`);
    return m[1];
  }
  stop() { for (const c of this.children) c.kill('SIGKILL'); }
}

export async function call(base, method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json; try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, body: json };
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
}
