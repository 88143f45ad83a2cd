#!/usr/bin/env bash
# `make bench`: the load scenario (PSK2 over one BTP link) against the node and the JS reference
# stand-in (ilp-connector 21.3.0 + psk2 0.2.1) in the same run, for each shape, and one table.
#
#   BENCH_SHAPE=both|embedded|postgres   (both)  embedded: SQLite, in-memory channel layer, no
#                                        worker; postgres: Postgres + Redis started here (their own
#                                        SVC_DIR and ports, scripts/services.sh) and a Celery worker
#   BENCH_N=10000 BENCH_C=50             payments and how many in flight (100000: sustained)
#   BENCH_WARMUP=2000                    payments the load generator sends one at a time before
#                                        the timed load, in the same process (LOAD_WARMUP): its
#                                        own JIT is then warm (with 20, the harness's default, the
#                                        first ~1.5 s of each load are the JS sender's warm-up on
#                                        either side, and they make both sides' p99 at 10k)
#   BENCH_ROUNDS=1                       node, reference, then reference, node, ... on the same node
#                                        (two or more: each shape's means and their ratio too)
#   BENCH_PROFILE=1                      py-spy record of Daphne (and the worker) during the node's load, and
#                                        pg_stat_statements on the bench Postgres (top statements)
#   BENCH_MIN_BALANCE=-1000000000000000  the sender's limit (its holds then take the shared credit
#                                        path with Redis); `none`: an unlimited peer
#   BENCH_PEER_LIMITS="--throughput N ..." more add_peer limit flags for the sender (it always has
#                                        the defaults: 10,000 Prepares/s, burst 20,000, 1,000 in
#                                        flight, no throughput limit; links.limits)
#   BENCH_PORT=8792  BENCH_OUT=/tmp/bench-<ts>
#   SVC_DIR=/tmp/ilp-bench-services PG_PORT=55440 REDIS_PORT=56440
# Prints per shape: node payments/s and p99, reference payments/s and p99, ratio, RSS at start
# and end (node's Daphne, reference's stand-in), the load average, and the CPU ms per payment of
# each process (Daphne, worker, Postgres, Redis; the stand-in; the sender) during each timed
# load (scripts/bench_ticks.py samples them; the warm-up is left out). The node's ledger
# must have one receipt per fulfilled payment (durable before Fulfill), else the run fails.
# Needs the harness installed by scripts/interop.sh (.interop/harness). Run it under
# `flock /tmp/interop.lock` (the Makefile target does).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
HARNESS="$ROOT/.interop/harness"
SHAPE="${BENCH_SHAPE:-both}"
N="${BENCH_N:-10000}"
C="${BENCH_C:-50}"
ROUNDS="${BENCH_ROUNDS:-1}"
export LOAD_WARMUP="${BENCH_WARMUP:-2000}"
PORT="${BENCH_PORT:-8792}"
OUT="${BENCH_OUT:-/tmp/bench-$(date -u +%Y%m%dT%H%M%SZ)}"
export SVC_DIR="${SVC_DIR:-/tmp/ilp-bench-services}" PG_PORT="${PG_PORT:-55440}" REDIS_PORT="${REDIS_PORT:-56440}"
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"
case "$SHAPE" in both) SHAPES="embedded postgres" ;; embedded|postgres) SHAPES="$SHAPE" ;;
  *) echo "BENCH_SHAPE=both|embedded|postgres" >&2; exit 2 ;; esac
if [ ! -d "$HARNESS/node_modules" ]; then
  INTEROP_ONLY=none INTEROP_REFERENCE=0 INTEROP_MODE_A=0 INTEROP_STREAM_SEND=0 \
    INTEROP_STREAM_MULTIHOP=0 INTEROP_STREAM_LOAD=0 bash scripts/interop.sh >/dev/null 2>&1 || true
  [ -d "$HARNESS/node_modules" ] || { echo "bench: the interop harness is not installed"; exit 2; }
fi

PIDS=()
stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
SERVICES=0
stop_services() { [ "$SERVICES" = 0 ] || bash scripts/services.sh stop; SERVICES=0; }
# The services are daemons started from here: stopped on any exit (they also inherit our
# file descriptors, a lock's included; the Makefile takes the lock with `flock -o`).
trap 'stop_all; stop_services' EXIT

