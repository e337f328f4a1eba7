#!/usr/bin/env bash
# Stop a server started by deploy/s3proxy/start.sh: SIGTERM, wait up to S3PROXY_STOP_TIMEOUT seconds (15),
# then SIGKILL. Removes the pid file.
#
#   deploy/s3proxy/stop.sh [PORT] [--port N] [--data-dir DIR] [--wipe]
#
# --wipe also deletes the data dir (the buckets and everything in them).
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_s3proxy_args "$@"
wipe=0
for a in ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}; do
    case "$a" in
        --wipe) wipe=1 ;;
        *) echo "[s3proxy-stop] error: unknown argument: $a" >&2; exit 2 ;;
    esac
done
log() { echo "[s3proxy-stop] $*" >&2; }

if pid="$(running_pid)"; then
    log "stopping S3Proxy 127.0.0.1:$S3PROXY_PORT (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(date +%s) + ${S3PROXY_STOP_TIMEOUT:-15}))
    while kill -0 "$pid" 2>/dev/null; do
        if (($(date +%s) >= deadline)); then
            log "still running after ${S3PROXY_STOP_TIMEOUT:-15}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
else
    log "no S3Proxy running for $S3PROXY_DATA_DIR (port $S3PROXY_PORT)"
fi
rm -f "$PID_FILE"
if [[ $wipe == 1 ]]; then
    log "wiping $S3PROXY_DATA_DIR"
    rm -rf "$S3PROXY_DATA_DIR"
fi
