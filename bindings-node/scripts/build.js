#!/usr/bin/env node
// Builds the native addon (`tasker.node`) with cargo when the package sits in the Tasker
// repository (npm install ./bindings-node, or the absolute path from another project). A
// package from `npm pack` carries a prebuilt tasker.node and needs no Rust toolchain.
//
//   node scripts/build.js           build unless an up-to-date addon is present
//   node scripts/build.js --force   always build (prepack)
'use strict'
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const pkg = path.resolve(__dirname, '..')
const addon = path.join(pkg, 'tasker.node')
const workspace = path.resolve(pkg, '..')
const inRepo = fs.existsSync(path.join(workspace, 'Cargo.toml')) && fs.existsSync(path.join(pkg, 'Cargo.toml'))
const force = process.argv.includes('--force')

if (!inRepo) {
  if (fs.existsSync(addon)) process.exit(0)
  console.error('tasker: no prebuilt tasker.node in this package and no Tasker repository around it to build one from')
  process.exit(1)
}
if (!force && process.env.TASKER_NODE_SKIP_BUILD === '1' && fs.existsSync(addon)) process.exit(0)

const profile = process.env.TASKER_NODE_PROFILE || 'release'
const args = ['build', '--locked', '-p', 'tasker-node']
if (profile === 'release') args.push('--release')
console.error(`tasker: cargo ${args.join(' ')} (in ${workspace})`)
execFileSync('cargo', args, { cwd: workspace, stdio: 'inherit' })
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(workspace, process.env.CARGO_TARGET_DIR)
  : path.join(workspace, 'target')
const built = path.join(targetDir, profile === 'release' ? 'release' : 'debug', 'libtasker_node.so')
fs.copyFileSync(built, addon + '.tmp')
fs.renameSync(addon + '.tmp', addon)
console.error(`tasker: built ${addon}`)