# The ledger writer's batches (the node's /metrics: count, commits, seconds), for the deltas
# around a load: "batches commits seconds".
writer_stats() {
  curl -fs -m 5 "http://127.0.0.1:$PORT/metrics" 2>/dev/null | awk '
    /^ilp_ledger_batch_seconds_count / {n=$2} /^ilp_ledger_batch_size_sum / {c=$2}
    /^ilp_ledger_batch_seconds_sum / {s=$2} END {printf "%d %d %.6f\n", n, c, s}' || echo "0 0 0"
}
rss_mb() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# One load run: the scenario's JSON line to $2 and the time it came to $2.end; the CPU ticks
# of the named process groups and of the sender, sampled through the run, to $2.ticks
# (scripts/bench_ticks.py).
run_load() {  # env-file-or-empty out.json groups...
  local envfile="$1" out="$2"; shift 2
  local g spec=() sampler
  for g in "$@"; do spec+=("$g=${GROUP[$g]}"); done
  "$BIN/python" scripts/bench_ticks.py "$out.ticks" "${spec[@]}" "sender~scenarios/08-load.js" &
  sampler=$!
  (
    [ -z "$envfile" ] || { set -a; . "$envfile"; set +a; }
    cd "$HARNESS" && LOAD_N="$N" LOAD_C="$C" LOAD_DURATION_S="${BENCH_DURATION_S:-$((N / 20 + 120))}" \
      node scenarios/08-load.js 2>>"$out.stderr.log"
  ) | while IFS= read -r line; do printf '%s\t%s\n' "$(date +%s.%N)" "$line"; done \
    | grep -P '^[0-9.]+\t\{' | tail -n 1 >"$out.line" || true
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  cut -f2- "$out.line" >"$out"; cut -f1 "$out.line" >"$out.end"; rm -f "$out.line"
}
# The writer's stats once the warm-up's payments have committed (one commit each), to $1:
# the timed load's batches are the difference from there. Stopped by the caller if never.
writer_stats_after_warmup() {
  local commits0 now
  commits0=$(writer_stats | cut -d' ' -f2)
  while :; do
    now=$(writer_stats)
    if [ "$(echo "$now" | cut -d' ' -f2)" -ge $((commits0 + LOAD_WARMUP)) ]; then echo "$now" >"$1"; return; fi
    sleep 0.05
  done
}

