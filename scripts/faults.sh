#!/usr/bin/env bash
# `make faults`: kill -9 the node mid-load, restart it, and check that nothing was lost.
#
#   1. A fresh database (SQLite file; with DATABASE_URL=postgres://… a fresh `ilp_faults`
#      on that server), a BTP child `alice` and a pointer `bob`; Daphne on FAULTS_PORT,
#      and with REDIS_URL a Celery worker (as the documented deployment runs it).
#   2. Load: alice pays bob with PSK2 (scripts/faults.py load, the node's own `ilp` package),
#      FAULTS_CONCURRENCY at a time; once FAULTS_KILL_AFTER Fulfills are held, kill -9 the
#      Daphne process (and the worker's process group).
#   3. Restart the same way, on the same database, and send nothing. Within 5 s of the node
#      answering, every receipt must be applied; every Fulfill the sender holds must be a
#      receipt, with its peer and receiver postings; `check_ledger` must be clean.
#   4. The next payment works (fulfilled and applied).
# Output under .faults/<timestamp>/; exit 1 on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
PY="$BIN/python"
WORK="$ROOT/.faults"
OUT="${FAULTS_RESULTS_DIR:-$WORK/results-$(date -u +%Y%m%dT%H%M%SZ)}"
KILL_AFTER="${FAULTS_KILL_AFTER:-1500}"
CONCURRENCY="${FAULTS_CONCURRENCY:-40}"
PORT="${FAULTS_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
mkdir -p "$OUT"

DAPHNE_PID=""
WORKER_PID=""
LOAD_PID=""
cleanup() {
  for p in "$LOAD_PID" "$DAPHNE_PID"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -n "$WORKER_PID" ] && kill -TERM -- "-$WORKER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

export ILP_ADDRESS=test.faults ILP_ASSET_CODE=XRP ILP_ASSET_SCALE=9
export ILP_VAR_DIR="$WORK/var"
export DJANGO_DEBUG=0 LOG_LEVEL=WARNING
mkdir -p "$ILP_VAR_DIR"
if [[ "${DATABASE_URL:-}" == postgres* ]]; then
  base="${DATABASE_URL%/*}"
  db="${FAULTS_DATABASE:-ilp_faults}"
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  export DATABASE_URL="$base/$db"
else
  rm -f "$ILP_VAR_DIR/faults.sqlite3"*
  export DATABASE_URL="sqlite:///$ILP_VAR_DIR/faults.sqlite3"
fi
if [ -n "${REDIS_URL:-}" ]; then
  redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true
  mode="${DATABASE_URL%%:*} + Redis + Celery worker"
else
  mode="${DATABASE_URL%%:*}, embedded (eager Celery)"
fi
echo "=== faults: $mode, database ${DATABASE_URL%%\?*}, port $PORT"

"$PY" manage.py migrate --noinput -v0
"$PY" manage.py add_peer alice --relation child --link btp-server --token alicetoken \
  --min-balance -1000000000000 >/dev/null
"$PY" manage.py add_pointer bob >/dev/null

start_node() {  # $1: run label
  if [ -n "${REDIS_URL:-}" ]; then
    # Its own process group, so kill -9 reaches the prefork children as well.
    setsid "$BIN/celery" -A interledger_site worker -l warning --concurrency 2 \
      >>"$OUT/celery-$1.log" 2>&1 &
    WORKER_PID=$!
  fi
  "$BIN/python" -m interledger_site.serve -b 127.0.0.1 -p "$PORT" interledger_site.asgi:application >>"$OUT/daphne-$1.log" 2>&1 &
  DAPHNE_PID=$!
  for _ in $(seq 1 300); do
    curl -fs -o /dev/null "http://127.0.0.1:$PORT/" && return 0
    kill -0 "$DAPHNE_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "the node did not start"; tail -30 "$OUT/daphne-$1.log"; exit 1
}

kill_node() {
  kill -9 "$DAPHNE_PID" 2>/dev/null || true
  wait "$DAPHNE_PID" 2>/dev/null || true
  DAPHNE_PID=""
  if [ -n "$WORKER_PID" ]; then
    kill -9 -- "-$WORKER_PID" 2>/dev/null || true
    wait "$WORKER_PID" 2>/dev/null || true
    WORKER_PID=""
  fi
}

FULFILLS="$OUT/fulfills.jsonl"
: >"$FULFILLS"
start_node first
"$PY" scripts/faults.py load --port "$PORT" --fulfills "$FULFILLS" --concurrency "$CONCURRENCY" \
  >"$OUT/load.txt" 2>"$OUT/load.err" &
LOAD_PID=$!
for _ in $(seq 1 1200); do  # up to 60 s
  [ "$(wc -l <"$FULFILLS")" -ge "$KILL_AFTER" ] && break
  kill -0 "$LOAD_PID" 2>/dev/null || { echo "the load stopped early"; cat "$OUT/load.txt" "$OUT/load.err"; exit 1; }
  sleep 0.05
done
echo "--- kill -9 the node mid-load ($(wc -l <"$FULFILLS") Fulfills held)"
kill_node
wait "$LOAD_PID" || true
LOAD_PID=""
cat "$OUT/load.txt"
"$PY" scripts/faults.py unapplied

echo "--- restart on the same database; no payment until the check is done"
READY="$OUT/ready-at"
rm -f "$READY"
# The check sets itself up first and starts its clock when the node answers.
"$PY" scripts/faults.py check --fulfills "$FULFILLS" --ready-file "$READY" --deadline 5 &
CHECK_PID=$!
start_node second
"$PY" -c 'import time; print(time.time())' >"$READY.tmp" && mv "$READY.tmp" "$READY"
status=0
wait "$CHECK_PID" || status=1
"$PY" manage.py check_ledger --differences-only >"$OUT/check_ledger.txt" 2>&1 || { status=1; cat "$OUT/check_ledger.txt"; }
tail -1 "$OUT/check_ledger.txt"

echo "--- the next payment"
NEXT="$OUT/next.jsonl"
: >"$NEXT"
"$PY" scripts/faults.py load --port "$PORT" --fulfills "$NEXT" --count 1 --concurrency 1 || status=1
cat "$NEXT" >>"$FULFILLS"
"$PY" -c 'import time; print(time.time())' >"$READY"
"$PY" scripts/faults.py check --fulfills "$FULFILLS" --ready-file "$READY" --deadline 5 || status=1

kill_node
if [ "$status" = 0 ]; then echo "faults: OK ($mode)"; else echo "faults: FAILED ($mode); logs under $OUT"; fi
exit $status
