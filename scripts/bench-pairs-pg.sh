#!/usr/bin/env bash
# Alternating pairs of two tasker-bench builds on PostgreSQL, each on a fresh database of its
# own, the databases swapped halfway (on the peers' server the database a build runs on moved
# W3 by 4-7 %: see docs/BENCHMARKS.md, "Re-check of the final commit").
#   OLD=/path/to/old/tasker-bench NEW=target/release/tasker-bench PAIRS=10 \
#     scripts/bench-pairs-pg.sh [WORKLOADS]     # default W1,W2,W3,W4; prints each run's figures
# PGHOST/PGPORT (default 127.0.0.1:55499, shared/bench/peers/pg.sh) and user postgres.
set -euo pipefail
OLD=${OLD:?OLD=path of the first tasker-bench}
NEW=${NEW:-target/release/tasker-bench}
PAIRS=${PAIRS:-10}
W=${1:-W1,W2,W3,W4}
HOST=${PGHOST:-127.0.0.1}
PORT=${PGPORT:-55499}
URL=postgres://postgres@$HOST:$PORT
fresh() {
  psql -h "$HOST" -p "$PORT" -U postgres -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_a" -c "DROP DATABASE IF EXISTS bench_b" \
    -c "CREATE DATABASE bench_a" -c "CREATE DATABASE bench_b" >/dev/null
}
run() { # pair build binary database
  echo "=== pair $1 $2"
  "$3" --backend postgres --pg-url "$URL/$4" --workload "$W" --reps 1 2>&1 |
    grep -E '^W[1-4] (steps_per_s|p50_ms|create_p50_ms|p99_ms) ' || true
}
half=$((PAIRS / 2))
fresh
for i in $(seq 1 "$half"); do run "$i" old "$OLD" bench_a; run "$i" new "$NEW" bench_b; done
fresh
for i in $(seq $((half + 1)) "$PAIRS"); do run "$i" old "$OLD" bench_b; run "$i" new "$NEW" bench_a; done
