# Shared settings for start.sh / stop.sh (sourced, not executed).
#
# Options (each also settable by environment variable):
#   --port N              KAFKA_PORT             client listener port (default 9092)
#   --controller-port N   KAFKA_CONTROLLER_PORT  KRaft controller port (default: client port + 1)
#   --data-dir DIR        KAFKA_DATA_DIR         config, pid file, logs and data (default <repo>/.run/kafka-PORT)
# A bare number as the first argument is taken as the port.

KAFKA_HOME_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$KAFKA_HOME_DIR/../.." && pwd)"

# Leftover arguments (e.g. --wipe) are put in EXTRA_ARGS for the caller.
EXTRA_ARGS=()
parse_kafka_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) KAFKA_PORT="$2"; shift 2 ;;
            --port=*) KAFKA_PORT="${1#*=}"; shift ;;
            --controller-port) KAFKA_CONTROLLER_PORT="$2"; shift 2 ;;
            --controller-port=*) KAFKA_CONTROLLER_PORT="${1#*=}"; shift ;;
            --data-dir) KAFKA_DATA_DIR="$2"; shift 2 ;;
            --data-dir=*) KAFKA_DATA_DIR="${1#*=}"; shift ;;
            [0-9]*) KAFKA_PORT="$1"; shift ;;
            *) EXTRA_ARGS+=("$1"); shift ;;
        esac
    done
    KAFKA_PORT="${KAFKA_PORT:-9092}"
    KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
    KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-$REPO_ROOT/.run/kafka-$KAFKA_PORT}"
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if ! [[ "$p" =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then
            echo "[kafka] error: bad port '$p'" >&2
            exit 2
        fi
    done
    if [[ "$KAFKA_PORT" == "$KAFKA_CONTROLLER_PORT" ]]; then
        echo "[kafka] error: client and controller port are both $KAFKA_PORT" >&2
        exit 2
    fi
    KAFKA_DATA_DIR="$(realpath -m -- "$KAFKA_DATA_DIR")"
    PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
    SERVER_LOG="$KAFKA_DATA_DIR/server.log"
    STDOUT_LOG="$KAFKA_DATA_DIR/stdout.log"
    SERVER_PROPS="$KAFKA_DATA_DIR/server.properties"
}

now_ms() { date +%s%3N; }

# The pid in PID_FILE if that process is alive and is our broker (guards against pid reuse).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $SERVER_PROPS" || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
