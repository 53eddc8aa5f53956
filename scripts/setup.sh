#!/usr/bin/env bash
# Sets everything up and runs the sample workflow on the embedded SQLite default.
# This is the README's first command. Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== building the tasker CLI (release)"
cargo build --release --locked -p tasker-cli
mkdir -p target/demo
echo "== running examples/cli/etl_pipeline.yaml (database: target/demo/tasker.db)"
exec ./target/release/tasker --db sqlite://target/demo/tasker.db \
  run examples/cli/etl_pipeline.yaml --context '{"region": "emea"}'
