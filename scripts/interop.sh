#!/usr/bin/env bash
# `make interop`: run the JS interop suite (ilp-connector 21.3.0, ilp-plugin-btp, psk2 0.2.1,
# spsp 2.0.0 from npm) against this node, and the load scenario against the JS reference
# stand-in in the same run for comparison.
#
#   INTEROP_ONLY=a,b       only these scenarios (as run-all.sh)
#   INTEROP_REFERENCE=0    skip the reference stand-in load run
#   INTEROP_MODE_A=0       skip the multihop mode A run (the node dials out to the connector)
#   PORT=8765              where the node listens
# Uses DATABASE_URL/REDIS_URL when set (a fresh database `ilp_interop` on that Postgres);
# otherwise a fresh SQLite file. With REDIS_URL it also runs a Celery worker.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
PORT="${INTEROP_PORT:-8765}"
WORK="$ROOT/.interop"
OUT="${INTEROP_RESULTS_DIR:-$WORK/results-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"

# The harness: ../shared/interop when present (the project's shared copy), else ours.
SRC="${ILP_SHARED_DIR:-$ROOT/../shared}/interop"
[ -f "$SRC/run-all.sh" ] || SRC="$ROOT/interop-harness"
HARNESS="$WORK/harness"
if [ ! -d "$HARNESS/node_modules" ] || ! cmp -s "$SRC/package-lock.json" "$HARNESS/package-lock.json"; then
  rm -rf "$HARNESS"; mkdir -p "$HARNESS"
  cp -r "$SRC/." "$HARNESS/"; chmod -R u+w "$HARNESS"
  (cd "$HARNESS" && npm ci --no-audit --no-fund --loglevel=error)
else
  # keep scenario code current without reinstalling node_modules
  (cd "$SRC" && find . -path ./node_modules -prune -o -type f -print | while read -r f; do
     mkdir -p "$HARNESS/$(dirname "$f")"; cp "$f" "$HARNESS/$f"; chmod u+w "$HARNESS/$f"; done)
fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

export ILP_ADDRESS="${INTEROP_ILP_ADDRESS:-test.sut}"
export ILP_ASSET_CODE=XRP ILP_ASSET_SCALE=9
export ILP_VAR_DIR="$WORK/var"
export DJANGO_DEBUG=0 LOG_LEVEL=WARNING
# Scenario 11's Open Payments client serves its JWKS on loopback: let the outbound guard reach it.
export ILP_ALLOW_PRIVATE_URLS=1
mkdir -p "$ILP_VAR_DIR"
# External node (`scripts/cluster.sh interop`): INTEROP_EXTERNAL=1 runs the suite against a
# node already serving on 127.0.0.1:$INTEROP_PORT, on the DATABASE_URL of this environment
# (its own, not reset) and with the ILP_* identity exported above. The peers and pointers
# below are set up in it (idempotent); no node or worker of ours is started.
EXTERNAL="${INTEROP_EXTERNAL:-0}"
if [ "$EXTERNAL" = 1 ]; then
  [ -n "${DATABASE_URL:-}" ] || { echo "INTEROP_EXTERNAL=1 needs the node's DATABASE_URL"; exit 2; }
elif [[ "${DATABASE_URL:-}" == postgres* ]]; then
  base="${DATABASE_URL%/*}"
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS ilp_interop" -c "CREATE DATABASE ilp_interop" >/dev/null
  export DATABASE_URL="$base/ilp_interop"
else
  rm -f "$ILP_VAR_DIR/interop.sqlite3"*
  export DATABASE_URL="sqlite:///$ILP_VAR_DIR/interop.sqlite3"
fi
if [ -n "${REDIS_URL:-}" ] && [ "$EXTERNAL" != 1 ]; then
  redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true
fi

