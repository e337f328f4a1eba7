#!/usr/bin/env bash
# Peers side by side: builds each peer's venv (benchmarks/peers/.venvs/<peer>, from the pinned
# requirements-<peer>.txt; rebuilt when that file changes), then runs peers.py in the project venv.
#
#   benchmarks/peers/run.sh [--quick] [peers.py options]      (make peers)
#
# Writes benchmarks/peers/RESULTS.md. Needs redis-server on PATH (Debian: apt-get install -y redis-server),
# Java for the local Kafka broker, and PyPI for the first run.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$(for p in python3.11 python3; do $p -c 'import sys' >/dev/null 2>&1 && { echo $p; break; }; done)}"

command -v redis-server >/dev/null || { echo "error: redis-server not found (apt-get install -y redis-server)" >&2; exit 1; }
[[ -x "$REPO/.venv/bin/python" ]] || make -C "$REPO" venv

for peer in quixstreams feast storey; do
    req="$HERE/requirements-$peer.txt"
    venv="$HERE/.venvs/$peer"
    stamp="$venv/.installed-$(sha256sum "$req" | cut -c1-16)"
    if [[ ! -e "$stamp" ]]; then
        echo "[peers] building $venv from $(basename "$req")" >&2
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip >&2
        "$venv/bin/pip" install -q -r "$req" >&2
        touch "$stamp"
    fi
done

cd "$REPO"
exec "$REPO/.venv/bin/python" "$HERE/peers.py" "$@"
