# Shared settings for start.sh / stop.sh (sourced, not executed).
#
# Options (each also settable by environment variable):
#   --port N       S3PROXY_PORT      HTTP port on 127.0.0.1 (default 9000)
#   --data-dir DIR S3PROXY_DATA_DIR  config, pid file, logs and the buckets (default <repo>/.run/s3proxy-PORT)
# A bare number as the first argument is taken as the port.

S3PROXY_HOME_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$S3PROXY_HOME_DIR/../.." && pwd)"

EXTRA_ARGS=()
parse_s3proxy_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) S3PROXY_PORT="$2"; shift 2 ;;
            --port=*) S3PROXY_PORT="${1#*=}"; shift ;;
            --data-dir) S3PROXY_DATA_DIR="$2"; shift 2 ;;
            --data-dir=*) S3PROXY_DATA_DIR="${1#*=}"; shift ;;
            [0-9]*) S3PROXY_PORT="$1"; shift ;;
            *) EXTRA_ARGS+=("$1"); shift ;;
        esac
    done
    S3PROXY_PORT="${S3PROXY_PORT:-9000}"
    if ! [[ "$S3PROXY_PORT" =~ ^[0-9]+$ ]] || ((S3PROXY_PORT < 1 || S3PROXY_PORT > 65535)); then
        echo "[s3proxy] error: bad port '$S3PROXY_PORT'" >&2
        exit 2
    fi
    S3PROXY_DATA_DIR="$(realpath -m -- "${S3PROXY_DATA_DIR:-$REPO_ROOT/.run/s3proxy-$S3PROXY_PORT}")"
    PID_FILE="$S3PROXY_DATA_DIR/s3proxy.pid"
    PROPS="$S3PROXY_DATA_DIR/s3proxy.properties"
    LOG_FILE="$S3PROXY_DATA_DIR/s3proxy.log"
    BUCKETS_DIR="$S3PROXY_DATA_DIR/buckets"
}

# The pid in PID_FILE if that process is alive and is our server (guards against pid reuse).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--properties $PROPS" || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# An HTTP answer (any status) from the server: its status line.
http_status() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        head -n 1 <&3
    ) 2>/dev/null
}