"$BIN/python" manage.py migrate --noinput -v0
"$BIN/python" manage.py add_peer alice --relation child --link btp-server --token alicetoken --send-routes >/dev/null
"$BIN/python" manage.py add_peer oer --relation child --link http-sync --token oertoken >/dev/null
"$BIN/python" manage.py add_pointer bob >/dev/null
"$BIN/python" manage.py add_pointer paidapi >/dev/null

MODE_A_PORT=7790
if [ "${INTEROP_MODE_A:-1}" = 1 ]; then
  "$BIN/python" manage.py add_peer harness --relation parent --link btp-client \
    --url "btp+ws://sut:sutsecret@127.0.0.1:$MODE_A_PORT" >/dev/null
fi

if [ -n "${REDIS_URL:-}" ] && [ "$EXTERNAL" != 1 ]; then
  "$BIN/celery" -A interledger_site worker -l warning --concurrency 2 >"$OUT/celery.log" 2>&1 &
  PIDS+=("$!")
fi
if [ "$EXTERNAL" != 1 ]; then
  "$BIN/python" -m interledger_site.serve -b 127.0.0.1 -p "$PORT" interledger_site.asgi:application >"$OUT/daphne.log" 2>&1 &
  PIDS+=("$!")
fi
for _ in $(seq 1 150); do
  curl -fs -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.2
done
curl -fs -o /dev/null "http://127.0.0.1:$PORT/" || { echo "node did not start"; tail -30 "$OUT/daphne.log"; exit 1; }

export SUT_BTP_URL="btp+ws://alice:alicetoken@127.0.0.1:$PORT/btp"
export SUT_SPSP_URL="http://127.0.0.1:$PORT/bob"
# The same pointer answers SPSP4 (STREAM) to Accept: application/spsp4+json (scenario 10).
export SUT_STREAM_SPSP_URL="http://127.0.0.1:$PORT/bob"
export SUT_WALLET_ADDRESS_URL="http://127.0.0.1:$PORT/bob"  # scenario 11: Open Payments (JSON on the same URL)
export SUT_HTTP_OER_URL="http://127.0.0.1:$PORT/ilp"
export SUT_HTTP_OER_TOKEN=oertoken
export SUT_PAID_API_URL="http://127.0.0.1:$PORT/api/v1/demo/paid"
export SUT_ILP_ADDRESS="$ILP_ADDRESS"

status=0
echo "=== interop: all scenarios against the node (multihop mode B) ==="
INTEROP_RESULTS_DIR="$OUT/sut" bash "$HARNESS/run-all.sh" | tee "$OUT/sut.txt" || status=1

if [ "${INTEROP_MODE_A:-1}" = 1 ] && [[ -z "${INTEROP_ONLY:-}" || ",$INTEROP_ONLY," == *",connector-multihop,"* ]]; then
  echo "=== interop: connector-multihop mode A (the node dials out to the harness connector) ==="
  SUT_CONNECTOR_BTP_SERVER_PORT=$MODE_A_PORT SUT_CONNECTOR_BTP_SECRET=sutsecret \
    INTEROP_ONLY=connector-multihop INTEROP_RESULTS_DIR="$OUT/sut-mode-a" \
    bash "$HARNESS/run-all.sh" | tee "$OUT/sut-mode-a.txt" || status=1
fi

if [ "${INTEROP_REFERENCE:-1}" = 1 ] && [[ -z "${INTEROP_ONLY:-}" || ",$INTEROP_ONLY," == *",load,"* ]]; then
  echo "=== reference: load against the JS stand-in (ilp-connector 21.3.0 + psk2 0.2.1), same run ==="
  (
    STANDIN_ENV_FILE="$OUT/standin.env" STANDIN_LOG_FILE="$OUT/standin.connector.log" STANDIN_PORT_BASE=7700 \
      node "$HARNESS/reference-sut/standin.js" >"$OUT/standin.stdout" 2>"$OUT/standin.stderr" &
    spid=$!
    trap 'kill $spid 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do [ -s "$OUT/standin.env" ] && break; sleep 0.2; done
    set -a; . "$OUT/standin.env"; set +a
    INTEROP_ONLY=load INTEROP_RESULTS_DIR="$OUT/reference" bash "$HARNESS/run-all.sh"
  ) | tee "$OUT/reference.txt" || true
  echo
  echo "=== load, same run: node vs JS reference ==="
  printf 'node:      %s\n' "$(grep -E '^load: ' "$OUT/sut.txt" || echo 'no result')"
  printf 'reference: %s\n' "$(grep -E '^load: ' "$OUT/reference.txt" || echo 'no result')"
