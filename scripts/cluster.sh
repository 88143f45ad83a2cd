#!/usr/bin/env bash
# The production shape on loopback: nginx in front of N Daphne processes, a Celery worker
# and Celery beat, on PostgreSQL + Redis. See docs/DEPLOY.md.
#
#   bash scripts/cluster.sh start     (or `make cluster`)
#   bash scripts/cluster.sh status
#   bash scripts/cluster.sh stop
#   bash scripts/cluster.sh revive    start those of its processes that are not running (after
#                                     a crash or a kill -9), leave the others alone
#   bash scripts/cluster.sh interop   start with the interop identity, run the interop suite
#                                     through nginx, stop; exits with the suite's status
#
#   CLUSTER_DAPHNES=3            Daphne processes
#   CLUSTER_PORT=8080            where nginx listens (127.0.0.1 unless CLUSTER_HOST)
#   CLUSTER_DAPHNE_PORT=8101     the first Daphne's port; the others follow (8102, 8103, ...)
#   CLUSTER_HOST=127.0.0.1       nginx's listen address
#   CLUSTER_DIR=var/cluster      run directory: pid files, logs/, nginx.conf, prometheus/
#   CLUSTER_WORKER_CONCURRENCY=2 Celery worker processes
# DATABASE_URL and REDIS_URL: used as given; when either is unset, `scripts/services.sh
# start` runs (and installs) a private PostgreSQL + Redis and provides both. A missing
# Postgres database is created. DJANGO_* and ILP_* pass through from the environment to
# every process (ILP_PUBLIC_URL defaults to nginx's URL, DJANGO_DEBUG to 0).
# nginx (Debian's package) is installed when missing; it runs as a child of this script's
# session with the config generated into the run directory, never /etc/nginx.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
N="${CLUSTER_DAPHNES:-3}"
HOST="${CLUSTER_HOST:-127.0.0.1}"
PORT="${CLUSTER_PORT:-8080}"
DAPHNE_PORT="${CLUSTER_DAPHNE_PORT:-8101}"
RUN="${CLUSTER_DIR:-$ROOT/var/cluster}"
LOGS="$RUN/logs"
PROM="$RUN/prometheus"
URL="http://$HOST:$PORT"

log() { echo "cluster: $*" >&2; }

# --- processes -----------------------------------------------------------------------------

_pid_of() {  # the pid in $RUN/$1.pid if that process is alive, else nothing
  local f="$RUN/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # Ours, not a process that got the number of one that is gone.
  local cmd; cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmd" == *interledger_site* || "$cmd" == *"$RUN/nginx.conf"* ]] || return 1
  echo "$pid"
}

_names() {  # every process of the cluster, in start order
  local i
  for i in $(seq 1 "$N"); do echo "daphne-$i"; done
  echo celery-worker
  echo celery-beat
  echo nginx
}

