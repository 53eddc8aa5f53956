// An engine on a fresh database of the backend under test: TASKER_TEST_BACKEND=sqlite (default,
// a file in a temporary directory) or postgres (DATABASE_URL, one fresh schema per engine).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { Engine } from 'tasker'

export const BACKEND = process.env.TASKER_TEST_BACKEND || 'sqlite'

export function freshDb () {
  if (BACKEND === 'postgres') {
    if (!process.env.DATABASE_URL) throw new Error('TASKER_TEST_BACKEND=postgres needs DATABASE_URL (scripts/test.sh starts a server)')
    return { url: process.env.DATABASE_URL, options: { schema: 'node_' + crypto.randomBytes(6).toString('hex') } }
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-node-'))
  return { url: `sqlite://${dir}/tasker.db`, options: {} }
}

export function freshEngine () {
  const db = freshDb()
  const engine = new Engine(db.url, db.options)
  engine.db = db
  return engine
}

export const step = (task, name) => task.steps.find((s) => s.name === name)