fi
# STREAM sending (issue 12): the node, a child of the JS stand-in, pays the stand-in's STREAM
# receiver carol (ilp-protocol-stream createServer, SPSP4 at GET /carol) with `manage.py pay`.
# A scratch node of its own (SQLite, no autostarted links): the stand-in holds one BTP socket
# per account, so the command's own BtpClient must be the only one on alice.
#   INTEROP_STREAM_SEND=0   skip it;  STREAM_SEND_AMOUNT (5000)
if [ "${INTEROP_STREAM_SEND:-1}" = 1 ] && [[ -z "${INTEROP_ONLY:-}" || ",$INTEROP_ONLY," == *",stream-send,"* ]]; then
  echo "=== stream-send: manage.py pay from a child of the JS stand-in to its STREAM receiver carol ==="
  (
    STANDIN_ENV_FILE="$OUT/standin-send.env" STANDIN_LOG_FILE="$OUT/standin-send.connector.log" \
      STANDIN_PORT_BASE=7720 node "$HARNESS/reference-sut/standin.js" \
      >"$OUT/standin-send.stdout" 2>"$OUT/standin-send.stderr" &
    spid=$!
    trap 'kill $spid 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do [ -s "$OUT/standin-send.env" ] && break; sleep 0.2; done
    set -a; . "$OUT/standin-send.env"; set +a
    amount="${STREAM_SEND_AMOUNT:-5000}"
    child="$ILP_VAR_DIR/stream-send.sqlite3"; rm -f "$child"*
    export DATABASE_URL="sqlite:///$child" ILP_ADDRESS=test.sut.alice ILP_LINKS_AUTOSTART=0
    unset REDIS_URL
    stats="${SUT_STREAM_SPSP_URL%/carol}/standin/stats"
    carol() { curl -fs "$stats" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["carolReceived"])'; }
    "$BIN/python" manage.py migrate --noinput -v0
    "$BIN/python" manage.py add_peer standin --relation parent --link btp-client --url "$SUT_BTP_URL" >/dev/null
    before="$(carol)"
    ok=1
    "$BIN/python" manage.py pay "$SUT_STREAM_SPSP_URL" "$amount" --via standin --key interop-stream-send || ok=0
    after="$(carol)"
    protocol="$("$BIN/python" manage.py shell -c "from payments.models_outgoing import OutgoingPayment as P; print(P.objects.get(idempotency_key='interop-stream-send').protocol)" 2>/dev/null | tail -1)"
    if [ "$ok" = 1 ] && [ "$protocol" = stream ] && [ $((after - before)) = "$amount" ]; then
      echo "stream-send: PASS (protocol $protocol, carol received $((after - before)) of $amount)"
    else
      echo "stream-send: FAIL (protocol '$protocol', carol received $((after - before)) of $amount)"
      exit 1
    fi
  ) | tee "$OUT/stream-send.txt" || status=1