_spawn() {  # _spawn NAME CMD...: start in the background, stdio to logs/NAME.log
  local name=$1; shift
  "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

_stop() {  # _stop NAME...: TERM them all, wait up to 15 s, then KILL what is left
  local name pid pids=() names=()
  for name in "$@"; do
    if pid=$(_pid_of "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$name")
    fi
    rm -f "$RUN/$name.pid"
  done
  local i
  for _ in $(seq 1 150); do
    local alive=0
    for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${names[$i]} (${pids[$i]}) did not stop in 15 s: KILL"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
}

_wait_http() {  # _wait_http URL SECONDS NAME: until URL answers 2xx
  local url=$1 secs=$2 name=$3 i
  for i in $(seq 1 $((secs * 5))); do
    curl -fs -o /dev/null --max-time 5 "$url" && return 0
    if [ -n "$name" ] && ! _pid_of "$name" >/dev/null; then
      log "$name exited; the end of logs/$name.log:"; tail -30 "$LOGS/$name.log" >&2; return 1
    fi
    sleep 0.2
  done
  log "$url did not answer in ${secs} s"; return 1
}

# --- environment ---------------------------------------------------------------------------

_services() {
  if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    local db="${DATABASE_URL:-}" redis="${REDIS_URL:-}"
    # shellcheck source=services.sh
    source "$ROOT/scripts/services.sh" start
    if [ -n "$db" ]; then export DATABASE_URL="$db"; fi
    if [ -n "$redis" ]; then export REDIS_URL="$redis"; fi
  fi
  if [[ "$DATABASE_URL" == postgres* ]]; then
    local name="${DATABASE_URL##*/}"; name="${name%%\?*}"
    psql "${DATABASE_URL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$name'" | grep -q 1 \
      || psql "${DATABASE_URL%/*}/postgres" -qc "CREATE DATABASE \"$name\"" >/dev/null
  else
    log "DATABASE_URL is not PostgreSQL ($DATABASE_URL): several processes on SQLite are not the production shape"
  fi
  export DJANGO_DEBUG="${DJANGO_DEBUG:-0}"
  export ILP_PUBLIC_URL="${ILP_PUBLIC_URL:-$URL}"
  export PROMETHEUS_MULTIPROC_DIR="$PROM"
}

_nginx_bin() {
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    log "installing nginx"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx >&2
  fi
  command -v nginx 2>/dev/null || echo /usr/sbin/nginx
}

_nginx_conf() {  # the config, generated: nothing under /etc is read but mime.types
  local static_root=$1 i
  mkdir -p "$RUN/nginx"
  cat <<EOF
# Generated by scripts/cluster.sh; edits are lost at the next start.
worker_processes auto;
EOF
  # A location with proxy_set_header of its own inherits none from the server: every
  # proxied location includes these. nginx is the edge: the client is $remote_addr,
  # whatever X-Forwarded-For it sent. Daphne runs with --proxy-headers and takes the client
  # address and port (Daphne reads X-Forwarded-Port as the client's) and the scheme
  # (request.is_secure()) from these headers.
  cat >"$RUN/proxy_headers.conf" <<'EOF'
proxy_set_header Host $http_host;
proxy_set_header X-Forwarded-For $remote_addr;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header X-Forwarded-Port $remote_port;
EOF
  # As root, nginx would switch its workers to "nobody", who cannot read this tree.
  if [ "$(id -u)" = 0 ]; then echo "user root;"; fi
  cat <<EOF
pid $RUN/nginx.pid.master;
error_log $LOGS/nginx-error.log warn;
events { worker_connections 4096; }

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    # upstream: which Daphne answered (the spread over them, and who holds which socket).
    log_format ilp '\$remote_addr [\$time_local] "\$request" \$status \$body_bytes_sent '
                   '\$request_time upstream=\$upstream_addr';
    access_log $LOGS/nginx-access.log ilp;
    client_body_temp_path $RUN/nginx/client_body;
    proxy_temp_path $RUN/nginx/proxy;
    fastcgi_temp_path $RUN/nginx/fastcgi;
    uwsgi_temp_path $RUN/nginx/uwsgi;
    scgi_temp_path $RUN/nginx/scgi;
    sendfile on;
    server_tokens off;
    # An ILP packet is at most 32 KiB and API bodies are small.
    client_max_body_size 1m;

    # least_conn spreads requests over the Daphnes and keeps long-lived WebSockets (BTP
    # peers, dashboards) from piling up on one. A POST is never retried on another Daphne
    # (nginx's default: no non_idempotent): a Prepare must not leave the node twice.
    upstream ilp_daphnes {
        least_conn;
EOF
  for i in $(seq 1 "$N"); do
    echo "        server 127.0.0.1:$((DAPHNE_PORT + i - 1)) max_fails=1 fail_timeout=5s;"
  done
  cat <<EOF
        keepalive 64;
    }

    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      close;
    }

    server {
        listen $HOST:$PORT;
        server_name _;

        proxy_http_version 1.1;
        proxy_connect_timeout 5s;

        location /static/ {
            alias $static_root/;
            expires 1h;
        }

        # Peer names are labels: Prometheus scrapes from loopback (or a Daphne directly).
        location = /metrics {
            allow 127.0.0.1;
            allow ::1;
            deny all;
            proxy_set_header Connection "";
            include $RUN/proxy_headers.conf;
            proxy_pass http://ilp_daphnes;
        }

        # WebSockets: BTP peers and the browsers' live pages. Daphne pings every 20 s, so
        # an idle link carries traffic well inside these timeouts.
        location = /btp {
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_buffering off;
            include $RUN/proxy_headers.conf;
            proxy_pass http://ilp_daphnes;
        }
        location /ws/ {
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_buffering off;
            include $RUN/proxy_headers.conf;
            proxy_pass http://ilp_daphnes;
        }

        # HTTP: ILP-over-HTTP holds a request until the next hop answers (at most
        # ILP_MAX_HOLD_TIME_MS, 30 s by default): 60 s leaves room.
        location / {
            proxy_set_header Connection "";
            proxy_read_timeout 60s;
            proxy_send_timeout 60s;
            include $RUN/proxy_headers.conf;
            proxy_pass http://ilp_daphnes;
        }
    }
}
EOF
}