declare -A GROUP=()
ROWS="$OUT/rows.tsv"
: >"$ROWS"
status=0
for shape in $SHAPES; do
  echo "=== bench: $shape, N=$N C=$C, load average $(loadavg) ==="
  dir="$OUT/$shape"; mkdir -p "$dir/var"
  export ILP_ADDRESS=test.sut ILP_ASSET_CODE=XRP ILP_ASSET_SCALE=9 DJANGO_DEBUG=0 LOG_LEVEL=WARNING
  export ILP_VAR_DIR="$dir/var"
  GROUP=()
  if [ "$shape" = postgres ]; then
    # shellcheck source=scripts/services.sh
    SERVICES=1
    source scripts/services.sh start
    pgq() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qtAX "$@"; }
    want=""; [ "${BENCH_PROFILE:-0}" = 1 ] && want=pg_stat_statements
    if [ "$(pgq -c 'SHOW shared_preload_libraries')" != "$want" ]; then
      if [ -n "$want" ]; then pgq -c "ALTER SYSTEM SET shared_preload_libraries = '$want'" >/dev/null
      else pgq -c "ALTER SYSTEM RESET shared_preload_libraries" >/dev/null; fi
      pg_ctl_bin="$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)/pg_ctl"
      runuser -u postgres -- "$pg_ctl_bin" -D "$SVC_DIR/pg" -m fast -w restart \
        -o "$PG_OPTS" \
        -l "$SVC_DIR/pg.log" >/dev/null
    fi
    pgq -c "DROP DATABASE IF EXISTS ilp_bench" -c "CREATE DATABASE ilp_bench" >/dev/null
    export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/ilp_bench"
    export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    GROUP[postgres]="$(head -n 1 "$SVC_DIR/pg/postmaster.pid")"
    GROUP[redis]="$(cat "$SVC_DIR/redis.pid")"
  else
    unset REDIS_URL
    rm -f "$dir/var/bench.sqlite3"*  # a fresh ledger (BENCH_OUT may be reused)
    export DATABASE_URL="sqlite:///$dir/var/bench.sqlite3"
  fi
  "$BIN/python" manage.py migrate --noinput -v0
  # A limited peer (the production shape): its holds go through the shared credit (Redis).
  limit=(); [ "${BENCH_MIN_BALANCE:--1000000000000000}" != none ] && limit=(--min-balance "${BENCH_MIN_BALANCE:--1000000000000000}")
  # shellcheck disable=SC2086  # BENCH_PEER_LIMITS is a list of flags
  "$BIN/python" manage.py add_peer alice --relation child --link btp-server --token alicetoken "${limit[@]}" ${BENCH_PEER_LIMITS:-} >/dev/null
  "$BIN/python" manage.py add_pointer bob >/dev/null
  if [ "$shape" = postgres ]; then
    [ "${BENCH_PROFILE:-0}" = 1 ] && pgq -d ilp_bench -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
    "$BIN/celery" -A interledger_site worker -l warning --concurrency 2 >"$dir/celery.log" 2>&1 &
    PIDS+=("$!"); GROUP[worker]=$!
  fi
  "$BIN/python" -m interledger_site.serve -b 127.0.0.1 -p "$PORT" interledger_site.asgi:application >"$dir/daphne.log" 2>&1 &
  DAPHNE=$!; PIDS+=("$DAPHNE"); GROUP[daphne]=$DAPHNE
  STANDIN_ENV_FILE="$dir/standin.env" STANDIN_LOG_FILE="$dir/standin.connector.log" STANDIN_PORT_BASE=7760 \
    node "$HARNESS/reference-sut/standin.js" >"$dir/standin.stdout" 2>"$dir/standin.stderr" &
  STANDIN=$!; PIDS+=("$STANDIN"); GROUP[standin]=$STANDIN
  for _ in $(seq 1 150); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/" && [ -s "$dir/standin.env" ] && break; sleep 0.2; done
  curl -fs -o /dev/null "http://127.0.0.1:$PORT/" || { echo "node did not start"; tail -30 "$dir/daphne.log"; exit 1; }
  [ -s "$dir/standin.env" ] || { echo "stand-in did not start"; tail -30 "$dir/standin.stderr"; exit 1; }
  node_groups=(daphne); [ "$shape" = postgres ] && node_groups+=(worker postgres redis)
  node_rss0=$(rss_mb "$DAPHNE"); ref_rss0=$(rss_mb "$STANDIN")
  for round in $(seq 1 "$ROUNDS"); do
    la="$(loadavg)"
    export SUT_BTP_URL="btp+ws://alice:alicetoken@127.0.0.1:$PORT/btp" SUT_SPSP_URL="http://127.0.0.1:$PORT/bob"
    SPY=""
    if [ "${BENCH_PROFILE:-0}" = 1 ]; then
      [ "$shape" = postgres ] && pgq -d ilp_bench -c "SELECT pg_stat_statements_reset()" >/dev/null
      "$BIN/py-spy" record -p "$DAPHNE" -r 100 -f speedscope -o "$dir/daphne-$round.speedscope.json" \
        >"$dir/py-spy-$round.log" 2>&1 &
      SPY=$!
      if [ "$shape" = postgres ]; then
        "$BIN/py-spy" record -p "${GROUP[worker]}" --subprocesses -r 100 -f speedscope \
          -o "$dir/worker-$round.speedscope.json" >"$dir/py-spy-worker-$round.log" 2>&1 &
        SPY="$SPY $!"
      fi
      sleep 0.5
    fi
    # The order alternates (node first in odd rounds, the reference first in even ones):
    # on a machine that slows down or speeds up over minutes, always running one side
    # second would hand it the drift in every round.
    [ $((round % 2)) -eq 0 ] && run_load "$dir/standin.env" "$dir/reference-$round.json" standin
    w0=$(writer_stats)
    writer_stats_after_warmup "$dir/node-$round.json.writer0" &
    watcher=$!
    run_load "" "$dir/node-$round.json" "${node_groups[@]}"
    kill "$watcher" 2>/dev/null || true; wait "$watcher" 2>/dev/null || true
    [ -s "$dir/node-$round.json.writer0" ] && w0=$(cat "$dir/node-$round.json.writer0")
    echo "$w0 $(writer_stats)" >"$dir/node-$round.json.writer"
    # shellcheck disable=SC2086  # SPY: the py-spy pids
    if [ -n "$SPY" ]; then kill -INT $SPY 2>/dev/null || true; wait $SPY 2>/dev/null || true; fi
    if [ "${BENCH_PROFILE:-0}" = 1 ] && [ "$shape" = postgres ]; then
      pgq -d ilp_bench -F $'\t' -c "SELECT calls, round(total_exec_time::numeric,1) AS ms, round(mean_exec_time::numeric,3) AS mean_ms, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 160) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25" >"$dir/pg_stat_statements-$round.tsv" || true
    fi
    [ $((round % 2)) -eq 1 ] && run_load "$dir/standin.env" "$dir/reference-$round.json" standin
    echo -e "$shape\t$round\t$la\t$dir/node-$round.json\t$dir/reference-$round.json" >>"$ROWS"
  done
  node_rss1=$(rss_mb "$DAPHNE"); ref_rss1=$(rss_mb "$STANDIN")
  echo -e "$shape\trss\t$node_rss0\t$node_rss1\t$ref_rss0\t$ref_rss1" >>"$ROWS"
  # Durable before Fulfill: a receipt for every payment the harness saw fulfilled (and warm-up).
  sleep 1
  receipts="$("$BIN/python" manage.py shell -c 'from payments.models import Receipt; print(Receipt.objects.filter(account__code="receiver:bob").count())' 2>/dev/null | tail -n 1)"
  echo -e "$shape\treceipts\t$receipts" >>"$ROWS"
  stop_all
  stop_services
