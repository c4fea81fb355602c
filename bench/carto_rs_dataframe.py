"""DataFrame uploads: carto_rs's `copyfrom_dataframe` against the usual carto-python pattern
(build EWKT, `df.to_csv`, `copyfrom`), end to end, into the same cartodbfied table.

    .venv/bin/python bench/carto_rs_dataframe.py [--rows 1000000] [--rounds 3] [--plain]

The table is cartodbfied (what a CARTO user loads into), so its triggers' server time is in both
contenders' figures; `--plain` loads a table with the same columns and no triggers instead.

The frame has an integer, a float, a text and a point (lon/lat) column, as a notebook would.
Both contenders run in this process, interleaved, gzip on (both clients' default); the times
are wall clock and this process's CPU (Python and Rust threads alike), median of the rounds.
Needs carto-python, carto_rs (a release build: CARTO_RS_RELEASE=1 scripts/python-tests.sh or
`pip install ./crates/carto-py`), pandas and a release carto-sql-api.
"""

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Server  # noqa: E402

warnings.simplefilter("ignore")

TABLE = "frame_bench"
COLUMNS = "id bigint, value double precision, name text, the_geom geometry(Geometry,4326)"


def make_frame(rows):
    i = np.arange(rows)
    return pd.DataFrame({
        "id": i,
        "value": (i * 7919 % 100000) / 7.0,
        "name": [f"place {k}, street {k % 97}" for k in range(rows)],
        "lon": -180 + (i * 0.013717) % 360,
        "lat": -85 + (i * 0.007103) % 170,
    })


def with_carto_python(base_url, key, df):
    from carto.auth import APIKeyAuthClient
    from carto.sql import CopySQLClient

    copy = CopySQLClient(APIKeyAuthClient(base_url, key))
    csv_frame = df[["id", "value", "name"]].assign(
        the_geom="SRID=4326;POINT(" + df["lon"].astype(str) + " " + df["lat"].astype(str) + ")")
    data = io.BytesIO(csv_frame.to_csv(index=False).encode())
    return copy.copyfrom_file_object(
        f"COPY {TABLE} (id, value, name, the_geom) FROM STDIN WITH (FORMAT csv, HEADER true)",
        data)["total_rows"]


def with_carto_rs(base_url, key, df):
    from carto_rs.auth import APIKeyAuthClient
    from carto_rs.sql import CopySQLClient

    copy = CopySQLClient(APIKeyAuthClient(base_url, key))
    return copy.copyfrom_dataframe(df, TABLE, geometry=("lon", "lat"))["total_rows"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default=str(ROOT / "target/release/carto-sql-api"))
    parser.add_argument("--plain", action="store_true", help="no CDB_CartodbfyTable")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="carto-df-bench."))
    work.chmod(0o755)  # the cluster's OS user must reach it when this runs as root
    server = Server(args.server, work)
    try:
        server.psql(f"CREATE TABLE {TABLE} ({COLUMNS})")
        if not args.plain:
            server.psql(f"SELECT CDB_CartodbfyTable(current_schema, '{TABLE}')")
        df = make_frame(args.rows)
        times = {}
        for round_ in range(args.rounds):
            for name, upload in (("carto-python (to_csv + copyfrom)", with_carto_python),
                                 ("carto_rs copyfrom_dataframe", with_carto_rs)):
                server.psql(f"TRUNCATE {TABLE}")
                wall, cpu = time.perf_counter(), time.process_time()
                loaded = upload(server.base_url, server.api_key, df)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                count = int(server.psql(f"SELECT count(*) FROM {TABLE}"))
                if loaded != args.rows or count != args.rows:
                    raise SystemExit(f"{name} loaded {count} rows, expected {args.rows}")
                times.setdefault(name, []).append((wall, cpu))
                print(f"round {round_ + 1}  {name:34} {wall:6.2f} s wall {cpu:6.2f} s CPU",
                      flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
               for name, runs in times.items()}
    (py_wall, py_cpu), (rs_wall, rs_cpu) = medians.values()
    for name, (wall, cpu) in medians.items():
        print(f"median  {name:34} {wall:6.2f} s wall {cpu:6.2f} s CPU")
    table = "a plain table" if args.plain else "a cartodbfied table"
    print(f"carto_rs is {py_wall / rs_wall:.2f}x faster end to end, "
          f"{py_cpu / rs_cpu:.2f}x less client CPU ({args.rows:,} rows into {table})")


if __name__ == "__main__":
    main()
