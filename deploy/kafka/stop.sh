#!/usr/bin/env bash
# Stop a broker started by deploy/kafka/start.sh: SIGTERM (clean controlled shutdown), wait up to
# KAFKA_STOP_TIMEOUT seconds (30), then SIGKILL. Removes the pid file.
#
#   deploy/kafka/stop.sh [PORT] [--port N] [--data-dir DIR] [--wipe]
#
# --wipe also deletes the data dir (topics, offsets, logs, config).
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_kafka_args "$@"
wipe=0
for a in ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}; do
    case "$a" in
        --wipe) wipe=1 ;;
        *) echo "[kafka-stop] error: unknown argument: $a" >&2; exit 2 ;;
    esac
done

log() { echo "[kafka-stop] $*" >&2; }
t0="$(now_ms)"

if pid="$(running_pid)"; then
    log "stopping broker 127.0.0.1:$KAFKA_PORT (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(date +%s) + ${KAFKA_STOP_TIMEOUT:-30}))
    while kill -0 "$pid" 2>/dev/null; do
        if (($(date +%s) >= deadline)); then
            log "still running after ${KAFKA_STOP_TIMEOUT:-30}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    elapsed="$(($(now_ms) - t0))"
    log "stopped in $((elapsed / 1000)).$(printf '%03d' $((elapsed % 1000)))s"
else
    log "no broker running for $KAFKA_DATA_DIR (port $KAFKA_PORT)"
fi
rm -f "$PID_FILE"

if [[ $wipe == 1 ]]; then
    log "wiping $KAFKA_DATA_DIR"
    rm -rf "$KAFKA_DATA_DIR"
fi
