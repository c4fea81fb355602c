"""BatchSQLClient (carto-python's and carto_rs's) against the server's batch jobs (`/sql/job`,
spec §7 and §11).

Every test gets a fresh user: jobs queue per user and one query runs per user at a time, so a
test's long job must not delay another test's jobs.

`create_and_wait_for_completion` sleeps `carto.sql.BATCH_READ_STATUS_AFTER_SECONDS` (2 s)
between reads (carto_rs.sql has the same constant); the `fast_polling` fixture lowers that
module constant (the method reads it at each loop) so that the file runs in seconds. Everything
else is the client as shipped. Our own waits poll `read` with a deadline.
"""

import re
import subprocess
import time

import pytest
import requests

FINAL = {"done", "failed", "cancelled", "unknown"}


@pytest.fixture
def fast_polling(monkeypatch, impl):
    monkeypatch.setattr(impl.sql, "BATCH_READ_STATUS_AFTER_SECONDS", 0.1)


@pytest.fixture(params=["path", "host"])
def auth(request, server, user, APIKeyAuthClient):
    """The master key's APIKeyAuthClient, with each base URL style."""
    if request.param == "path":
        return APIKeyAuthClient(f"{server.url}/user/{user['username']}/", user["api_key"])
    request.getfixturevalue("localhost_names")
    return APIKeyAuthClient(f"http://{user['username']}.localhost:{server.port}/", user["api_key"])


@pytest.fixture
def path_auth(server, user, APIKeyAuthClient):
    """The master key's APIKeyAuthClient, path style only (tests where the style is not the
    point)."""
    return APIKeyAuthClient(f"{server.url}/user/{user['username']}/", user["api_key"])


@pytest.fixture
def batch(path_auth, BatchSQLClient):
    return BatchSQLClient(path_auth)


@pytest.fixture
def sql(path_auth, SQLClient):
    return SQLClient(path_auth)


