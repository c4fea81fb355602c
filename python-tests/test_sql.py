"""APIKeyAuthClient and SQLClient (carto-python's and carto_rs's) against the server."""

import pytest


def test_path_style_base_url(server, user, APIKeyAuthClient, SQLClient):
    auth = APIKeyAuthClient(f"{server.url}/user/{user['username']}/", user["api_key"])
    assert auth.username == user["username"]
    rows = SQLClient(auth).send("SELECT current_user AS who")["rows"]
    assert rows == [{"who": f"carto_{user['username']}_master"}]


def test_host_style_base_url(server, user, localhost_names, APIKeyAuthClient, SQLClient):
    # No /user/ segment: the server can only know the user from the Host header.
    auth = APIKeyAuthClient(f"http://{user['username']}.localhost:{server.port}/", user["api_key"])
    assert auth.username == user["username"]
    rows = SQLClient(auth).send("SELECT current_user AS who")["rows"]
    assert rows == [{"who": f"carto_{user['username']}_master"}]


def test_base_url_printed_by_user_add_works(user, APIKeyAuthClient, SQLClient):
    auth = APIKeyAuthClient(user["base_url"], user["api_key"])
    assert SQLClient(auth).send("SELECT 1 AS one")["rows"] == [{"one": 1}]


def test_get_for_short_queries_post_for_long_ones(server, user, sql):
    # GET: do_post=False and under 1024 characters.
    sql.send("CREATE TABLE t (name text, the_geom geometry(Geometry,4326))", do_post=False)
    sql.send("SELECT CDB_CartodbfyTable(current_schema, 't')", do_post=False)
    # POST: over 1024 characters, even with do_post=False.
    values = ", ".join(f"('name {i}', 'SRID=4326;POINT({i % 180} {i % 80})')" for i in range(60))
    long_insert = f"INSERT INTO t (name, the_geom) VALUES {values}"
    assert len(long_insert) >= 1024
    answer = sql.send(long_insert, do_post=False)
    assert answer["total_rows"] == 60
    rows = sql.send(
        "SELECT cartodb_id, name, ST_AsText(the_geom) AS g, "
        "ST_SRID(the_geom_webmercator) AS srid FROM t WHERE cartodb_id IN (1, 60) ORDER BY 1",
        do_post=False,
    )["rows"]
    assert rows == [
        {"cartodb_id": 1, "name": "name 0", "g": "POINT(0 0)", "srid": 3857},
        {"cartodb_id": 60, "name": "name 59", "g": "POINT(59 59)", "srid": 3857},
    ]
    # The server's request log says which method each request used.
    mine = f"/user/{user['username']}/api/v2/sql"
    methods = {"GET" if "GET" in line else "POST"
               for line in server.log().splitlines() if mine + " " in line or mine + "\x1b" in line}
    assert methods == {"GET", "POST"}


def test_cartodbfied_table_is_described_like_carto(sql):
    sql.send("CREATE TABLE places (name text, geom geometry(Point,4326))")
    assert sql.send("SELECT CDB_CartodbfyTable(current_schema, 'places')")["rows"] == [
        {"cdb_cartodbfytable": "places"}
    ]
    # What clients look at to tell a CARTO table (carto-python's describe_table example).
    columns = sql.send(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'places' ORDER BY ordinal_position"
    )["rows"]
    assert [c["column_name"] for c in columns] == [
        "cartodb_id", "the_geom", "the_geom_webmercator", "name"]
    indexes = sql.send(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'places' ORDER BY 1")["rows"]
    assert [i["indexname"] for i in indexes] == [
        "places_pkey", "places_the_geom_idx", "places_the_geom_webmercator_idx"]
    assert sql.send("SELECT CDB_UserTables() AS t")["rows"] == [{"t": "places"}]


def test_sql_error_is_a_carto_exception(sql, CartoException):
    with pytest.raises(CartoException) as raised:
        sql.send("SELECT * FROM no_such_table")
    assert 'relation "no_such_table" does not exist' in str(raised.value)


def test_wrong_key_is_401_access_denied(server, user, APIKeyAuthClient, SQLClient, CartoException,
                                        UnauthorizedErrorException):
    auth = APIKeyAuthClient(f"{server.url}/user/{user['username']}/", "not-the-key")
    with pytest.raises(CartoException) as raised:
        SQLClient(auth).send("SELECT 1")
    # pyrestcli picks the exception class from the status: this one is 401's.
    assert isinstance(raised.value.args[0], UnauthorizedErrorException)
    assert "Access denied" in str(raised.value)


def test_unknown_user_is_a_carto_exception(server, APIKeyAuthClient, SQLClient, CartoException):
    auth = APIKeyAuthClient(f"{server.url}/user/nobody/", "whatever")
    with pytest.raises(CartoException) as raised:
        SQLClient(auth).send("SELECT 1")
    assert "Sorry, we can't find CARTO user 'nobody'" in str(raised.value)


def test_catalog_queries_of_the_carto_python_examples(sql):
    """What carto-python's table_info / running_queries examples ask, with the master key."""
    sql.send("CREATE TABLE t (name text); SELECT CDB_CartodbfyTable(current_schema, 't')")
    columns = sql.send(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 't' ORDER BY ordinal_position"
    )["rows"]
    assert columns == [
        {"column_name": "cartodb_id", "data_type": "bigint"},
        {"column_name": "the_geom", "data_type": "USER-DEFINED"},
        {"column_name": "the_geom_webmercator", "data_type": "USER-DEFINED"},
        {"column_name": "name", "data_type": "text"},
    ]
    oid = sql.send(
        "SELECT pg_class.oid AS _oid, pg_class.relname FROM pg_class, pg_roles, pg_namespace "
        "WHERE pg_roles.oid = pg_class.relowner AND pg_roles.rolname = current_user "
        "AND pg_namespace.oid = pg_class.relnamespace AND pg_class.relkind = 'r'"
    )["rows"]
    assert [r["relname"] for r in oid] == ["t"]
    triggers = sql.send(f"SELECT tgname FROM pg_trigger WHERE tgrelid = {oid[0]['_oid']} ORDER BY 1")
    assert [r["tgname"] for r in triggers["rows"]] == [
        "sync_cartodb_id_seq", "test_quota", "track_updates",
        "update_the_geom_webmercator_trigger",
    ]
    running = sql.send(
        "SELECT pid, query FROM pg_stat_activity WHERE usename = current_user")["rows"]
    assert any("pg_stat_activity" in r["query"] for r in running)
