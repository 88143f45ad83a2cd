#!/usr/bin/env bash
# Load-profile the node: start it alone (fresh database), run the interop harness's load
# scenario against it, report payments/s, latency and Daphne's RSS before/after, and
# optionally record a py-spy profile of the Daphne process while the load runs.
#
#   LOAD_N=10000 LOAD_C=50      load size and concurrency (harness defaults 2000 / 50)
#   PROFILE=1                   py-spy record (flamegraph SVG + speedscope JSON) during the load
#   PROFILE_IDLE=1              ... including idle/waiting threads (--idle)
#   PROFILE_FLAGS="--gil"       more py-spy flags (--gil: only samples holding the GIL)
#   PROFILE_RATE=200            py-spy samples per second
#   ROUNDS=1                    run the load scenario this many times on the same node
#   PORT=8791                   where the node listens
#   OUT=/tmp/loadprofile-<ts>   where everything goes
#
# Uses DATABASE_URL/REDIS_URL like scripts/interop.sh (Postgres: a fresh database
# `ilp_loadprofile`; Redis: a Celery worker is started), else a fresh SQLite file. Needs
# the harness installed by scripts/interop.sh (.interop/harness) and, for PROFILE=1,
# py-spy in the venv (`.venv/bin/pip install py-spy`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
PORT="${PORT:-8791}"
HARNESS="$ROOT/.interop/harness"
OUT="${OUT:-/tmp/loadprofile-$(date -u +%Y%m%dT%H%M%SZ)}"
ROUNDS="${ROUNDS:-1}"
mkdir -p "$OUT"
[ -d "$HARNESS/node_modules" ] || { echo "run scripts/interop.sh once first (installs the harness)"; exit 2; }

PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

export ILP_ADDRESS=test.sut ILP_ASSET_CODE=XRP ILP_ASSET_SCALE=9
export ILP_VAR_DIR="$OUT/var"
export DJANGO_DEBUG=0 LOG_LEVEL=WARNING
mkdir -p "$ILP_VAR_DIR"
if [[ "${DATABASE_URL:-}" == postgres* ]]; then
  base="${DATABASE_URL%/*}"
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS ilp_loadprofile" -c "CREATE DATABASE ilp_loadprofile" >/dev/null
  export DATABASE_URL="$base/ilp_loadprofile"
  DB=postgres
else
  export DATABASE_URL="sqlite:///$ILP_VAR_DIR/load.sqlite3"
  DB=sqlite
fi
[ -n "${REDIS_URL:-}" ] && { redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true; }

"$BIN/python" manage.py migrate --noinput -v0
"$BIN/python" manage.py add_peer alice --relation child --link btp-server --token alicetoken >/dev/null
"$BIN/python" manage.py add_pointer bob >/dev/null

CELERY=""
if [ -n "${REDIS_URL:-}" ]; then
  "$BIN/celery" -A interledger_site worker -l warning --concurrency 2 >"$OUT/celery.log" 2>&1 &
  CELERY=$!
  PIDS+=("$CELERY")
