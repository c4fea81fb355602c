"""carto_rs beyond carto-python: DataFrames, numpy, progress callbacks, Ctrl-C, the GIL, and
what both clients must agree on that the older files do not cover (rate limits)."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from conftest import REPO_ROOT

carto_rs_sql = pytest.importorskip("carto_rs.sql")
from carto_rs.auth import APIKeyAuthClient as RsAuth  # noqa: E402
from carto_rs.exceptions import CartoException as RsCartoException  # noqa: E402


@pytest.fixture(scope="module")
def user(server):
    """One user for the module; each test uses its own table names."""
    return server.add_user()


@pytest.fixture
def rs_auth(server, user):
    return RsAuth(f"{server.url}/user/{user['username']}/", user["api_key"])


@pytest.fixture
def rs_copy(rs_auth):
    return carto_rs_sql.CopySQLClient(rs_auth)


@pytest.fixture
def rs_sql(rs_auth):
    return carto_rs_sql.SQLClient(rs_auth)


def frame(n):
    i = np.arange(n)
    return pd.DataFrame({
        "id": i.astype(np.int64),
        "value": i * 0.5,
        "name": [f"name {k}" for k in range(n)],
        "lon": (i % 360) - 180.0,
        "lat": (i % 170) - 85.0,
    })


def test_a_dataframe_goes_in_as_binary_copy_into_a_cartodbfied_table(rs_copy, rs_sql):
    df = frame(1000)
    df.loc[3, "name"] = None
    df.loc[4, "value"] = np.nan
    result = rs_copy.copyfrom_dataframe(df, "frames", create=True, geometry=("lon", "lat"))
    assert result["total_rows"] == 1000
    rows = rs_sql.send(
        "SELECT cartodb_id, id, value, name, ST_AsText(the_geom) AS g, "
        "ST_SRID(the_geom_webmercator) AS merc FROM frames WHERE id IN (3, 4, 5) ORDER BY id"
    )["rows"]
    assert rows == [
        {"cartodb_id": 4, "id": 3, "value": 1.5, "name": None,
         "g": "POINT(-177 -82)", "merc": 3857},
        {"cartodb_id": 5, "id": 4, "value": None, "name": "name 4",
         "g": "POINT(-176 -81)", "merc": 3857},
        {"cartodb_id": 6, "id": 5, "value": 2.5, "name": "name 5",
         "g": "POINT(-175 -80)", "merc": 3857},
    ]
    columns = rs_sql.send(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'frames' ORDER BY ordinal_position")["rows"]
    assert [(c["column_name"], c["data_type"]) for c in columns] == [
        ("cartodb_id", "bigint"), ("the_geom", "USER-DEFINED"),
        ("the_geom_webmercator", "USER-DEFINED"), ("id", "bigint"),
        ("value", "double precision"), ("name", "text")]
    # Read back whole, through copyto_dataframe.
    back = rs_copy.copyto_dataframe("SELECT id, value, name FROM frames ORDER BY id")
    assert back["id"].tolist() == list(range(1000))
    assert back["value"].isna().tolist() == [i == 4 for i in range(1000)]
    assert back["name"][5] == "name 5" and pd.isna(back["name"][3])


def test_types_follow_an_existing_table(rs_copy, rs_sql):
    rs_sql.send(
        "CREATE TABLE typed (small smallint, mid integer, big bigint, r real, flag boolean, "
        "at timestamp, atz timestamptz, day date, label varchar(20), "
        "the_geom geometry(Geometry,4326)); "
        "SELECT CDB_CartodbfyTable(current_schema, 'typed')")
    shapely = pytest.importorskip("shapely")
    df = pd.DataFrame({
        "small": pd.array([1, None], dtype="Int64"),
        "mid": [70000, -1],
        "big": [2**40, 0],
        "r": [0.25, 1.0],
        "flag": [True, False],
        "at": pd.to_datetime(["2024-02-29 12:34:56.789", None]),
        "atz": pd.to_datetime(["2024-01-01 00:00:00+02:00", "1999-12-31 23:59:59+00:00"],
                              utc=True),
        "day": pd.to_datetime(["1970-01-02", "2030-06-01"]),
        "label": ["é ü", 12],
        "geom": [shapely.Point(2.17, 41.38), shapely.LineString([(0, 0), (1, 1)])],
    })
    assert rs_copy.copyfrom_dataframe(df, "typed", geometry="geom")["total_rows"] == 2
    rows = rs_sql.send(
        "SELECT small, mid, big, r, flag, at::text AS at, "
        "(atz AT TIME ZONE 'UTC')::text AS atz, day::text AS day, label, "
        "ST_AsText(the_geom) AS g FROM typed ORDER BY cartodb_id")["rows"]
    assert rows == [
        {"small": 1, "mid": 70000, "big": 2**40, "r": 0.25, "flag": True,
         "at": "2024-02-29 12:34:56.789", "atz": "2023-12-31 22:00:00", "day": "1970-01-02",
         "label": "é ü", "g": "POINT(2.17 41.38)"},
        {"small": None, "mid": -1, "big": 0, "r": 1, "flag": False, "at": None,
         "atz": "1999-12-31 23:59:59", "day": "2030-06-01", "label": "12",
         "g": "LINESTRING(0 0,1 1)"},
    ]


@pytest.mark.parametrize("form", ["wkt", "wkb"])
def test_wkt_and_wkb_columns_become_the_geom(rs_copy, rs_sql, form):
    shapely = pytest.importorskip("shapely")
    points = [shapely.Point(1, 2), None, shapely.Point(3, 4)]
    values = [None if p is None else (p.wkt if form == "wkt" else p.wkb) for p in points]
    table = f"geoms_{form}"
    df = pd.DataFrame({"k": [1, 2, 3], "shape": values})
    rs_copy.copyfrom_dataframe(df, table, create=True, geometry="shape")
    rows = rs_sql.send(f"SELECT k, ST_AsEWKT(the_geom) AS g FROM {table} ORDER BY k")["rows"]
    assert rows == [{"k": 1, "g": "SRID=4326;POINT(1 2)"}, {"k": 2, "g": None},
                    {"k": 3, "g": "SRID=4326;POINT(3 4)"}]


def test_a_geodataframe_in_another_crs_is_reprojected(rs_copy, rs_sql):
    geopandas = pytest.importorskip("geopandas")
    shapely = pytest.importorskip("shapely")
    gdf = geopandas.GeoDataFrame(
        {"name": ["origin", "east"]},
        geometry=[shapely.Point(0, 0), shapely.Point(111319.49079327357, 0)], crs=3857)
    rs_copy.copyfrom_dataframe(gdf, "gdf", create=True)
    rows = rs_sql.send(
        "SELECT name, round(ST_X(the_geom)::numeric, 6) AS x, ST_SRID(the_geom) AS srid "
        "FROM gdf ORDER BY name")["rows"]
    assert rows == [{"name": "east", "x": 1, "srid": 4326},
                    {"name": "origin", "x": 0, "srid": 4326}]


def test_numpy_structured_and_column_arrays(rs_copy, rs_sql):
    grid = np.zeros(6, dtype=[("x", "f8"), ("y", "f8"), ("v", "f4"), ("n", "i4")])
    grid["x"] = np.arange(6)
    grid["y"] = 40
    grid["v"] = np.linspace(0, 1, 6)
    grid["n"] = np.arange(6) * 10
    rs_copy.copyfrom_arrays(grid, "grid", create=True, geometry=("x", "y"))
    rs_copy.copyfrom_arrays({"n": np.array([99], dtype=np.int32), "v": np.array([np.nan])},
                            "grid")
    rows = rs_sql.send("SELECT n, v, ST_AsText(the_geom) AS g FROM grid ORDER BY n")["rows"]
    assert [r["n"] for r in rows] == [0, 10, 20, 30, 40, 50, 99]
    assert rows[1] == {"n": 10, "v": 0.2, "g": "POINT(1 40)"}
    assert rows[-1] == {"n": 99, "v": None, "g": None}
    with pytest.raises(RsCartoException, match="structured"):
        rs_copy.copyfrom_arrays(np.zeros(3), "grid")


def test_bad_frames_get_clear_errors_and_load_nothing(rs_copy, rs_sql):
    rs_sql.send("CREATE TABLE strict (n integer, price numeric)")
    with pytest.raises(RsCartoException, match=r"'n' is int4: values from 0 to 3000000000"):
        rs_copy.copyfrom_dataframe(pd.DataFrame({"n": [0, 3_000_000_000]}), "strict")
    with pytest.raises(RsCartoException, match="'price' is numeric: binary COPY"):
        rs_copy.copyfrom_dataframe(pd.DataFrame({"price": [1.5]}), "strict")
    with pytest.raises(RsCartoException, match="has no column 'missing'"):
        rs_copy.copyfrom_dataframe(pd.DataFrame({"missing": [1]}), "strict")
    assert rs_sql.send("SELECT count(*) AS n FROM strict")["rows"] == [{"n": 0}]


def test_progress_callbacks_fit_tqdm(rs_copy, rs_sql):
    tqdm = pytest.importorskip("tqdm")
    rs_sql.send("CREATE TABLE progress (line text)")
    data = [f"line {i}\n".encode() for i in range(100_000)]
    with tqdm.tqdm(total=sum(map(len, data)), file=io.StringIO()) as bar:
        rs_copy.copyfrom("COPY progress FROM STDIN", iter(data), progress=bar.update)
        assert bar.n == sum(map(len, data))
    calls = []
    rs_copy.copyfrom_dataframe(frame(120_000), "progress_frame", create=True,
                               progress=calls.append, chunk_rows=50_000)
    assert calls == [50_000, 50_000, 20_000]


def test_copyfrom_takes_str_and_bytearray_and_refuses_other_items(rs_copy, rs_sql):
    rs_sql.send("CREATE TABLE mixed (a text, b integer)")
    result = rs_copy.copyfrom("COPY mixed FROM STDIN WITH (FORMAT csv)",
                              ["é,1\n", b"x,2\n", bytearray(b"y,3\n"), memoryview(b"z,4\n")])
    assert result["total_rows"] == 4
    with pytest.raises(RsCartoException, match="must yield bytes or str, not int"):
        rs_copy.copyfrom("COPY mixed FROM STDIN WITH (FORMAT csv)", [b"w,5\n", 7])
    assert rs_sql.send("SELECT count(*) AS n FROM mixed")["rows"] == [{"n": 4}]


def test_copyto_stream_is_a_raw_io_stream(rs_copy, rs_sql):
    rs_sql.send("CREATE TABLE lines AS SELECT g AS n FROM generate_series(1, 5000) g")
    stream = rs_copy.copyto_stream("COPY lines TO STDOUT")
    assert isinstance(stream, io.RawIOBase)
    buffered = io.BufferedReader(stream)
    assert buffered.readline() == b"1\n"
    assert [int(line) for line in buffered] == list(range(2, 5001))


def test_transfers_release_the_gil(rs_copy):
    """While one thread waits on a slow COPY TO, another runs Python code."""
    done = []

    def download():
        done.append(rs_copy.copyto_stream(
            "COPY (SELECT pg_sleep(1.5), 1) TO STDOUT").read())

    worker = threading.Thread(target=download)
    worker.start()
    time.sleep(0.2)
    loops = 0
    while worker.is_alive():
        loops += 1
    worker.join()
    assert done == [b"\t1\n"]
    # Holding the GIL for 1.3 s would leave this thread a handful of loops at most.
    assert loops > 10_000


CTRL_C_CHILD = textwrap.dedent("""
    import sys, time, warnings
    warnings.simplefilter("ignore")
    from carto_rs.auth import APIKeyAuthClient
    from carto_rs.sql import CopySQLClient

    def rows():
        # More than one of carto_rs's 256 KiB batches, so rows are already on the server...
        yield b"".join(b"%d\\n" % i for i in range(100_000))
        print("sent", flush=True)
        # ...then a slow trickle, ending by itself after 30 s if Ctrl-C did nothing.
        for i in range(600):
            time.sleep(0.05)
            yield b"%d\\n" % i

    copy = CopySQLClient(APIKeyAuthClient(sys.argv[1], sys.argv[2]))
    try:
        copy.copyfrom("COPY interrupted FROM STDIN", rows())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(3)
    print("finished", flush=True)