done

OUT="$OUT" N="$N" HZ="$HZ" ROUNDS="$ROUNDS" "$BIN/python" - <<'PY' || status=1
import json, os
out, n, hz, rounds = os.environ["OUT"], int(os.environ["N"]), int(os.environ["HZ"]), int(os.environ["ROUNDS"])
def load(path):
    try:
        text = open(path).read().strip()
    except FileNotFoundError:
        text = ""
    return json.loads(text) if text else {"ok": False, "detail": "no result line", "metrics": {}}
def cpu(path, elapsed_s):
    """CPU ms of each group (and the sender) over the timed load: the sampled series between
    the result line's time and that less the load's elapsed time, read in between samples
    by interpolation. Empty without a series or a result (a failed run)."""
    try:
        end = float(open(path + ".end").read())
        series = []
        for line in open(path + ".ticks"):
            f = line.split()
            series.append((float(f[0]), {f[i]: int(f[i + 1]) for i in range(1, len(f) - 1, 2)}))
    except (OSError, ValueError):
        return {}
    if len(series) < 2 or not elapsed_s:
        return {}
    def at(t, name):
        for (t0, a), (t1, b) in zip(series, series[1:]):
            if t0 <= t <= t1:
                x0, x1 = a.get(name, 0), b.get(name, 0)
                return x0 + (x1 - x0) * (t - t0) / (t1 - t0) if t1 > t0 else x1
        return series[-1][1].get(name, 0) if t > series[-1][0] else series[0][1].get(name, 0)
    return {k: (at(end, k) - at(end - elapsed_s, k)) * 1000 / hz for k in series[-1][1]}
