#!/usr/bin/env bash
# featurestream demo: builds the venv, starts its own local Kafka broker (wiped data dir), runs a worker,
# the sink, sample events, an online read (from the worker and from a read replica), a training set and a
# parity check, and stops the
# broker on exit (also on Ctrl-C or a failing step).
#
#   FEATURESTREAM_DEMO_PORT      broker port (default 9092; the KRaft controller uses the next port)
#   FEATURESTREAM_DEMO_WEB_PORT  the worker's HTTP port (default 6066)
#   FEATURESTREAM_DEMO_REPLICA_PORT  the read replica's HTTP port (default 6067)
#   FEATURESTREAM_DEMO_EVENTS    sample events to produce (default 20000)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PORT="${FEATURESTREAM_DEMO_PORT:-9092}"
WEB_PORT="${FEATURESTREAM_DEMO_WEB_PORT:-6066}"
REPLICA_PORT="${FEATURESTREAM_DEMO_REPLICA_PORT:-6067}"
BROKER="127.0.0.1:$PORT"
DEMO_DATA_DIR="$ROOT/.run/demo"
export PATH="$ROOT/.venv/bin:$PATH"

make --no-print-directory venv

# The demo runs its own broker on a wiped data dir, so its topic holds only this run's events.
KAFKA_DEMO_DIR="$ROOT/.run/demo-kafka-$PORT"
# shellcheck source=kafka/common.sh
source "$ROOT/deploy/kafka/common.sh"
parse_kafka_args --port "$PORT" --data-dir "$KAFKA_DEMO_DIR"
if port_open "$PORT"; then
    echo "[demo] error: port $PORT is taken (another Kafka?). Stop it (make kafka-stop) or pick another" \
        "port: FEATURESTREAM_DEMO_PORT=19092 make demo" >&2
    exit 1
fi
if port_open "$WEB_PORT"; then
    echo "[demo] error: the worker's web port $WEB_PORT is taken (another worker?). Stop it or pick another" \
        "port: FEATURESTREAM_DEMO_WEB_PORT=16066 make demo" >&2
    exit 1
fi
if port_open "$REPLICA_PORT"; then
    echo "[demo] error: the read replica's web port $REPLICA_PORT is taken (another replica?). Stop it or pick" \
        "another port: FEATURESTREAM_DEMO_REPLICA_PORT=16067 make demo" >&2
    exit 1
fi
stop_kafka() { "$ROOT/deploy/kafka/stop.sh" --port "$PORT" --data-dir "$KAFKA_DEMO_DIR" --wipe || true; }
trap stop_kafka EXIT
rm -rf "$KAFKA_DEMO_DIR"
"$ROOT/deploy/kafka/start.sh" --port "$PORT" --data-dir "$KAFKA_DEMO_DIR"

# --- demo steps ---
# Worker and sink state live under .run/demo and are wiped first, so every demo starts from scratch.
EVENTS="${FEATURESTREAM_DEMO_EVENTS:-20000}"
export FEATURESTREAM_BROKER="$BROKER"
export FEATURESTREAM_DATA_DIR="$DEMO_DATA_DIR/parquet"
rm -rf "$DEMO_DATA_DIR"
mkdir -p "$DEMO_DATA_DIR"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. worker: Faust agent + RocksDB tables + HTTP views on :$WEB_PORT (log: $DEMO_DATA_DIR/worker.log)"
WORKER_ID="demo-$$"
featurestream worker --state-dir "$DEMO_DATA_DIR/state" --web-port "$WEB_PORT" --worker-id "$WORKER_ID" \
    >"$DEMO_DATA_DIR/worker.log" 2>&1 &
WORKER_PID=$!
REPLICA_PID=""
cleanup_demo() {
    if [[ -n "$REPLICA_PID" ]]; then kill "$REPLICA_PID" 2>/dev/null && wait "$REPLICA_PID" 2>/dev/null || true; fi
    kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null || true
    stop_kafka
}
trap cleanup_demo EXIT
python - "$WEB_PORT" "$WORKER_PID" "$WORKER_ID" "$DEMO_DATA_DIR/worker.log" <<'PY'
import json, os, sys, time, urllib.request
port, pid, worker_id, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.time() + 120
while True:
    try:
        os.kill(pid, 0)
    except OSError:  # the worker exited: say why, never read whatever else answers on the port
        tail = open(log).read().strip().splitlines()[-5:]
        sys.exit("[demo] error: the worker exited; the end of its log:\n  " + "\n  ".join(tail))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            body = json.load(r)
            if r.status == 200 and body.get("worker") == worker_id:
                break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit(f"[demo] error: the worker did not become healthy within 120 s; see {log}")
    time.sleep(0.5)
