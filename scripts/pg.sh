#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for tests and benchmarks.
#
#   eval "$(scripts/pg.sh start DIR)"   start a fresh cluster in DIR on a free port and print
#                                       `export DATABASE_URL=... TASKER_PGDATA=... TASKER_PGBIN=...`
#   scripts/pg.sh stop DIR              stop it and delete DIR
#
# initdb/pg_ctl run as the `postgres` system user (created if missing; the server refuses
# root), trust auth on 127.0.0.1 only. Durability is PostgreSQL's default (fsync on,
# synchronous_commit on) unless TASKER_PG_FAST=1, which turns fsync off for quicker tests.
set -euo pipefail

PGBIN=${TASKER_PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PGBIN/initdb" ] || { echo "pg.sh: no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }

free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

case "${1:-}" in
  start)
    dir=${2:?usage: pg.sh start DIR}
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /bin/bash postgres
    mkdir -p "$dir"
    chmod 755 "$dir"
    # every parent must be traversable by the postgres user
    p=$dir; while [ "$p" != / ]; do chmod o+x "$p" 2>/dev/null || true; p=$(dirname "$p"); done
    chown postgres:postgres "$dir"
    port=$(free_port)
    as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=trust \
      --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "port = $port"
      echo "unix_socket_directories = '$dir'"
      echo "max_connections = 200"
      if [ "${TASKER_PG_FAST:-0}" = 1 ]; then
        echo "fsync = off"; echo "synchronous_commit = off"; echo "full_page_writes = off"
      fi
    } >>"$dir/data/postgresql.conf"
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$dir/data/pg_hba.conf"
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres TASKER_PGDATA=$dir/data TASKER_PGBIN=$PGBIN"
    ;;
  stop)
    dir=${2:?usage: pg.sh stop DIR}
    [ -d "$dir/data" ] && as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: pg.sh start DIR | stop DIR" >&2; exit 2 ;;
esac
