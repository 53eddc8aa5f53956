#!/usr/bin/env bash
# Runs every test of the repository. This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { echo "== $* ($(date +%T))"; }

step "Rust: unit, scenario and template tests (cargo test --workspace)"
cargo test --workspace --locked

step "all tests passed"
