#!/usr/bin/env bash
# Start or stop a private PostgreSQL 15 cluster and a Redis server on loopback, for the
# second CI pass and `make interop`. Installs Debian's packages when they are missing.
#   source scripts/services.sh start   -> exports DATABASE_URL and REDIS_URL
#   bash scripts/services.sh stop
set -euo pipefail
SVC_DIR=${SVC_DIR:-/tmp/ilp-site-services}
PG_PORT=${PG_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}
# The node writes ~2.8 KB of WAL per payment (postings, receipts, their apply): at the
# defaults (max_wal_size 1GB) a checkpoint starts every ~190,000 payments, and after each
# one every page touched again goes whole into the WAL. docs/DEPLOY.md, "PostgreSQL".
PG_SETTINGS=${PG_SETTINGS:--c wal_compression=lz4 -c max_wal_size=4GB -c checkpoint_timeout=15min}
PG_OPTS="-p $PG_PORT -k $SVC_DIR -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200 $PG_SETTINGS"

_as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
  return 1
}

_install_missing() {
  local pkgs=()
  _pg_bin >/dev/null 2>&1 || pkgs+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "services: installing ${pkgs[*]}" >&2
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >&2
  fi
}

svc_start() {
  _install_missing
  local bin; bin=$(_pg_bin)
  mkdir -p "$SVC_DIR"; chmod 777 "$SVC_DIR"
  if [ ! -f "$SVC_DIR/pg/PG_VERSION" ]; then
    rm -rf "$SVC_DIR/pg"; mkdir -p "$SVC_DIR/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$SVC_DIR/pg"
    _as_pg "$bin/initdb" -D "$SVC_DIR/pg" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if ! _as_pg "$bin/pg_ctl" -D "$SVC_DIR/pg" status >/dev/null 2>&1; then
    _as_pg "$bin/pg_ctl" -D "$SVC_DIR/pg" -l "$SVC_DIR/pg.log" -w \
      -o "$PG_OPTS" start >/dev/null
  fi
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='ilp'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE ilp" >/dev/null
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save "" --appendonly no \
      --pidfile "$SVC_DIR/redis.pid" --logfile "$SVC_DIR/redis.log" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/ilp"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  echo "services: DATABASE_URL=$DATABASE_URL REDIS_URL=$REDIS_URL" >&2
}

svc_stop() {
  local bin
  if bin=$(_pg_bin) && [ -f "$SVC_DIR/pg/PG_VERSION" ]; then
    _as_pg "$bin/pg_ctl" -D "$SVC_DIR/pg" -m fast stop >/dev/null 2>&1 || true
  fi
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) svc_start ;;
  stop) svc_stop ;;
  *) echo "usage: services.sh start|stop" >&2; return 2 2>/dev/null || exit 2 ;;
esac
