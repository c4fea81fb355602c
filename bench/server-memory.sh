#!/usr/bin/env bash
# Measures carto-sql-api's peak memory (VmHWM of the server process; PostgreSQL's own
# processes are not counted) while it streams a large upload into COPY FROM and the same
# data back out through COPY TO. A measurement, not a test: the figure goes to the README.
#
#   bench/server-memory.sh            # 1 GB
#   MB=200 bench/server-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MB=${MB:-1024}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cargo build --release --quiet -p carto-sql-api
BIN=target/release/carto-sql-api
WORK=$(mktemp -d "${TMPDIR:-/tmp}/carto-mem.XXXXXX")
chmod 755 "$WORK"
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" --data-dir "$WORK/data" serve --listen "127.0.0.1:$PORT" 2>"$WORK/server.log" &
SERVER_PID=$!
until curl -sf "http://127.0.0.1:$PORT/api/v2/version" >/dev/null; do sleep 0.1; done
KEY=$("$BIN" --data-dir "$WORK/data" user add bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
API="http://127.0.0.1:$PORT/user/bench/api/v2"
curl -sf "$API/sql" --data-urlencode "api_key=$KEY" --data-urlencode "q=CREATE TABLE big (id bigint, payload text)" >/dev/null
hwm() { awk '/VmHWM/ {print $2 / 1024}' "/proc/$SERVER_PID/status"; }
echo "server peak RSS after start: $(hwm) MiB"

# ~1 KB rows generated on the fly: the data never exists whole, on disk or in memory.
rows=$((MB * 1024))
start=$(date +%s.%N)
awk -v n="$rows" 'BEGIN { p = sprintf("%1000s", ""); gsub(/ /, "x", p); for (i = 1; i <= n; i++) print i "\t" p }' |
    curl -sS --fail-with-body -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/octet-stream' \
        --data-binary @- "$API/sql/copyfrom?api_key=$KEY&q=COPY%20big%20FROM%20STDIN"
echo
end=$(date +%s.%N)
echo "uploaded ${MB} MiB in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s; server peak RSS: $(hwm) MiB"

start=$(date +%s.%N)
curl -sS --fail "$API/sql/copyto?api_key=$KEY&q=COPY%20big%20TO%20STDOUT" | wc -c | awk '{printf "downloaded %d bytes", $1}'
end=$(date +%s.%N)
echo " in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s; server peak RSS: $(hwm) MiB"
