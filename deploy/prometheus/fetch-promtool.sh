#!/usr/bin/env bash
# Fetch promtool (from Debian's `prometheus` package) into the cache, for the test that checks
# deploy/prometheus/prometheus.yml with `promtool check config`. Best effort: without apt the test is
# skipped (and says so). Prints promtool's path when it has one.
#
#   FEATURESTREAM_CACHE  cache directory (default ~/.cache/featurestream); promtool goes to <cache>/promtool/
set -euo pipefail

CACHE="${FEATURESTREAM_CACHE:-$HOME/.cache/featurestream}"
DEST="$CACHE/promtool"
log() { echo "[promtool] $*" >&2; }

if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
if [[ -x "$DEST/promtool" ]]; then echo "$DEST/promtool"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    log "no apt-get/dpkg-deb here: the Prometheus config test will be skipped"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
download() { (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); }
if ! download; then
    # A fresh machine may have no package lists yet; only root can fetch them.
    if [[ $(id -u) -eq 0 ]] && apt-get update -q >/dev/null 2>&1 && download; then :; else
        log "could not download the Debian package 'prometheus': the Prometheus config test will be skipped"
        exit 0
    fi
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p "$DEST"
cp "$tmp/x/usr/bin/promtool" "$DEST/promtool.tmp" && mv "$DEST/promtool.tmp" "$DEST/promtool"
log "promtool $("$DEST/promtool" --version 2>&1 | head -n 1 | awk '{print $3}') in $DEST"
echo "$DEST/promtool"