fi
# CPU ticks of the Celery worker and its pool processes (0 without one).
celery_cpu() {
  local total=0 p
  [ -n "$CELERY" ] || { echo 0; return; }
  for p in "$CELERY" $(pgrep -P "$CELERY" || true); do
    total=$((total + $(sed -E 's/^.*\) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}
"$BIN/python" -m interledger_site.serve -b 127.0.0.1 -p "$PORT" interledger_site.asgi:application >"$OUT/daphne.log" 2>&1 &
DAPHNE=$!
PIDS+=("$DAPHNE")
for _ in $(seq 1 150); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.2; done
curl -fs -o /dev/null "http://127.0.0.1:$PORT/" || { echo "node did not start"; tail -30 "$OUT/daphne.log"; exit 1; }

rss() { awk '/VmRSS/ {print $2}' "/proc/$DAPHNE/status"; }
# CPU ticks (utime+stime) per thread of Daphne: "tid name ticks" lines. The threads keep
# their creation order: the event loop (main), asgiref's database_sync_to_async thread,
# the ledger writer, the receipt applier.
threads_cpu() {
  for t in /proc/"$DAPHNE"/task/*; do
    printf '%s %s %s\n' "${t##*/}" "$(tr ' ' '_' <"$t/comm")" \
      "$(sed -E 's/^.*\) //' "$t/stat" | awk '{print $12 + $13}')"
  done
}
HZ=$(getconf CLK_TCK)
export SUT_BTP_URL="btp+ws://alice:alicetoken@127.0.0.1:$PORT/btp"
export SUT_SPSP_URL="http://127.0.0.1:$PORT/bob"

echo "db=$DB redis=${REDIS_URL:+yes} LOAD_N=${LOAD_N:-2000} LOAD_C=${LOAD_C:-50} rounds=$ROUNDS out=$OUT"
echo "rss_kb before: $(rss)"
for round in $(seq 1 "$ROUNDS"); do
  SPY=""
  if [ "${PROFILE:-0}" = 1 ]; then
    # shellcheck disable=SC2086  # PROFILE_FLAGS: extra py-spy flags, e.g. "--gil"
    "$BIN/py-spy" record -p "$DAPHNE" -r "${PROFILE_RATE:-200}" ${PROFILE_IDLE:+--idle} ${PROFILE_FLAGS:-} \
      -f speedscope -o "$OUT/profile-$round.speedscope.json" >"$OUT/py-spy-$round.log" 2>&1 &
    SPY=$!
    sleep 0.5
  fi
  threads_cpu >"$OUT/cpu-before-$round.txt"
  celery_before=$(celery_cpu)
  (cd "$HARNESS" && TIMEFORMAT="%U %S" && { time node scenarios/08-load.js 2>"$OUT/load-$round.stderr.log"; } 2>"$OUT/harness-cpu-$round.txt") \
    | grep -E '^\{' | tail -1 | tee "$OUT/load-$round.json" \
    | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s),m=r.metrics,l=m.latency||{};
        console.log(`round ${process.argv[1]}: ${r.ok?"PASS":"FAIL"} ${m.fulfilled}/${m.n} c=${m.concurrency} ${m.payments_per_sec}/s p50 ${l.p50_ms} p90 ${l.p90_ms} p99 ${l.p99_ms} max ${l.max_ms} ms errors ${JSON.stringify(m.errors)}`)})' "$round"
  if [ -n "$SPY" ]; then
    kill -INT "$SPY" 2>/dev/null || true
    wait "$SPY" 2>/dev/null || true
  fi
  threads_cpu >"$OUT/cpu-after-$round.txt"
  # CPU ms per payment, per Daphne thread (the main thread is the event loop).
  awk -v hz="$HZ" -v n="${LOAD_N:-2000}" 'NR==FNR {b[$1]=$3; next}
    { d=$3-b[$1]; if (d>0) { printf "  cpu %-22s %7.3f ms/payment\n", $2, 1000*d/hz/n; t+=d } }
    END { printf "  cpu %-22s %7.3f ms/payment\n", "daphne total", 1000*t/hz/n }' \
    "$OUT/cpu-before-$round.txt" "$OUT/cpu-after-$round.txt"
  awk -v n="${LOAD_N:-2000}" '{ printf "  cpu %-22s %7.3f ms/payment (whole scenario, warm-up and start included)\n", "harness (node)", 1000*($1+$2)/n }' "$OUT/harness-cpu-$round.txt"
  if [ -n "$CELERY" ]; then
    sleep 1  # let the worker finish the last receipts
    awk -v hz="$HZ" -v n="${LOAD_N:-2000}" -v d="$(( $(celery_cpu) - celery_before ))" \
      'BEGIN { printf "  cpu %-22s %7.3f ms/payment\n", "celery worker", 1000*d/hz/n }'
  fi
  echo "rss_kb after round $round: $(rss)"
done
if [ "$DB" = sqlite ]; then
  echo "receipts: $(sqlite3 "$ILP_VAR_DIR/load.sqlite3" 'select count(*), sum(applied_at is null) from payments_receipt' 2>/dev/null || echo '?')"
fi
echo "results under $OUT"
