#!/usr/bin/env bash
# featurestream demo: builds the venv, starts a local Kafka broker, runs the demo steps, and stops the
# broker on exit (also on Ctrl-C or a failing step).
#
#   FEATURESTREAM_DEMO_PORT  broker port (default 9092; the KRaft controller uses the next port)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PORT="${FEATURESTREAM_DEMO_PORT:-9092}"
BROKER="127.0.0.1:$PORT"
DEMO_DATA_DIR="$ROOT/.run/demo"
export PATH="$ROOT/.venv/bin:$PATH"

make --no-print-directory venv

# shellcheck source=kafka/common.sh
source "$ROOT/deploy/kafka/common.sh"
parse_kafka_args --port "$PORT"
if running_pid >/dev/null; then
    echo "[demo] using the broker already running on $BROKER; it is left running afterwards" >&2
else
    stop_kafka() { "$ROOT/deploy/kafka/stop.sh" --port "$PORT" || true; }
    trap stop_kafka EXIT
    "$ROOT/deploy/kafka/start.sh" --port "$PORT"
fi

# --- demo steps ---
# Worker and sink state live under .run/demo and are wiped first, so every demo starts from scratch.
WEB_PORT="${FEATURESTREAM_DEMO_WEB_PORT:-6066}"
EVENTS="${FEATURESTREAM_DEMO_EVENTS:-20000}"
export FEATURESTREAM_BROKER="$BROKER"
export FEATURESTREAM_DATA_DIR="$DEMO_DATA_DIR/parquet"
rm -rf "$DEMO_DATA_DIR"
mkdir -p "$DEMO_DATA_DIR"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. worker: Faust agent + RocksDB tables + HTTP views on :$WEB_PORT (log: $DEMO_DATA_DIR/worker.log)"
featurestream worker --state-dir "$DEMO_DATA_DIR/state" --web-port "$WEB_PORT" >"$DEMO_DATA_DIR/worker.log" 2>&1 &
WORKER_PID=$!
cleanup_demo() {
    kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null || true
    [[ -n "${stop_kafka_set:-}" ]] && stop_kafka
}
if declare -F stop_kafka >/dev/null; then stop_kafka_set=1; fi
trap cleanup_demo EXIT
python - "$WEB_PORT" <<'PY'
import sys, time, urllib.request
deadline = time.time() + 120
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
            if r.status == 200:
                break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("worker did not become healthy within 120 s; see the worker log")
    time.sleep(0.5)
print("worker is up")
PY

step "2. produce $EVENTS sample payments (500 users, last 2 days) to topic 'transactions'"
featurestream produce --count "$EVENTS" --users 500 --span 172800000

step "3. sink: the same events to Parquet under $FEATURESTREAM_DATA_DIR"
featurestream sink --once

step "4. online read over HTTP, once the worker has caught up"
python - "$WEB_PORT" <<'PY'
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
PY

step "5. offline training set: the fraud vector at every event, point in time correct"
featurestream training-set --vector fraud --out "$DEMO_DATA_DIR/training.parquet"
python - "$DEMO_DATA_DIR/training.parquet" <<'PY'
import sys
import pandas as pd
frame = pd.read_parquet(sys.argv[1])
print(f"{sys.argv[1]}: {len(frame)} rows x {frame.shape[1]} columns")
with pd.option_context("display.width", 160, "display.max_columns", 10):
    print(frame.head(8).to_string())
PY
step "done: everything started by the demo is stopped on exit"
# --- end of demo steps ---
