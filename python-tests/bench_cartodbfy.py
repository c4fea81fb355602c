"""How much a cartodbfied table costs a COPY FROM load, through carto-python.

Not a test (pytest does not collect it). Run from the repository root after
`cargo build --release -p carto-sql-api`:

    CARTO_SQL_API_BIN=target/release/carto-sql-api .venv/bin/python python-tests/bench_cartodbfy.py [ROWS]

Loads the same CSV of EWKT points (a text and an integer column) into a plain table and
into a cartodbfied one with `CopySQLClient.copyfrom` (gzip on, as carto-python defaults),
three times each, and prints the best times.
"""

import sys
import time
import warnings

from carto.auth import APIKeyAuthClient
from carto.sql import CopySQLClient, SQLClient

from conftest import running_server

warnings.filterwarnings("ignore")


def csv_bytes(rows):
    lines = [
        f"SRID=4326;POINT({(i * 7919) % 36000 / 100 - 180:.5f} {(i * 104729) % 17000 / 100 - 85:.5f}),"
        f"name {i},{i}\n"
        for i in range(rows)
    ]
    return "".join(lines).encode()


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    data = csv_bytes(rows)
    chunk = 8192
    with running_server() as server:
        user = server.add_user("bench")
        auth = APIKeyAuthClient(user["base_url"], user["api_key"])
        sql, copy = SQLClient(auth), CopySQLClient(auth)
        results = {}
        for kind in ("plain", "cartodbfied"):
            best = None
            for _ in range(3):
                sql.send(
                    "DROP TABLE IF EXISTS t; "
                    "CREATE TABLE t (the_geom geometry(Geometry,4326), name text, n integer)"
                )
                if kind == "cartodbfied":
                    sql.send("SELECT CDB_CartodbfyTable(current_schema, 't')")
                started = time.monotonic()
                result = copy.copyfrom(
                    "COPY t (the_geom, name, n) FROM STDIN WITH (FORMAT csv)",
                    (data[i:i + chunk] for i in range(0, len(data), chunk)),
                )
                elapsed = time.monotonic() - started
                assert result["total_rows"] == rows, result
                best = elapsed if best is None else min(best, elapsed)
            results[kind] = best
        # Cartodbfying after the load instead (one rewrite, indexes built once).
        sql.send(
            "DROP TABLE IF EXISTS t; "
            "CREATE TABLE t (the_geom geometry(Geometry,4326), name text, n integer)"
        )
        started = time.monotonic()
        copy.copyfrom(
            "COPY t (the_geom, name, n) FROM STDIN WITH (FORMAT csv)",
            (data[i:i + chunk] for i in range(0, len(data), chunk)),
        )
        sql.send("SELECT CDB_CartodbfyTable(current_schema, 't')")
        results["load, then cartodbfy"] = time.monotonic() - started
    mb = len(data) / 1e6
    print(f"{rows} rows, {mb:.1f} MB CSV, best of 3 (the last: one run)")
    for kind, seconds in results.items():
        print(f"  {kind:22} {seconds:6.2f} s  ({seconds / results['plain']:.1f} x plain)")


if __name__ == "__main__":
    main()
