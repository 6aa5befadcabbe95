#!/usr/bin/env bash
# The services a shared ocrcat catalog runs on, started on this machine for tests and development:
#   PostgreSQL (Debian's package)  lake metadata        127.0.0.1:${OCRCAT_PG_PORT:-54329}
#   moto's S3 server               lake data + images   127.0.0.1:${OCRCAT_S3_PORT:-59000}
#   Ray, a head and a second node  distributed ingest   127.0.0.1:${OCRCAT_RAY_PORT:-6390}
#
#   scripts/services.sh start    # start what is not running; prints the environment tests read
#   scripts/services.sh env      # print that environment again (eval "$(scripts/services.sh env)")
#   scripts/services.sh stop
#
# Everything lives under $OCRCAT_SERVICES (default /tmp/ocrcat-services) and listens on loopback only.
set -euo pipefail

ROOT=${OCRCAT_SERVICES:-/tmp/ocrcat-services}
PG_PORT=${OCRCAT_PG_PORT:-54329}
S3_PORT=${OCRCAT_S3_PORT:-59000}
RAY_PORT=${OCRCAT_RAY_PORT:-6390}
# The Python whose bin/ holds ray and moto_server: $PYTHON, else the checkout's .venv, else python3.
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ] && [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; fi
PY=${PYTHON:-$(command -v python3)}
BIN=$(dirname "$PY")
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)

# PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` user.
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

start_postgres() {
  if [ -z "$PG_BIN" ]; then
    echo "installing PostgreSQL (Debian's package)…" >&2
    [ "$(id -u)" = 0 ] || { echo "PostgreSQL is missing: apt-get install postgresql (needs root)" >&2; return 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  mkdir -p "$ROOT/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$ROOT/pg"
  if [ ! -f "$ROOT/pg/data/PG_VERSION" ]; then
    as_pg "'$PG_BIN/initdb' -D '$ROOT/pg/data' -A trust -U ocrcat >'$ROOT/pg/initdb.log' 2>&1"
  fi
  if ! as_pg "'$PG_BIN/pg_ctl' -D '$ROOT/pg/data' status" >/dev/null 2>&1; then
    as_pg "'$PG_BIN/pg_ctl' -D '$ROOT/pg/data' -l '$ROOT/pg/log' -w -t 120 \
      -o \"-p $PG_PORT -k '$ROOT/pg' -c listen_addresses=127.0.0.1\" start" </dev/null >/dev/null
  fi
}

start_s3() {
  "$PY" -c "import moto.server" 2>/dev/null || { echo "moto's server is missing: pip install 'moto[server]'" >&2; return 1; }
  if ! curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/"; then
    # `exec` so the recorded pid is moto's own; every stream redirected so nothing keeps the
    # caller's stdout open (a held pipe makes `eval "$(services.sh start)"` wait forever).
    (cd "$ROOT" && exec nohup "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" </dev/null >"$ROOT/moto.log" 2>&1) &
    echo $! >"$ROOT/moto.pid"
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && return 0; sleep 0.2; done
    echo "moto's S3 server did not start: see $ROOT/moto.log" >&2; return 1
  fi
}

start_ray() {
  [ -x "$BIN/ray" ] || { echo "Ray is missing: pip install 'ray[default]'" >&2; return 1; }
  if ! timeout 60 "$BIN/ray" status --address "127.0.0.1:$RAY_PORT" >/dev/null 2>&1; then
    # Two nodes on one machine: a head and a second raylet, one CPU each, so tasks really spread.
    export RAY_USAGE_STATS_ENABLED=0
    timeout 300 "$BIN/ray" start --head --node-ip-address 127.0.0.1 --port "$RAY_PORT" --num-cpus 1 \
      --include-dashboard false --disable-usage-stats --temp-dir "$ROOT/ray" </dev/null >"$ROOT/ray-head.log" 2>&1 ||
      { echo "Ray's head node did not start: see $ROOT/ray-head.log" >&2; return 1; }
    timeout 300 "$BIN/ray" start --address "127.0.0.1:$RAY_PORT" --node-ip-address 127.0.0.1 --num-cpus 1 \
      </dev/null >"$ROOT/ray-node.log" 2>&1 ||
      { echo "Ray's second node did not start: see $ROOT/ray-node.log" >&2; return 1; }
  fi
}

pg_env()  { echo "export OCRCAT_TEST_POSTGRES='host=127.0.0.1 port=$PG_PORT user=ocrcat dbname=postgres'"; }
s3_env()  { echo "export OCRCAT_TEST_S3_ENDPOINT='http://127.0.0.1:$S3_PORT'"; }
ray_env() { echo "export OCRCAT_TEST_RAY='127.0.0.1:$RAY_PORT'"; }

case "${1:-}" in
  start)
    # Each service that starts prints its variable; one that fails says why on stderr and the
    # command exits 1, so the tests that need it skip (with that reason) instead of hanging.
    mkdir -p "$ROOT"
    failed=0
    if start_postgres; then pg_env; else echo "PostgreSQL did not start: see $ROOT/pg/log" >&2; failed=1; fi
    if start_s3; then s3_env; else failed=1; fi
    if start_ray; then ray_env; else failed=1; fi
    exit $failed ;;
  env) pg_env; s3_env; ray_env ;;
  stop)
    "$BIN/ray" stop --force >/dev/null 2>&1 || true
    [ -f "$ROOT/moto.pid" ] && kill "$(cat "$ROOT/moto.pid")" 2>/dev/null || true
    [ -n "$PG_BIN" ] && as_pg "'$PG_BIN/pg_ctl' -D '$ROOT/pg/data' -m fast stop" >/dev/null 2>&1 || true ;;
  *) echo "usage: $0 start|env|stop" >&2; exit 2 ;;
esac