""")


def test_ctrl_c_aborts_an_upload_and_commits_nothing(server, user, rs_sql):
    rs_sql.send("CREATE TABLE interrupted (n integer)")
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD, f"{server.url}/user/{user['username']}/",
         user["api_key"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert child.stdout.readline() == "sent\n"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert (child.returncode, out) == (3, "KeyboardInterrupt\n"), err
    # The server saw the upload break off and rolled it back.
    deadline = time.monotonic() + 20
    while rs_sql.send("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE "
                      "'COPY interrupted%'")["rows"][0]["n"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rs_sql.send("SELECT count(*) AS n FROM interrupted")["rows"] == [{"n": 0}]


def test_rate_limits_raise_the_same_exception(server, user, impl, APIKeyAuthClient, SQLClient,
                                              CopySQLClient, CartoRateLimitException):
    """Both clients raise CartoRateLimitException with the server's figures, for queries and
    for COPY uploads."""
    name = server.add_user()["username"]
    key = f"key-{name}"
    subprocess.run(
        [str(server.binary), "--data-dir", str(server.data_dir), "user", "limits", name,
         "--rate-limit", "query=0/1/60", "--rate-limit", "copy_from=0/1/60"],
        check=True, capture_output=True, text=True, timeout=60)
    auth = APIKeyAuthClient(f"{server.url}/user/{name}/", key)
    SQLClient(auth).send("CREATE TABLE limited (n integer)")
    with pytest.raises(CartoRateLimitException) as raised:
        SQLClient(auth).send("SELECT 1")
    assert (raised.value.limit, raised.value.remaining) == (1, 0)
    assert 0 < raised.value.retry_after <= 60 and raised.value.reset > 0
    copy = CopySQLClient(auth)
    copy.copyfrom("COPY limited FROM STDIN", iter([b"1\n"]))
    with pytest.raises(CartoRateLimitException) as raised:
        copy.copyfrom("COPY limited FROM STDIN", iter([b"2\n"]))
    assert (raised.value.limit, raised.value.remaining) == (1, 0)
    assert "over platform's limits" in str(raised.value)


def test_non_verified_client_and_wrong_urls(server, user, impl, NonVerifiedAPIKeyAuthClient,
                                            APIKeyAuthClient, SQLClient, CartoException):
    auth = NonVerifiedAPIKeyAuthClient(f"{server.url}/user/{user['username']}", user["api_key"])
    assert auth.base_url.endswith("/")
    assert SQLClient(auth).send("SELECT 2 AS two")["rows"] == [{"two": 2}]
    with pytest.raises(CartoException, match="Could not find a valid user_name"):
        APIKeyAuthClient("https://wrongurl", "key")


def test_iterable_errors_abort_the_upload(rs_copy, rs_sql):
    rs_sql.send("CREATE TABLE broken (n integer)")

    def rows():
        yield b"".join(b"%d\n" % i for i in range(100_000))
        raise OSError("disk gone")

    with pytest.raises(RsCartoException, match="disk gone"):
        rs_copy.copyfrom("COPY broken FROM STDIN", rows())
    assert rs_sql.send("SELECT count(*) AS n FROM broken")["rows"] == [{"n": 0}]


def test_the_import_is_the_whole_migration():
    """Every public name of carto-python's three modules exists in carto_rs's."""
    import importlib

    for module in ("auth", "sql", "exceptions"):
        theirs = importlib.import_module(f"carto.{module}")
        ours = importlib.import_module(f"carto_rs.{module}")
        public = {name for name, value in vars(theirs).items()
                  if not name.startswith("_") and getattr(value, "__module__", None) ==
                  theirs.__name__}
        public |= {name for name in vars(theirs) if name.isupper()}
        # carto-python's AuthAPIClient (Basic auth for the v3 Auth API) has no SQL API use.
        assert public - set(vars(ours)) - {"AuthAPIClient"} == set(), module
    assert os.path.exists(os.path.join(os.path.dirname(carto_rs_sql.__file__), "sql.pyi"))


def test_the_radar_example_loads_and_reads_back(server, user, rs_sql):
    env = dict(os.environ, CARTO_API_URL=f"{server.url}/user/{user['username']}/",
               CARTO_API_KEY=user["api_key"], PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "examples/python/radar.py"), "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"loaded {2 * 360 * 250} echoes" in done.stdout
    rows = rs_sql.send(
        "SELECT count(*) AS n, count(the_geom_webmercator) AS mapped, "
        "count(reflectivity_dbz) AS echoes, max(reflectivity_dbz) AS top FROM radar_sweep"
    )["rows"][0]
    assert rows["n"] == rows["mapped"] == 2 * 360 * 250
    assert 0 < rows["echoes"] < rows["n"] and 60 < rows["top"] <= 65
    # The script printed what it read back: one line per sweep.
    assert len([line for line in done.stdout.splitlines() if line.split()[:1] in (["0"], ["1"])]) == 2


def test_ctrl_c_while_rust_iterates_a_list_aborts_too(rs_copy, rs_sql):
    """A list runs no Python code while carto_rs walks it, so only carto_rs's own check for
    signals between chunks can see the Ctrl-C (SIGALRM raises KeyboardInterrupt here, as
    SIGINT does by default)."""
    rs_sql.send("CREATE TABLE interrupted_list (n integer, s text)")
    # ~100 MB: several seconds of upload, far more than the 0.5 s before the signal.
    rows = [b"%d,%s\n" % (i, b"x" * 200) for i in range(500_000)]
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            rs_copy.copyfrom("COPY interrupted_list FROM STDIN WITH (FORMAT csv)", rows)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert rs_sql.send("SELECT count(*) AS n FROM interrupted_list")["rows"] == [{"n": 0}]


class RecordingProxy:
    """A TCP relay to the server that keeps every byte the client sent, to see the wire."""

    def __init__(self, port):
        import socket

        self.sent = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source, sink, record):
        try:
            while data := source.recv(65536):
                if record:
                    self.sent += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("compress", [True, False])
def test_copyfrom_body_is_gzip_exactly_when_asked(server, user, rs_sql, compress):
    """carto_rs's side of test_copy's carto-python-only wire test: Content-Encoding: gzip and a
    gzip body exactly when compress=True, and the server decodes it."""
    rs_sql.send("DROP TABLE IF EXISTS wire; CREATE TABLE wire (line text)")
    proxy = RecordingProxy(server.port)
    try:
        copy = carto_rs_sql.CopySQLClient(
            RsAuth(f"http://127.0.0.1:{proxy.port}/user/{user['username']}/", user["api_key"]))
        lines = [f"line {i}\n".encode() for i in range(1000)]
        assert copy.copyfrom("COPY wire FROM STDIN", iter(lines),
                             compress=compress)["total_rows"] == 1000
    finally:
        proxy.close()
    head, _, body = bytes(proxy.sent).partition(b"\r\n\r\n")
    headers = head.decode().lower().split("\r\n")
    assert headers[0].startswith("post /user/")
    assert ("content-encoding: gzip" in headers) is compress
    # The (chunked) body starts with gzip's magic number exactly when compressed.
    assert (b"\r\n\x1f\x8b" in body[:16]) is compress
    assert (b"line 0\n" in body) is not compress
    assert rs_sql.send("SELECT count(*) AS n FROM wire")["rows"] == [{"n": 1000}]