def wait_for(batch, job_id, statuses, timeout=15):
    """Reads the job every 50 ms until its status is one of `statuses`; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        job = batch.read(job_id)
        if job["status"] in statuses:
            return job
        assert job["status"] not in FINAL, f"job ended {job['status']}, not {statuses}: {job}"
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout} s: {job}"
        time.sleep(0.05)


def job_url(server, user, job_id=""):
    return f"{server.url}/user/{user['username']}/api/v2/sql/job/{job_id}"


def error_of(raised):
    """The server's error list inside carto-python's CartoException (pyrestcli's exception
    is its `args[0]`, whose own `args[0]` is the body's `error`)."""
    return raised.value.args[0].args[0]


# --- create / read -----------------------------------------------------------------------


def test_create_one_query_then_read(server, user, auth, BatchSQLClient):
    batch = BatchSQLClient(auth)
    job = batch.create("SELECT 1")
    assert job["status"] in {"pending", "running", "done"}
    assert job["user"] == user["username"]
    assert job["query"] == "SELECT 1"
    assert len(job["job_id"]) == 36
    read = batch.read(job["job_id"])
    assert read["job_id"] == job["job_id"]
    assert read["user"] == user["username"]
    assert read["created_at"] == job["created_at"]
    done = wait_for(batch, job["job_id"], {"done"})
    assert done["query"] == "SELECT 1"
    assert "failed_reason" not in done


def test_create_a_list_of_queries(server, user, auth, SQLClient, BatchSQLClient):
    batch = BatchSQLClient(auth)
    queries = [
        "CREATE TABLE steps (n int)",
        "INSERT INTO steps VALUES (1)",
        "INSERT INTO steps SELECT max(n) + 1 FROM steps",
    ]
    job = batch.create(queries)
    assert job["status"] in {"pending", "running", "done"}
    assert job["user"] == user["username"]
    assert [q["query"] for q in job["query"]] == queries
    done = wait_for(batch, job["job_id"], {"done"})
    assert done["query"] == [{"query": q, "status": "done"} for q in queries]
    # Run in order: the third saw the second's row.
    rows = SQLClient(auth).send("SELECT n FROM steps ORDER BY n")["rows"]
    assert rows == [{"n": 1}, {"n": 2}]


def test_create_and_wait_for_a_job_that_succeeds(server, user, auth, fast_polling, SQLClient,
                                                 BatchSQLClient):
    batch = BatchSQLClient(auth)
    job = batch.create_and_wait_for_completion(
        "CREATE TABLE t (name text); INSERT INTO t VALUES ('from batch'), ('twice')"
    )
    assert job["status"] == "done"
    assert job["user"] == user["username"]
    rows = SQLClient(auth).send("SELECT name FROM t ORDER BY name")["rows"]
    assert rows == [{"name": "from batch"}, {"name": "twice"}]


def test_create_and_wait_for_a_job_that_fails(server, user, auth, fast_polling, BatchSQLClient,
                                              CartoException):
    batch = BatchSQLClient(auth)
    with pytest.raises(CartoException) as raised:
        batch.create_and_wait_for_completion("SELECT * FROM no_such_table")
    message = str(raised.value)
    assert "Batch SQL job failed" in message
    assert 'relation "no_such_table" does not exist' in message
    assert "'status': 'failed'" in message


def test_a_failing_query_stops_a_list(batch, sql, fast_polling, CartoException):
    with pytest.raises(CartoException) as raised:
        batch.create_and_wait_for_completion([
            "CREATE TABLE t (n int)",
            "INSERT INTO t SELECT n FROM missing",
            "INSERT INTO t VALUES (3)",
        ])
    message = str(raised.value)
    assert "Batch SQL job failed" in message
    assert 'relation "missing" does not exist' in message
    # The message shows the job; read it back: the third query never ran.
    job = batch.read(re.search(r"'job_id': '([0-9a-f-]{36})'", message).group(1))
    assert job["status"] == "failed"
    assert job["failed_reason"] == 'relation "missing" does not exist'
    assert [q["status"] for q in job["query"]] == ["done", "failed", "pending"]
    assert sql.send("SELECT count(*) AS n FROM t")["rows"] == [{"n": 0}]


# --- update (PUT) --------------------------------------------------------------------------


def test_update_a_pending_job(batch, sql):
    """One query runs per user: a job queued behind a running `pg_sleep(3)` stays pending
    for those 3 s, long enough to PUT a new query into it."""
    sql.send("CREATE TABLE t (name text)")
    blocker = batch.create("SELECT pg_sleep(3)")
    wait_for(batch, blocker["job_id"], {"running"})
    waiting = batch.create("INSERT INTO t VALUES ('original')")
    assert batch.read(waiting["job_id"])["status"] == "pending"

    updated = batch.update(waiting["job_id"], "INSERT INTO t VALUES ('updated')")
    assert updated["job_id"] == waiting["job_id"]
    assert updated["status"] == "pending"
    assert updated["query"] == "INSERT INTO t VALUES ('updated')"
    # The blocker was still running, so the PUT raced nothing.
    assert batch.read(blocker["job_id"])["status"] == "running"

    done = wait_for(batch, waiting["job_id"], {"done"})
    assert done["query"] == "INSERT INTO t VALUES ('updated')"
    assert wait_for(batch, blocker["job_id"], {"done"})["status"] == "done"
    assert sql.send("SELECT name FROM t")["rows"] == [{"name": "updated"}]


def test_update_a_finished_job_is_refused(batch, fast_polling, CartoException, BadRequestException):
    job = batch.create_and_wait_for_completion("SELECT 1")
    with pytest.raises(CartoException) as raised:
        batch.update(job["job_id"], "SELECT 2")
    assert isinstance(raised.value.args[0], BadRequestException)
    assert error_of(raised) == [
        f"Cannot update job {job['job_id']}: its status is done, only pending jobs can be updated"
    ]
    assert batch.read(job["job_id"])["query"] == "SELECT 1"


def test_update_a_running_job_is_refused(batch, CartoException):
    job = batch.create("SELECT pg_sleep(30)")
    wait_for(batch, job["job_id"], {"running"})
    try:
        with pytest.raises(CartoException) as raised:
            batch.update(job["job_id"], "SELECT 2")
        assert error_of(raised) == [
            f"Cannot update job {job['job_id']}: its status is running, "
            "only pending jobs can be updated"
        ]
    finally:
        assert batch.cancel(job["job_id"]) == "cancelled"
    assert batch.read(job["job_id"])["query"] == "SELECT pg_sleep(30)"


# --- cancel (DELETE) -----------------------------------------------------------------------


def sleeping_backends(sql):
    return sql.send(
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()"
    )["rows"][0]["n"]


def test_cancel_a_running_job(server, user, auth, SQLClient, BatchSQLClient):
    batch = BatchSQLClient(auth)
    sql = SQLClient(auth)
    job = batch.create("SELECT pg_sleep(30)")
    wait_for(batch, job["job_id"], {"running"})
    # `running` is saved just before the query reaches PostgreSQL: wait for its backend.
    deadline = time.monotonic() + 5
    while not sleeping_backends(sql) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeping_backends(sql) == 1
    started = time.monotonic()
    assert batch.cancel(job["job_id"]) == "cancelled"
    assert batch.read(job["job_id"])["status"] == "cancelled"
    # The query itself stops, not just the job's status.
    deadline = time.monotonic() + 5
    while sleeping_backends(sql) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeping_backends(sql) == 0
    assert time.monotonic() - started < 5
    # And the user's queue moves on.
    after = batch.create("SELECT 1")
    assert wait_for(batch, after["job_id"], {"done"}, timeout=5)["status"] == "done"


def test_cancel_a_pending_job(batch, sql):
    sql.send("CREATE TABLE t (name text)")
    blocker = batch.create("SELECT pg_sleep(30)")
    wait_for(batch, blocker["job_id"], {"running"})
    waiting = batch.create("INSERT INTO t VALUES ('never')")
    assert batch.read(waiting["job_id"])["status"] == "pending"
    assert batch.cancel(waiting["job_id"]) == "cancelled"
    assert batch.read(waiting["job_id"])["status"] == "cancelled"

    assert batch.cancel(blocker["job_id"]) == "cancelled"
    # A job queued after both runs; the cancelled one did not (and never will).
    marker = batch.create("INSERT INTO t VALUES ('marker')")
    wait_for(batch, marker["job_id"], {"done"})
    assert sql.send("SELECT name FROM t")["rows"] == [{"name": "marker"}]
    assert batch.read(waiting["job_id"])["status"] == "cancelled"


def test_cancel_a_finished_job_returns_done(server, user, auth, fast_polling, BatchSQLClient):
    batch = BatchSQLClient(auth)
    job = batch.create_and_wait_for_completion("SELECT 1")
    # carto-python turns exactly this 400 into 'done' (spec §11); check the server's answer
    # first, since a 200 with "status": "done" would also come out as 'done'.
    raw = requests.delete(
        job_url(server, user, job["job_id"]), params={"api_key": user["api_key"]}, timeout=10)
    assert raw.status_code == 400
    assert raw.json() == {"error": ["Cannot set status from done to cancelled"]}
    assert batch.cancel(job["job_id"]) == "done"
    assert batch.read(job["job_id"])["status"] == "done"


def test_cancel_a_cancelled_job_raises(batch, CartoException):
    job = batch.create("SELECT pg_sleep(30)")
    assert batch.cancel(job["job_id"]) == "cancelled"
    with pytest.raises(CartoException) as raised:
        batch.cancel(job["job_id"])
    assert error_of(raised) == ["Cannot set status from cancelled to cancelled"]


def test_unknown_job(batch, CartoException):
    with pytest.raises(CartoException) as raised:
        batch.read("irrelevantJob")
    assert error_of(raised) == ["Job with id irrelevantJob not found"]


def test_another_users_job_is_not_found(server, batch, APIKeyAuthClient, BatchSQLClient,
                                        CartoException):
    other = server.add_user()
    theirs = BatchSQLClient(APIKeyAuthClient(
        f"{server.url}/user/{other['username']}/", other["api_key"])).create("SELECT 1")
    with pytest.raises(CartoException) as raised:
        batch.read(theirs["job_id"])
    assert error_of(raised) == [f"Job with id {theirs['job_id']} not found"]


# --- keys ------------------------------------------------------------------------------------


def regular_key(server, user):
    token = f"regular-{user['username']}"
    subprocess.run(
        [str(server.binary), "--data-dir", str(server.data_dir), "key", "add",
         user["username"], "--api-key", token],
        check=True, capture_output=True, text=True, timeout=60,
    )
    return token


@pytest.mark.parametrize("key", ["default_public", None, "regular"])
def test_only_the_master_key_may_use_batch_jobs(server, user, batch, key, APIKeyAuthClient,
                                                BatchSQLClient, CartoException,
                                                ForbiddenErrorException):
    if key == "regular":
        key = regular_key(server, user)
    job = batch.create("SELECT 1")
    other = BatchSQLClient(APIKeyAuthClient(f"{server.url}/user/{user['username']}/", key))
    calls = [
        lambda: other.create("SELECT 1"),
        lambda: other.read(job["job_id"]),
        lambda: other.update(job["job_id"], "SELECT 2"),
        lambda: other.cancel(job["job_id"]),
    ]
    for call in calls:
        with pytest.raises(CartoException) as raised:
            call()
        # pyrestcli picks the class from the status (403) and says only "Access denied".
        assert isinstance(raised.value.args[0], ForbiddenErrorException)
        assert "Access denied" in str(raised.value)
    # What the server answered, seen directly.
    params = {"api_key": key} if key else {}
    raw = requests.post(job_url(server, user), params=params, json={"query": "SELECT 1"},
                        timeout=10)
    assert raw.status_code == 403
    assert raw.json() == {"error": ["permission denied"]}
    # The job is the master key's and untouched (neither updated nor cancelled).
    seen = batch.read(job["job_id"])
    assert seen["query"] == "SELECT 1"
    assert seen["status"] != "cancelled"
