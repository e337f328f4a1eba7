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
# Placeholder: the demo body goes here. Available: $BROKER (host:port of the running broker),
# $DEMO_DATA_DIR (scratch space for state and Parquet), and the `featurestream` CLI on PATH.
mkdir -p "$DEMO_DATA_DIR"
echo "Kafka broker running at $BROKER"
# --- end of demo steps ---
