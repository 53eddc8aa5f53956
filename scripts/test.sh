#!/usr/bin/env bash
# Runs every test of the repository. This is the README's test command; .ci/run calls it.
#
# Unless DATABASE_URL is set, a throwaway PostgreSQL is started (scripts/pg.sh: initdb + pg_ctl
# as the postgres user on a free port) and torn down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { echo "== $* ($(date +%T))"; }

if [ -z "${DATABASE_URL:-}" ]; then
  if [ ! -x "$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/initdb" ]; then
    step "installing PostgreSQL server binaries (apt-get install postgresql)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  PGDIR=$(mktemp -d /tmp/tasker-test-pg.XXXXXX)
  trap 'scripts/pg.sh stop "$PGDIR"' EXIT
  eval "$(TASKER_PG_FAST=1 scripts/pg.sh start "$PGDIR")"
  step "started PostgreSQL for the tests: $DATABASE_URL"
fi
export DATABASE_URL

# Ruby: headers and libclang for the gem's native half (rb-sys runs bindgen), Rails 6.1,
# Faraday and Bundler for the gem's Rails and API tests. All from Debian (no RubyGems registry).
# The dashboard's browser tests: Debian's Chromium, driven by playwright-core (npm, no download).
RUBY_PKGS="ruby-dev libclang-dev clang ruby-railties ruby-faraday ruby-bundler chromium"
missing=$(for p in $RUBY_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  step "installing Debian packages for the Ruby gem and the browser tests:" $missing
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

step "Sizes: no non-test file in core/, server/, cli/src or bindings-*/src over 800 lines, no function over 120"
python3 scripts/check-sizes.py

step "Rust: unit, scenario, template and CLI tests on SQLite"
# The extensions are built by their packagers below (pip; the gem's rake build).
cargo test --workspace --locked --exclude tasker-py --exclude tasker-ruby

step "Rust: the CLI on PostgreSQL (a worker process beside the CLI), tasker serve on PostgreSQL"
cargo test --locked -p tasker-cli --test cli -- --ignored
TASKER_TEST_BACKEND=postgres cargo test --locked -p tasker-cli --test serve

step "Rust: the store conformance suite (core/src/store/conformance/) on PostgreSQL"
TASKER_TEST_BACKEND=postgres cargo test --locked -p tasker-core --lib store::

step "Rust: the conformance suite on PostgreSQL"
TASKER_TEST_BACKEND=postgres cargo test --locked -p tasker-conformance --lib --test scenarios --test templates --test operator --test host --test fuzz --test original_templates --test planned --test handoff --test watch --test shapes --test fan_out --test child_tasks --test waits --test schedules --test reschedules --test deadlines --test flow_control

step "Rust: multi-process tests on PostgreSQL (workers, kill -9, server restart, SIGTERM)"
# One at a time: one of them restarts the server.
TASKER_TEST_BACKEND=postgres cargo test --locked -p tasker-conformance --test multiprocess -- --include-ignored --test-threads 1

VENV=${TASKER_VENV:-$PWD/target/venv}
step "Python: pip install ./bindings-python into $VENV (maturin builds the extension)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "pytest>=7"
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps ./bindings-python

step "Python: pytest on SQLite"
(cd bindings-python && "$VENV/bin/python" -m pytest -q tests)

step "Python: pytest on PostgreSQL"
(cd bindings-python && TASKER_TEST_BACKEND=postgres "$VENV/bin/python" -m pytest -q tests)

step "Node: npm install ./bindings-node (cargo builds the addon), TypeScript for the example"
# The package's install script builds the addon; run it explicitly too, so a future npm that
# holds back install scripts cannot leave a stale addon.
node bindings-node/scripts/build.js
npm install --no-save --no-package-lock --no-audit --no-fund ./bindings-node typescript@5 @types/node@20

step "Node: tsc --noEmit on examples/node (the types cover the whole surface)"
node_modules/.bin/tsc -p examples/node

step "Node: node --test on SQLite"
(cd bindings-node && TASKER_PYTHON="$VENV/bin/python" node --test test/*.test.mjs)

step "Node: node --test on PostgreSQL (two workers and kill -9, a Python and a Node worker on one task)"
(cd bindings-node && TASKER_PYTHON="$VENV/bin/python" TASKER_TEST_BACKEND=postgres node --test test/*.test.mjs)

step "Dashboard: npm install playwright-core; the dashboard in headless Chromium (Debian's) against tasker serve"
(cd server/tests/browser && npm ci --no-audit --no-fund >/dev/null \
  && TASKER_BIN="$PWD/../../../target/debug/tasker" npm test)

step "Ruby: rake build (cargo builds the extension), minitest on SQLite (the Rails app, the packed gem)"
(cd bindings-ruby && rake build && TASKER_PYTHON="$VENV/bin/python" rake test)

step "Ruby: minitest on PostgreSQL (two workers and kill -9, a Python and a Ruby worker on one task, Rails)"
(cd bindings-ruby && TASKER_PYTHON="$VENV/bin/python" TASKER_TEST_BACKEND=postgres rake test)

step "all tests passed"
