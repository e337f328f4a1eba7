#!/usr/bin/env bash
# Fetch the runtime classpath of a single-node Apache Kafka broker from Maven Central into a cache
# outside git: ${FEATURESTREAM_CACHE:-$HOME/.cache/featurestream}/kafka-<version>/libs
#
# Idempotent: a marker file (.complete) is written last, after the jars are in place; a cache without
# it (an interrupted fetch) is deleted and fetched again. Prints the libs directory on the last line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
CACHE_ROOT="${FEATURESTREAM_CACHE:-$HOME/.cache/featurestream}"
DEST="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$DEST/libs"
MARKER="$DEST/.complete"
# Pinned so that a cold ~/.m2 resolves the same plugin everywhere (Maven 3.8's default is 2.8).
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

log() { echo "[kafka-fetch] $*" >&2; }

if [[ -f "$MARKER" && -d "$LIBS" ]]; then
    log "cached: $(wc -l <"$MARKER") jars for Kafka $KAFKA_VERSION in $LIBS"
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

log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION runtime classpath from Maven Central into $LIBS"
start=$SECONDS
# Debian's Maven 3.8 prints ANSI resets even with -B: strip them, keep any real error text.
mvn -q -B --no-transfer-progress -f "$HERE/pom.xml" \
    "$DEP_PLUGIN:copy-dependencies" -DincludeScope=runtime -DoutputDirectory="$TMP" 2>&1 |
    sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2

count="$(find "$TMP" -maxdepth 1 -name '*.jar' | wc -l)"
if [[ ! -f "$TMP/kafka_2.13-$KAFKA_VERSION.jar" || "$count" -lt 10 ]]; then
    log "error: Maven produced $count jars and no kafka_2.13-$KAFKA_VERSION.jar in $TMP"
    exit 1
fi
mv "$TMP" "$LIBS"
trap - EXIT
# Marker last: one line per jar, so its line count is the jar count.
(cd "$LIBS" && ls -1 -- *.jar) >"$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
log "fetched $count jars ($(du -sh "$LIBS" | cut -f1)) in $((SECONDS - start))s"
echo "$LIBS"
