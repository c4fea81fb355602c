#!/usr/bin/env bash
# The main job, end to end on the embedded default: build, start carto-sql-api with its own
# private PostgreSQL cluster, create a user, create a table, load a CSV of points through
# /sql/copyfrom (gzip, chunked), read it back through /sql/copyto, check it, and stop.
#
#   scripts/demo.sh            # 100,000 rows
#   ROWS=1000000 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-100000}
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

bash scripts/install-deps.sh
echo "== building carto-sql-api (release)"
cargo build --release --quiet -p carto-sql-api
BIN=target/release/carto-sql-api

# A throwaway data dir, readable by the 'postgres' user when this runs as root.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/carto-demo.XXXXXX")
chmod 755 "$WORK"
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== starting carto-sql-api on 127.0.0.1:$PORT (embedded PostgreSQL under $WORK/data)"
"$BIN" --data-dir "$WORK/data" serve --listen "127.0.0.1:$PORT" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/api/v2/version" >/dev/null && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log"; exit 1; fi
    sleep 0.1
done

echo "== creating user 'demo'"
USER_JSON=$("$BIN" --data-dir "$WORK/data" user add demo --server-url "http://127.0.0.1:$PORT")
echo "   $USER_JSON"
KEY=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$USER_JSON")
API="http://127.0.0.1:$PORT/user/demo/api/v2"

urlencode() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

sql() {
    curl -sS --fail-with-body "$API/sql" --data-urlencode "api_key=$KEY" --data-urlencode "q=$1"
    echo
}

echo "== creating table 'points'"
sql "CREATE TABLE points (id int PRIMARY KEY, name text, value float8, the_geom geometry(Point, 4326))"

echo "== generating $ROWS rows of CSV"
awk -v n="$ROWS" 'BEGIN {
    print "id,name,value,the_geom";
    for (i = 1; i <= n; i++)
        printf "%d,\"point %d, \"\"quoted\"\"\",%.3f,SRID=4326;POINT(%.5f %.5f)\n", i, i, (i * 7919) % 1000 / 10.0, -180 + (i * 0.0137) % 360, -85 + (i * 0.0071) % 170;
}' > "$WORK/points.csv"
ls -l "$WORK/points.csv" | awk '{printf "   %s bytes\n", $5}'

echo "== COPY FROM through /sql/copyfrom (gzip, chunked)"
Q="COPY points (id, name, value, the_geom) FROM STDIN WITH (FORMAT csv, HEADER true)"
gzip -1 -c "$WORK/points.csv" | curl -sS --fail-with-body \
    -H 'Content-Type: application/octet-stream' -H 'Content-Encoding: gzip' -H 'Transfer-Encoding: chunked' \
    --data-binary @- "$API/sql/copyfrom?api_key=$KEY&q=$(urlencode "$Q")"
echo

echo "== COPY TO through /sql/copyto"
Q="COPY (SELECT id, name, value, ST_AsEWKT(the_geom) FROM points ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)"
curl -sS --fail-with-body --compressed -G --data-urlencode "api_key=$KEY" --data-urlencode "q=$Q" \
    "$API/sql/copyto" -o "$WORK/back.csv"
ls -l "$WORK/back.csv" | awk '{printf "   %s bytes\n", $5}'

echo "== checking the round trip"
sql "SELECT count(*) AS rows, round(sum(value)::numeric, 3) AS value_sum FROM points"
if [ "$(wc -l < "$WORK/back.csv")" -ne "$((ROWS + 1))" ]; then
    echo "demo: expected $((ROWS + 1)) lines back, got $(wc -l < "$WORK/back.csv")" >&2
    exit 1
fi
head -n 3 "$WORK/back.csv" | sed 's/^/   /'
echo "== done: $ROWS rows in and out; stopping the server and its cluster"