print(f"worker is up: http://127.0.0.1:{port} ({worker_id})")
PY

step "2. produce $EVENTS sample payments (500 users, last 2 days) to topic 'transactions'"
featurestream produce --count "$EVENTS" --users 500 --span 172800000

step "3. sink: the same events to Parquet under $FEATURESTREAM_DATA_DIR"
featurestream sink --once

step "4. online read over HTTP, once the worker has caught up"
python - "$WEB_PORT" "$DEMO_DATA_DIR/online.json" <<'PY'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/features/transactions/u00000"
previous, deadline = None, time.time() + 120
while time.time() < deadline:
    body = json.load(urllib.request.urlopen(url, timeout=5))
    count = body["features"].get("amount_count_90d")
    if count and count == previous:
        break
    previous = count
    time.sleep(1.0)
print(f"GET {url}")
print(json.dumps(body, indent=2))
json.dump(body, open(sys.argv[2], "w"))
PY

step "4b. the same read from a read replica: the worker's read API in a process of its own, following the state changelog (:$REPLICA_PORT)"
featurestream replica --web-port "$REPLICA_PORT" >"$DEMO_DATA_DIR/replica.log" 2>&1 &
REPLICA_PID=$!
python - "$REPLICA_PORT" "$REPLICA_PID" "$DEMO_DATA_DIR/replica.log" "$DEMO_DATA_DIR/online.json" \
    "$DEMO_DATA_DIR/replica.json" <<'PY'
import json, os, sys, time, urllib.error, urllib.request
port, pid, log, online, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
want = json.load(open(online))["features"]["amount_count_90d"]
url = f"http://127.0.0.1:{port}/features/transactions/u00000"
deadline = time.time() + 120
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        tail = open(log).read().strip().splitlines()[-5:]
        sys.exit("[demo] error: the replica exited; the end of its log:\n  " + "\n  ".join(tail))
    try:
        body = json.load(urllib.request.urlopen(url, timeout=5))
        if body["features"]["amount_count_90d"] == want:
            break
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        pass  # not listening yet, or 503 while it catches up with the changelog
    if time.time() > deadline:
        sys.exit(f"[demo] error: the replica did not catch up within 120 s; see {log}")
    time.sleep(0.5)
print(f"GET {url}: amount_count_90d {want}, as the worker answered (all {len(body['features'])} features are "
      "checked against the offline side below)")
json.dump(body, open(out, "w"))
PY

step "5. offline training set: the fraud vector at every event, point in time correct"
featurestream training-set --vector fraud --out "$DEMO_DATA_DIR/training.parquet"
python - "$DEMO_DATA_DIR/training.parquet" <<'PY'
import sys
import pandas as pd
frame = pd.read_parquet(sys.argv[1])
print(f"{sys.argv[1]}: {len(frame)} rows x {frame.shape[1]} columns; the latest rows of user u00000:")
with pd.option_context("display.width", 160, "display.max_columns", 10):
    print(frame[frame.user_id == "u00000"].tail(6).to_string())
PY

step "6. parity: the offline side at each online read's time gives the same values"
python - "$FEATURESTREAM_DATA_DIR" "$DEMO_DATA_DIR/online.json" "$DEMO_DATA_DIR/replica.json" <<'PY'
import json, math, sys
import pandas as pd
from aggregations.loading import load_registry
from sinks.offline import get_offline_features
registry = load_registry("examples/transactions/features.py")
failed = False
for who, path in (("worker", sys.argv[2]), ("replica", sys.argv[3])):
    online = json.load(open(path))
    rows = pd.DataFrame({"user_id": [online["entity"]], "ts": [online["at"]]})
    names = [n for n in online["features"] if n != "amount_vs_avg_90d"]
    registry.vectors["demo_all"] = type(registry.vector("fraud"))("demo_all", [f"transactions.{n}" for n in names])
    offline = get_offline_features("demo_all", rows, sys.argv[1], registry=registry).iloc[0]
    bad = 0
    for name in names:
        a, b = online["features"][name], offline[name]
        same = (a is None and pd.isna(b)) or (a is not None and math.isclose(a, float(b), rel_tol=1e-9, abs_tol=1e-9))
        bad += not same
        if not same:
            print(f"  {name}: online ({who}) {a}, offline {b}")
    print(f"{len(names)} features of {online['entity']} read from the {who} at t={online['at']}: "
          f"{len(names) - bad} equal online and offline, {bad} differ")
    failed = failed or bad > 0
sys.exit(1 if failed else 0)
PY
step "done: everything started by the demo is stopped on exit"
# --- end of demo steps ---
