#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for the test suite and print its URL.
# Usage: eval "$(scripts/test_postgres.sh start)"   ...   scripts/test_postgres.sh stop
# Uses the machine's PostgreSQL binaries, installing Debian's package when none are found.
set -euo pipefail
DATA_DIR=${RPBOT_TEST_PG_DIR:-/tmp/rpbot-test-pg}
PORT=${RPBOT_TEST_PG_PORT:-55432}

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

run_as_pg() {
  # PostgreSQL refuses to run as root.
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

case "${1:-start}" in
  start)
    if ! BIN=$(find_bin); then
      echo "installing PostgreSQL (Debian package)" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
      BIN=$(find_bin)
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
      useradd --system --home-dir "$DATA_DIR" postgres
    fi
    rm -rf "$DATA_DIR"; mkdir -p "$DATA_DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DATA_DIR"
    run_as_pg "'$BIN/initdb' -D '$DATA_DIR/data' -U rpbot --auth=trust -E UTF8 >/dev/null"
    run_as_pg "'$BIN/pg_ctl' -D '$DATA_DIR/data' -l '$DATA_DIR/log' -w -o \"-h 127.0.0.1 -p $PORT -k '$DATA_DIR'\" start >/dev/null"
    echo "export RPBOT_TEST_POSTGRES_URL=postgresql+asyncpg://rpbot@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    BIN=$(find_bin) || exit 0
    [ -d "$DATA_DIR/data" ] && run_as_pg "'$BIN/pg_ctl' -D '$DATA_DIR/data' -m fast stop >/dev/null" || true
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