fi
# STREAM through ilp-connector (issue 12): STREAM senders (@interledger/pay, ilp-protocol-stream)
# attached to ilp-connector 21.3.0 pay the node's pointer bob over SPSP4, in both modes of
# scenario 05 (scripts/interop-stream-multihop.js, run from the harness for its node_modules);
# then the node's ledger must hold each connection once: its receipts sum to what was delivered.
#   INTEROP_STREAM_MULTIHOP=0   skip it;  STREAM_AMOUNT (5000), STREAM_AMOUNT2 (3000)
if [ "${INTEROP_STREAM_MULTIHOP:-1}" = 1 ] && [[ -z "${INTEROP_ONLY:-}" || ",$INTEROP_ONLY," == *",stream-multihop,"* ]]; then
  echo "=== stream-multihop: STREAM senders pay a node pointer through ilp-connector 21.3.0 (modes B and A) ==="
  (
    results=()
    for mode in B A; do
      extra=()
      if [ "$mode" = A ]; then
        [ "${INTEROP_MODE_A:-1}" = 1 ] || continue
        extra=(SUT_CONNECTOR_BTP_SERVER_PORT="$MODE_A_PORT" SUT_CONNECTOR_BTP_SECRET=sutsecret)
      fi
      res="$OUT/stream-multihop-$mode.json"
      (cd "$HARNESS" && env ${extra[@]+"${extra[@]}"} HARNESS_DIR="$HARNESS" \
        node "$ROOT/scripts/interop-stream-multihop.js" 2>"$OUT/stream-multihop-$mode.stderr.log") \
        | grep -E '^\{' | tail -n 1 >"$res" || true
      results+=("$res")
    done
    STREAM_MULTIHOP_RESULTS="${results[*]}" "$BIN/python" manage.py shell <<'PY'
import json, os
from django.db.models import Count, Sum
from ilp.stream import connection_id
from payments.models import Receipt
failed = []
for path in os.environ["STREAM_MULTIHOP_RESULTS"].split():
    text = open(path).read().strip()
    result = json.loads(text) if text else {"ok": False, "detail": "no result line", "metrics": {}}
    print(f"  {os.path.basename(path)}: {'PASS' if result['ok'] else 'FAIL'} {result['detail']}")
    if not result["ok"]:
        failed.append(path)
    for p in result["metrics"].get("payments", []):
        rows = Receipt.objects.filter(
            account__code="receiver:bob", payment_id=connection_id(p["destination"]).hex()
        ).aggregate(total=Sum("amount"), n=Count("id"))
        total = int(rows["total"] or 0)
        print(f"    {p['sender']}: delivered {p['delivered']} of {p['asked']}; node ledger: {total} in {rows['n']} receipts")
        if not total == int(p["delivered"]) == int(p["asked"]):
            failed.append(p["sender"])
print("stream-multihop: " + ("FAIL " + ", ".join(failed) if failed else "PASS"))
raise SystemExit(1 if failed else 0)
PY
  ) | tee "$OUT/stream-multihop.txt" || status=1