table, extra, failed = [], [], False
fulfilled = {}
per_shape = {}  # shape -> [(node payments/s, reference payments/s, node p99, reference p99)]
rss, receipts = {}, {}
for line in open(f"{out}/rows.tsv"):
    f = line.rstrip("\n").split("\t")
    if f[1] == "rss":
        rss[f[0]] = f[2:]
        continue
    if f[1] == "receipts":
        receipts[f[0]] = f[2]
        continue
    shape, round_, la, node_p, ref_p = f
    node, ref = load(node_p), load(ref_p)
    m, r = node["metrics"], ref["metrics"]
    failed |= not node["ok"] or not ref["ok"]
    fulfilled[shape] = fulfilled.get(shape, 0) + int(m.get("fulfilled") or 0) + int(os.environ.get("LOAD_WARMUP", "20"))
    a, b = m.get("payments_per_sec"), r.get("payments_per_sec")
    ratio = f"{a / b:.2f}" if a and b else "-"
    p99 = lambda x: (x.get("latency") or {}).get("p99_ms", "-")
    if a and b:
        per_shape.setdefault(shape, []).append((a, b, p99(m), p99(r)))
    table.append(f"| {shape} | {round_} | {a} ({p99(m)} ms) | {b} ({p99(r)} ms) | **{ratio}** | {la} |")
    nodecpu, refcpu = cpu(node_p, m.get("elapsed_s")), cpu(ref_p, r.get("elapsed_s"))
    node_sender, ref_sender = nodecpu.pop("sender", None), refcpu.pop("sender", None)
    done_n, ref_n = int(m.get("fulfilled") or 0) or n, int(r.get("fulfilled") or 0) or n
    parts = ", ".join(f"{k} {v / done_n:.2f}" for k, v in nodecpu.items())
    total = sum(nodecpu.values()) / done_n
    senders = ""
    if node_sender is not None and ref_sender is not None:
        senders = f"; the sender (the same JS load generator) {node_sender / done_n:.2f} against the node, {ref_sender / ref_n:.2f} against the reference"
    extra.append(f"  {shape} r{round_} CPU ms/payment: node: {parts} (total {total:.2f}); reference: standin {refcpu.get('standin', 0) / ref_n:.2f}{senders}")
    try:
        n0, c0, s0, n1, c1, s1 = (float(x) for x in open(node_p + ".writer").read().split())
        if n1 > n0:
            extra.append(f"  {shape} r{round_} ledger writer: {int(n1 - n0)} batches, {(c1 - c0) / (n1 - n0):.1f} commits each, {1000 * (s1 - s0) / (n1 - n0):.2f} ms per transaction (busy {100 * (s1 - s0) * (m.get('payments_per_sec') or 0) / max(done_n, 1):.0f}% of the load)")
    except (OSError, ValueError):
        pass
    if not node["ok"]:
        extra.append(f"  {shape} r{round_} node FAIL: {node['detail']}")
    if not ref["ok"]:
        extra.append(f"  {shape} r{round_} reference FAIL: {ref['detail']}")
print()
print(f"=== bench: node vs JS reference, same run, N={n} (payments/s (p99)) ===")
print("| shape | round | node | reference | ratio | load average |")
print("| --- | --- | --- | --- | --- | --- |")
print("\n".join(table))
print("\n".join(extra))
# Several rounds: node and reference alternate on a machine whose speed drifts from minute
# to minute (the same code's CPU per payment moves by a third); their means compare.
for shape, got in per_shape.items():
    if len(got) < 2:
        continue
    node_mean = sum(g[0] for g in got) / len(got)
    ref_mean = sum(g[1] for g in got) / len(got)
    ratios = [g[0] / g[1] for g in got]
    below = sum(1 for g in got if isinstance(g[2], (int, float)) and isinstance(g[3], (int, float)) and g[2] <= g[3])
    print(f"  {shape} over {len(got)} rounds: node {node_mean:.0f}/s, reference {ref_mean:.0f}/s: ratio of the means **{node_mean / ref_mean:.2f}** (rounds {min(ratios):.2f} to {max(ratios):.2f}); node p99 at or below the reference's in {below} of {len(got)}")
for shape, (n0, n1, r0, r1) in rss.items():
    print(f"  {shape} RSS MB: node (Daphne) {n0} -> {n1}; reference (stand-in) {r0} -> {r1}")
for shape, got in receipts.items():
    ok = got.isdigit() and int(got) == fulfilled.get(shape)
    failed |= not ok
    print(f"  {shape} ledger: {got} receipts for {fulfilled.get(shape)} fulfilled (warm-up included): {'exact' if ok else 'MISMATCH'}")
print("bench: " + ("FAIL" if failed else "PASS"))
raise SystemExit(1 if failed else 0)
PY
echo "results under $OUT"
exit $status
