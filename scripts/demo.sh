#!/usr/bin/env bash
# The main job, end to end on the embedded default: build, start carto-sql-api with its own
# private PostgreSQL cluster, create a user, then with the `carto` command line create a table,
# load a CSV of points through /sql/copyfrom (gzip, chunked), read it back through
# /sql/copyto, check it, import a CSV without writing SQL, and stop.
#
#   scripts/demo.sh            # 100,000 rows
#   ROWS=1000000 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-100000}
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

bash scripts/install-deps.sh
echo "== building carto-sql-api and carto (release)"
cargo build --release --quiet -p carto-sql-api -p carto-cli
SERVER=target/release/carto-sql-api
CARTO=target/release/carto

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
"$SERVER" --data-dir "$WORK/data" serve --listen "127.0.0.1:$PORT" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/api/v2/version" >/dev/null && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log"; exit 1; fi
    sleep 0.1
done

echo "== creating user 'demo'"
USER_JSON=$("$SERVER" --data-dir "$WORK/data" user add demo --server-url "http://127.0.0.1:$PORT")
echo "   $USER_JSON"
export CARTO_API_URL CARTO_API_KEY CARTO_CONFIG_DIR="$WORK/config"
CARTO_API_URL=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["base_url"])' "$USER_JSON")
CARTO_API_KEY=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$USER_JSON")

echo "== carto sql: creating table 'points' and cartodbfying it"
"$CARTO" sql "CREATE TABLE points (id int, name text, value float8, the_geom geometry(Point, 4326)); \
              SELECT CDB_CartodbfyTable(current_schema, 'points')" >/dev/null

echo "== generating $ROWS rows of CSV"
awk -v n="$ROWS" 'BEGIN {
    print "id,name,value,the_geom";
    for (i = 1; i <= n; i++)
        printf "%d,\"point %d, \"\"quoted\"\"\",%.3f,SRID=4326;POINT(%.5f %.5f)\n", i, i, (i * 7919) % 1000 / 10.0, -180 + (i * 0.0137) % 360, -85 + (i * 0.0071) % 170;
}' > "$WORK/points.csv"
ls -l "$WORK/points.csv" | awk '{printf "   %s bytes\n", $5}'

echo "== carto copy from: COPY FROM through /sql/copyfrom (gzip, chunked)"
"$CARTO" copy from "$WORK/points.csv" --table points --columns id,name,value,the_geom --header

echo "== carto copy to: COPY TO through /sql/copyto"
"$CARTO" copy to "$WORK/back.csv" \
    --query "COPY (SELECT id, name, value, ST_AsEWKT(the_geom) AS the_geom FROM points ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)"

echo "== checking the round trip"
"$CARTO" sql "SELECT count(*) AS rows, round(sum(value)::numeric, 3) AS value_sum FROM points"
python3 - "$WORK/points.csv" "$WORK/back.csv" <<'PY'
import csv, re, sys
def rows(path):
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            x, y = map(float, re.findall(r"-?[0-9.]+", r["the_geom"].split(";")[1]))
            yield int(r["id"]), r["name"], float(r["value"]), x, y
sent, back = list(rows(sys.argv[1])), list(rows(sys.argv[2]))
assert len(sent) == len(back), f"{len(sent)} rows sent, {len(back)} read back"
for a, b in zip(sent, back):
    assert a[:2] == b[:2] and all(abs(p - q) < 1e-9 for p, q in zip(a[2:], b[2:])), (a, b)
print(f"   all {len(back)} rows read back equal the rows loaded (ids, quoted names, values, points)")
PY
head -n 3 "$WORK/back.csv" | sed 's/^/   /'

echo "== carto import: a CSV with mixed types and lon/lat columns, no SQL written"
printf 'station,opened,active,depth_m,lat,lon\nBarcelona,1998-05-01,true,12.5,41.38,2.17\nMadrid,2003-11-20,false,,40.42,-3.70\n' > "$WORK/stations.csv"
"$CARTO" import "$WORK/stations.csv" --table stations
"$CARTO" sql "SELECT station, opened, active, depth_m, ST_AsText(the_geom) AS geom FROM stations ORDER BY station"
echo "== done: $ROWS rows in and out; stopping the server and its cluster"