_spawn_daphne() {  # _spawn_daphne I: the I-th Daphne, on DAPHNE_PORT + I - 1
  # --websocket_timeout -1: a BTP link lives as long as its peer keeps it (Daphne's
  # default closes every WebSocket after 24 h).
  _spawn "daphne-$1" "$BIN/python" -m interledger_site.serve -b 127.0.0.1 -p "$((DAPHNE_PORT + $1 - 1))" --proxy-headers \
    --websocket_timeout -1 --application-close-timeout 15 interledger_site.asgi:application
}
_spawn_worker() {
  _spawn celery-worker "$BIN/celery" -A interledger_site worker -l info \
    --concurrency "${CLUSTER_WORKER_CONCURRENCY:-2}" --hostname "worker@%h-$PORT"
}
_spawn_beat() {
  _spawn celery-beat "$BIN/celery" -A interledger_site beat -l info \
    --schedule "$RUN/celerybeat-schedule" --pidfile=
}

# --- commands ------------------------------------------------------------------------------

cluster_start() {
  local running=() name
  for name in $(_names); do _pid_of "$name" >/dev/null && running+=("$name"); done
  if [ ${#running[@]} -gt 0 ]; then
    log "already running (${running[*]}): stop it first"; return 1
  fi
  [[ "$N" =~ ^[1-9][0-9]*$ ]] || { log "CLUSTER_DAPHNES must be a positive number"; return 2; }
  local nginx; nginx=$(_nginx_bin)
  _services
  mkdir -p "$RUN" "$LOGS"
  rm -f "$RUN"/*.pid
  rm -rf "$PROM"; mkdir -p "$PROM"   # fresh samples: the old processes' counters are gone

  log "migrations (once, before the Daphnes start)"
  "$BIN/python" manage.py migrate --noinput -v0
  local static_root
  static_root=$("$BIN/python" -c 'import django, os; os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings"); django.setup(); from django.conf import settings; print(settings.STATIC_ROOT)')
  "$BIN/python" manage.py collectstatic --noinput -v0

  local i
  for i in $(seq 1 "$N"); do _spawn_daphne "$i"; done
  _spawn_worker
  _spawn_beat
  for i in $(seq 1 "$N"); do
    _wait_http "http://127.0.0.1:$((DAPHNE_PORT + i - 1))/healthz" 60 "daphne-$i" || { cluster_stop; return 1; }
  done

  _nginx_conf "$static_root" >"$RUN/nginx.conf"
  "$nginx" -t -q -e "$LOGS/nginx-error.log" -c "$RUN/nginx.conf" -p "$RUN" -g 'daemon off;' 2>>"$LOGS/nginx-error.log" \
    || { log "nginx refused the config:"; tail -5 "$LOGS/nginx-error.log" >&2; cluster_stop; return 1; }
  _spawn nginx "$nginx" -e "$LOGS/nginx-error.log" -c "$RUN/nginx.conf" -p "$RUN" -g 'daemon off;'
  _wait_http "$URL/readyz" 60 nginx || { curl -s "$URL/readyz" >&2 || true; cluster_stop; return 1; }

  log "up: $URL (nginx) -> $N Daphne(s) on 127.0.0.1:$DAPHNE_PORT..$((DAPHNE_PORT + N - 1)), Celery worker + beat"
  log "  DATABASE_URL=$DATABASE_URL REDIS_URL=$REDIS_URL"
  log "  ready: $URL/readyz   metrics: $URL/metrics   BTP: ${URL/http/btp+ws}/btp   logs: $LOGS"
}

cluster_stop() {
  local others=() f
  # nginx first (no new requests), then the rest together: beat, the worker, the Daphnes
  # (also those beyond the current CLUSTER_DAPHNES, from a start with more of them).
  _stop nginx
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] && others+=("$(basename "$f" .pid)")
  done
  [ ${#others[@]} -eq 0 ] || _stop "${others[@]}"
  log "stopped"
}

cluster_revive() {
  # What a process supervisor would do after a crash: the missing processes come back with
  # the same command lines, on the same database (the environment must be the one the
  # cluster was started with); the running ones are not touched.
  [ -f "$RUN/nginx.conf" ] || { log "no cluster was started in $RUN: start it"; return 1; }
  _services
  mkdir -p "$LOGS"
  local i started=()
  for i in $(seq 1 "$N"); do
    _pid_of "daphne-$i" >/dev/null || { _spawn_daphne "$i"; started+=("daphne-$i"); }
  done
  _pid_of celery-worker >/dev/null || { _spawn_worker; started+=(celery-worker); }
  _pid_of celery-beat >/dev/null || { _spawn_beat; started+=(celery-beat); }
  for i in $(seq 1 "$N"); do
    _wait_http "http://127.0.0.1:$((DAPHNE_PORT + i - 1))/healthz" 60 "daphne-$i" || return 1
  done
  if ! _pid_of nginx >/dev/null; then
    local nginx; nginx=$(_nginx_bin)
    _spawn nginx "$nginx" -e "$LOGS/nginx-error.log" -c "$RUN/nginx.conf" -p "$RUN" -g 'daemon off;'
    started+=(nginx)
  fi
  _wait_http "$URL/readyz" 60 nginx || return 1
  log "revived: ${started[*]:-nothing was down}"
}

cluster_status() {
  local name pid rc=0
  for name in $(_names); do
    if pid=$(_pid_of "$name"); then
      printf '%-14s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-14s stopped\n' "$name"; rc=3
    fi
  done
  printf '%-14s ' readyz
  curl -s --max-time 10 "$URL/readyz" || printf 'no answer'
  echo
  return $rc
}

cluster_interop() {
  # The identity the interop harness expects (as scripts/interop.sh exports it), a fresh
  # database, then the suite through nginx (scripts/interop.sh sets up the peers and
  # pointers in the cluster's database). The harness runs on loopback, so the node may
  # call loopback URLs (HTTP-OER callbacks, SPSP).
  export ILP_ADDRESS="${INTEROP_ILP_ADDRESS:-test.sut}" ILP_ASSET_CODE=XRP ILP_ASSET_SCALE=9
  export LOG_LEVEL="${LOG_LEVEL:-WARNING}" ILP_ALLOW_PRIVATE_URLS=1
  export ILP_VAR_DIR="${ILP_VAR_DIR:-$RUN/var}"
  mkdir -p "$ILP_VAR_DIR"
  _services
  if [[ "$DATABASE_URL" == postgres* ]]; then
    # <the given database's name>_interop: several checkouts may share one server.
    local base="${DATABASE_URL%/*}" db="${DATABASE_URL##*/}"
    db="${db%%\?*}_interop"
    psql "$base/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" \
      -c "CREATE DATABASE \"$db\"" >/dev/null
    export DATABASE_URL="$base/$db"
  fi
  redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true
  mkdir -p "$LOGS"; : >"$LOGS/nginx-access.log"   # this run's requests only (counted below)
  cluster_start || return 1
  local status=0
  # The harness's own helper processes (manage.py, a scratch node) are not the cluster's:
  # their samples stay out of its metrics.
  env -u PROMETHEUS_MULTIPROC_DIR INTEROP_EXTERNAL=1 INTEROP_PORT="$PORT" \
    bash "$ROOT/scripts/interop.sh" || status=$?
  # Through nginx to every Daphne: each must have answered part of the suite.
  local i port served
  for i in $(seq 1 "$N"); do
    port=$((DAPHNE_PORT + i - 1))
    served=$(grep -c "upstream=127.0.0.1:$port\$" "$LOGS/nginx-access.log" || true)
    log "daphne-$i (:$port) answered $served requests through nginx"
    if [ "$served" = 0 ]; then log "daphne-$i answered nothing: the suite did not run on $N Daphnes"; status=1; fi
  done
  cluster_stop
  return $status
}

case "${1:-}" in
  start) cluster_start ;;
  stop) cluster_stop ;;
  status) cluster_status ;;
  restart) cluster_stop; cluster_start ;;
  revive) cluster_revive ;;
  interop) cluster_interop ;;
  *) echo "usage: cluster.sh start|stop|status|restart|revive|interop" >&2; exit 2 ;;
esac