fi
# STREAM load (issue 12; `make bench`): scripts/bench-stream.js (ilp-protocol-stream payments,
# STREAM_LOAD_N of STREAM_LOAD_AMOUNT, STREAM_LOAD_C at a time, over one BTP connection) pays the
# node's pointer bob, then the JS stand-in's STREAM receiver carol (a stand-in of its own on
# ports 7740+), in this run; prints both, the STREAM ratio and the PSK2 ratio of the load above.
# The node's ledger must have grown by exactly what was delivered to it (durable before Fulfill).
#   INTEROP_STREAM_LOAD=0 skips it;  STREAM_LOAD_ROUNDS (1): node, reference, node, reference, ...
if [ "${INTEROP_STREAM_LOAD:-1}" = 1 ] && [[ -z "${INTEROP_ONLY:-}" || ",$INTEROP_ONLY," == *",load,"* || ",$INTEROP_ONLY," == *",stream-load,"* ]]; then
  echo "=== stream-load: STREAM payments over one BTP link, node pointer vs the JS stand-in's carol, same run ==="
  (
    bench() {
      (cd "$HARNESS" && HARNESS_DIR="$HARNESS" node "$ROOT/scripts/bench-stream.js" 2>>"$OUT/stream-load.stderr.log") \
        | grep -E '^\{' | tail -n 1 || true
    }
    received() {
      "$BIN/python" manage.py shell -c 'from django.db.models import Sum; from payments.models import Receipt; print(int(Receipt.objects.filter(account__code="receiver:bob").aggregate(s=Sum("amount"))["s"] or 0))' 2>/dev/null | tail -n 1
    }
    reference=0
    if [ "${INTEROP_REFERENCE:-1}" = 1 ]; then
      STANDIN_ENV_FILE="$OUT/standin-stream-load.env" STANDIN_LOG_FILE="$OUT/standin-stream-load.connector.log" \
        STANDIN_PORT_BASE=7740 node "$HARNESS/reference-sut/standin.js" \
        >"$OUT/standin-stream-load.stdout" 2>"$OUT/standin-stream-load.stderr" &
      spid=$!
      trap 'kill $spid 2>/dev/null || true' EXIT
      for _ in $(seq 1 100); do [ -s "$OUT/standin-stream-load.env" ] && break; sleep 0.2; done
      reference=1
    fi
    for round in $(seq 1 "${STREAM_LOAD_ROUNDS:-1}"); do
      before="$(received)"
      bench >"$OUT/stream-load-node-$round.json"
      after="$(received)"
      echo "$((after - before))" >"$OUT/stream-load-node-$round.ledger"
      if [ "$reference" = 1 ]; then
        (set -a; . "$OUT/standin-stream-load.env"; set +a; bench) >"$OUT/stream-load-reference-$round.json"
      fi
    done
    psk2_node="$(grep -E '^load: ' "$OUT/sut.txt" 2>/dev/null | grep -oE '[0-9.]+ payments/s' | cut -d' ' -f1 || true)"
    psk2_ref="$(grep -E '^load: ' "$OUT/reference.txt" 2>/dev/null | grep -oE '[0-9.]+ payments/s' | cut -d' ' -f1 || true)"
    OUT="$OUT" PSK2_NODE="$psk2_node" PSK2_REF="$psk2_ref" "$BIN/python" - <<'PY'
import glob, json, os
out = os.environ["OUT"]
def load(path):
    try:
        text = open(path).read().strip()
    except FileNotFoundError:
        return None
    return json.loads(text) if text else {"ok": False, "detail": "no result line", "metrics": {}}
failed = False
for node_path in sorted(glob.glob(f"{out}/stream-load-node-*.json")):
    round_ = node_path.rsplit("-", 1)[1].split(".")[0]
    node, ref = load(node_path), load(f"{out}/stream-load-reference-{round_}.json")
    ledger = int(open(f"{out}/stream-load-node-{round_}.ledger").read().strip() or 0)
    m = node["metrics"]
    expected = (int(m.get("delivered", 0)) + int(m.get("warmup_delivered", 0))) * int(m.get("amount", 0))
    durable = ledger == expected
    failed |= not node["ok"] or not durable or (ref is not None and not ref["ok"])
    print(f"round {round_}")
    print(f"  node:      {'PASS' if node['ok'] else 'FAIL'} {node['detail']}")
    print(f"             ledger: +{ledger} recorded for {expected} delivered ({'exact' if durable else 'MISMATCH'})")
    if ref is not None:
        print(f"  reference: {'PASS' if ref['ok'] else 'FAIL'} {ref['detail']}")
        a, b = m.get("payments_per_sec"), ref["metrics"].get("payments_per_sec")
        if a and b:
            print(f"  STREAM ratio node/reference: {a / b:.2f} ({a} vs {b} payments/s)")
a, b = os.environ.get("PSK2_NODE"), os.environ.get("PSK2_REF")
if a and b:
    print(f"PSK2 ratio node/reference (load above): {float(a) / float(b):.2f} ({a} vs {b} payments/s)")
print("stream-load: " + ("FAIL" if failed else "PASS"))
raise SystemExit(1 if failed else 0)
PY
  ) | tee "$OUT/stream-load.txt" || status=1
fi
echo "results under $OUT"
exit $status
