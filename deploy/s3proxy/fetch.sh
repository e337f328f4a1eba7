#!/usr/bin/env bash
# Fetch the runtime classpath of S3Proxy (org.gaul:s3proxy) from Maven Central into a cache outside git:
# ${FEATURESTREAM_CACHE:-$HOME/.cache/featurestream}/s3proxy-<version>/libs
#
# Idempotent, like deploy/kafka/fetch.sh: a marker file (.complete) is written last; a cache without it is
# fetched again. Prints the libs directory on the last line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="$(sed -n 's:.*<s3proxy.version>\(.*\)</s3proxy.version>.*:\1:p' "$HERE/pom.xml")"
CACHE_ROOT="${FEATURESTREAM_CACHE:-$HOME/.cache/featurestream}"
DEST="$CACHE_ROOT/s3proxy-$VERSION"
LIBS="$DEST/libs"
MARKER="$DEST/.complete"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

log() { echo "[s3proxy-fetch] $*" >&2; }

if [[ -f "$MARKER" && -d "$LIBS" ]]; then
    log "cached: $(wc -l <"$MARKER") jars for S3Proxy $VERSION in $LIBS"
    echo "$LIBS"
    exit 0
fi
for tool in java mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "error: '$tool' not found; install Java 17 and Maven (Debian: apt-get install -y openjdk-17-jre-headless maven)"
        exit 1
    fi
done
if [[ -e "$DEST" ]]; then
    log "removing incomplete cache $DEST (no marker: an earlier fetch was interrupted)"
    rm -rf "$DEST"
fi
mkdir -p "$DEST"
TMP="$(mktemp -d "$DEST/libs.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

log "resolving org.gaul:s3proxy:$VERSION runtime classpath from Maven Central into $LIBS"
start=$SECONDS
mvn -q -B --no-transfer-progress -f "$HERE/pom.xml" \
    "$DEP_PLUGIN:copy-dependencies" -DincludeScope=runtime -DoutputDirectory="$TMP" 2>&1 |
    sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2

count="$(find "$TMP" -maxdepth 1 -name '*.jar' | wc -l)"
if [[ ! -f "$TMP/s3proxy-$VERSION.jar" || "$count" -lt 10 ]]; then
    log "error: Maven produced $count jars and no s3proxy-$VERSION.jar in $TMP"
    exit 1
fi
mv "$TMP" "$LIBS"
trap - EXIT
(cd "$LIBS" && ls -1 -- *.jar) >"$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
log "fetched $count jars ($(du -sh "$LIBS" | cut -f1)) in $((SECONDS - start))s"
echo "$LIBS"
