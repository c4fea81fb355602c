"""CopySQLClient (carto-python's and carto_rs's): every copyfrom and copyto flavour, gzip on
and off."""

import gzip
import io

import pytest

COPY_FROM = "COPY t (the_geom, name, age) FROM STDIN WITH (FORMAT csv, HEADER true)"


def csv_lines(n, start=0):
    yield b"the_geom,name,age\n"
    for i in range(start, start + n):
        yield f"SRID=4326;POINT({i % 180} {i % 80}),name {i},{i}\n".encode()


@pytest.fixture(scope="module")
def user(server):
    """One user for this module (a user is a database: creating one per test costs time);
    each test starts from fresh tables."""
    return server.add_user()


@pytest.fixture
def table(sql):
    sql.send(
        "DROP TABLE IF EXISTS t, t2; "
        "CREATE TABLE t (the_geom geometry(Geometry,4326), name text, age integer); "
        "SELECT CDB_CartodbfyTable(current_schema, 't')"
    )
    return "t"


def rows_of(sql):
    return sql.send(
        "SELECT count(*) AS n, count(the_geom_webmercator) AS merc, sum(age) AS ages FROM t"
    )["rows"][0]


@pytest.mark.parametrize("compress", [True, False])
def test_copyfrom_an_iterable(sql, copy, table, compress):
    result = copy.copyfrom(COPY_FROM, csv_lines(2000), compress=compress)
    assert result["total_rows"] == 2000
    assert result["time"] >= 0
    assert rows_of(sql) == {"n": 2000, "merc": 2000, "ages": sum(range(2000))}


@pytest.mark.parametrize("compress", [True, False])
def test_copyfrom_a_file_object(sql, copy, table, compress):
    data = io.BytesIO(b"".join(csv_lines(3000)))
    result = copy.copyfrom_file_object(COPY_FROM, data, compress=compress)
    assert result["total_rows"] == 3000
    assert rows_of(sql) == {"n": 3000, "merc": 3000, "ages": sum(range(3000))}


@pytest.mark.parametrize("compress", [True, False])
def test_copyfrom_a_file_path(sql, copy, table, compress, tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"".join(csv_lines(500)))
    result = copy.copyfrom_file_path(COPY_FROM, str(path), compress=compress)
    assert result["total_rows"] == 500
    assert rows_of(sql)["n"] == 500


def test_copyfrom_errors_are_carto_exceptions(sql, copy, table, CartoException):
    with pytest.raises(CartoException) as raised:
        copy.copyfrom("COPY no_such_table FROM STDIN", iter([b"1\n"]))
    assert 'relation "no_such_table" does not exist' in str(raised.value)
    with pytest.raises(CartoException) as raised:
        copy.copyfrom(COPY_FROM, iter([b"the_geom,name,age\n", b"not a geometry,x,1\n"]))
    assert "parse error" in str(raised.value)
    assert rows_of(sql)["n"] == 0


def test_copyto_file_object_path_and_stream(copy, table, tmp_path):
    copy.copyfrom(COPY_FROM, csv_lines(1000))
    query = "COPY (SELECT name, age FROM t ORDER BY cartodb_id) TO STDOUT WITH (FORMAT csv)"
    expected = "".join(f"name {i},{i}\n" for i in range(1000)).encode()

    out = io.BytesIO()
    copy.copyto_file_object(query, out)
    assert out.getvalue() == expected

    path = tmp_path / "out.csv"
    copy.copyto_file_path(query, str(path))
    assert path.read_bytes() == expected
    copy.copyto_file_path(query, str(path), append=True)
    assert path.read_bytes() == expected * 2

    stream = copy.copyto_stream(query)
    assert stream.read() == expected


def test_copyto_a_subquery_with_ewkt(copy, table):
    copy.copyfrom(COPY_FROM, csv_lines(3))
    stream = copy.copyto_stream(
        "COPY (SELECT cartodb_id, ST_AsEWKT(the_geom), name FROM t ORDER BY cartodb_id) TO STDOUT"
    )
    assert stream.read().decode() == (
        "1\tSRID=4326;POINT(0 0)\tname 0\n"
        "2\tSRID=4326;POINT(1 1)\tname 1\n"
        "3\tSRID=4326;POINT(2 2)\tname 2\n"
    )


def test_copyto_errors_are_carto_exceptions(copy, CartoException):
    with pytest.raises(CartoException) as raised:
        copy.copyto("COPY no_such_table TO STDOUT")
    assert str(raised.value) == '400 Client Error: relation "no_such_table" does not exist'


def test_a_whole_table_goes_out_and_back_in(sql, copy, table):
    """carto-python's duplicate_table example: copyto piped into copyfrom."""
    copy.copyfrom(COPY_FROM, csv_lines(1500))
    sql.send(
        "CREATE TABLE t2 (cartodb_id bigint NOT NULL, the_geom geometry(Geometry,4326), "
        "the_geom_webmercator geometry(Geometry,3857), name text, age integer); "
        "SELECT CDB_CartodbfyTable(current_schema, 't2')"
    )
    response = copy.copyto("COPY t TO STDOUT")
    result = copy.copyfrom("COPY t2 FROM STDIN", response)
    assert result["total_rows"] == 1500
    # Everything, the web mercator column included, arrived as it was...
    assert copy.copyto_stream("COPY t2 TO STDOUT").read() == \
        copy.copyto_stream("COPY t TO STDOUT").read()
    # ...and new rows get new ids.
    assert sql.send("INSERT INTO t2 (name) VALUES ('new') RETURNING cartodb_id")["rows"] == [
        {"cartodb_id": 1501}
    ]


@pytest.mark.carto_python_only
@pytest.mark.parametrize("compress", [True, False])
def test_copyfrom_body_is_gzip_exactly_when_asked(sql, copy, table, compress, monkeypatch):
    """What carto-python sends on the wire, and that the server decodes it."""
    sent = []
    real_send = copy.client.send

    def recording_send(url, http_method, **kwargs):
        if not url.endswith("/copyfrom"):
            return real_send(url, http_method, **kwargs)
        body = b"".join(kwargs["data"])
        sent.append((kwargs["headers"].get("Content-Encoding"), body))
        kwargs["data"] = iter([body])
        return real_send(url, http_method, **kwargs)

    monkeypatch.setattr(copy.client, "send", recording_send)
    result = copy.copyfrom(COPY_FROM, csv_lines(10), compress=compress)
    assert result["total_rows"] == 10
    [(encoding, body)] = sent
    if compress:
        assert encoding == "gzip"
        assert gzip.decompress(body) == b"".join(csv_lines(10))
    else:
        assert encoding is None
        assert body == b"".join(csv_lines(10))
    assert rows_of(sql)["n"] == 10
