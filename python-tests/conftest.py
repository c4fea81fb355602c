"""Fixtures: one carto-sql-api server for the session, fresh users per test.

Every test that uses a client runs twice: against carto-python (`carto`) and against
carto_rs, its Rust-backed drop-in. The `impl` fixture picks the package; the fixtures named
like the classes (`APIKeyAuthClient`, `SQLClient`, `CartoException`, ...) are that package's,
so test bodies read exactly as code written against either one. Tests marked
`carto_python_only` look at carto-python's internals and run for it alone.

Nothing is built here: the server binary is `$CARTO_SQL_API_BIN`, else
`target/debug/carto-sql-api` under the repository root (`cargo build -p carto-sql-api`).
"""

import contextlib
import importlib
import itertools
import json
import os
import signal
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# carto-python warns about plain-HTTP base URLs; these tests talk to 127.0.0.1 on purpose.
warnings.filterwarnings("ignore", message=".*https.*", category=UserWarning)


def server_binary():
    path = Path(os.environ.get("CARTO_SQL_API_BIN") or REPO_ROOT / "target/debug/carto-sql-api")
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.exists():
        raise SystemExit(f"{path} not found: run `cargo build -p carto-sql-api` first")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text):
    """PIDs of live processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


class Server:
    """A running carto-sql-api with its own data dir."""

    def __init__(self, binary, root, port, process):
        self.binary = binary
        self.root = root
        self.data_dir = root / "data"
        self.port = port
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self._names = itertools.count()

    def add_user(self, name=None, api_key=None):
        """Creates a user with the CLI; returns its JSON (`username`, `api_key`, `base_url`)."""
        name = name or f"u{next(self._names)}_{os.getpid()}"
        api_key = api_key or f"key-{name}"
        out = subprocess.run(
            [str(self.binary), "--data-dir", str(self.data_dir), "user", "add", name,
             "--api-key", api_key, "--server-url", self.url],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout
        return json.loads(out)

    def log(self):
        return (self.root / "server.log").read_text(errors="replace")


class ServerError(Exception):
    pass


@contextlib.contextmanager
def running_server(binary=None):
    """Starts carto-sql-api on a free port with a fresh data dir; stops it and removes
    everything on exit, failing if any process of that data dir is left."""
    binary = binary or server_binary()
    # A 0755 dir the unprivileged PostgreSQL user can reach (as root, a private dir would
    # make the cluster live elsewhere, under /var/tmp).
    root = Path(tempfile.mkdtemp(prefix="carto-py-tests-"))
    os.chmod(root, 0o755)
    port = free_port()
    log = open(root / "server.log", "wb")
    process = subprocess.Popen(
        [str(binary), "--data-dir", str(root / "data"), "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    srv = Server(binary, root, port, process)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise ServerError(f"server exited with {process.returncode}:\n{srv.log()}")
            try:
                with urllib.request.urlopen(f"{srv.url}/api/v2/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"server not up after 90 s:\n{srv.log()}")
            time.sleep(0.2)
        yield srv
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        # The embedded cluster stops with the server: nothing may be left running.
        deadline = time.monotonic() + 15
        while processes_mentioning(str(root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers = processes_mentioning(str(root))
        shutil.rmtree(root, ignore_errors=True)
        if leftovers:
            raise ServerError(f"processes left behind by the server: {leftovers}")


@pytest.fixture(scope="session")
def server():
    try:
        with running_server() as srv:
            yield srv
    except ServerError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def user(server):
    """A fresh user: JSON from `user add`."""
    return server.add_user()


IMPLEMENTATIONS = ["carto", "carto_rs"]


class Implementation:
    """One client package: its `auth`, `sql` and `exceptions` modules, and the module of the
    classes that say which HTTP error a CartoException wraps (pyrestcli's for carto-python,
    carto_rs.exceptions for carto_rs)."""

    def __init__(self, name):
        self.name = name
        self.auth = importlib.import_module(f"{name}.auth")
        self.sql = importlib.import_module(f"{name}.sql")
        self.exceptions = importlib.import_module(f"{name}.exceptions")
        self.http_errors = importlib.import_module(
            "pyrestcli.exceptions" if name == "carto" else "carto_rs.exceptions")


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    if request.param != "carto" and request.node.get_closest_marker("carto_python_only"):
        pytest.skip("looks at carto-python's internals")
    return Implementation(request.param)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "carto_python_only: checks carto-python's internals; not run for carto_rs")


@pytest.fixture
def APIKeyAuthClient(impl):
    return impl.auth.APIKeyAuthClient


@pytest.fixture
def NonVerifiedAPIKeyAuthClient(impl):
    return impl.auth.NonVerifiedAPIKeyAuthClient


@pytest.fixture
def SQLClient(impl):
    return impl.sql.SQLClient


@pytest.fixture
def BatchSQLClient(impl):
    return impl.sql.BatchSQLClient


@pytest.fixture
def CopySQLClient(impl):
    return impl.sql.CopySQLClient


@pytest.fixture
def CartoException(impl):
    return impl.exceptions.CartoException


@pytest.fixture
def CartoRateLimitException(impl):
    return impl.exceptions.CartoRateLimitException


@pytest.fixture
def BadRequestException(impl):
    return impl.http_errors.BadRequestException


@pytest.fixture
def UnauthorizedErrorException(impl):
    return impl.http_errors.UnauthorizedErrorException


@pytest.fixture
def ForbiddenErrorException(impl):
    return impl.http_errors.ForbiddenErrorException


@pytest.fixture
def auth(server, user, APIKeyAuthClient):
    """The client's APIKeyAuthClient with the path-style base URL."""
    return APIKeyAuthClient(f"{server.url}/user/{user['username']}/", user["api_key"])


@pytest.fixture
def sql(auth, SQLClient):
    return SQLClient(auth)


@pytest.fixture
def copy(auth, CopySQLClient):
    return CopySQLClient(auth)


@pytest.fixture
def localhost_names(monkeypatch):
    """Makes `*.localhost` resolve to 127.0.0.1 (such names do not resolve on these machines)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
