#!/usr/bin/env python3
"""The COPY benchmark: the whole path client -> HTTP -> carto-sql-api -> PostgreSQL, measured
side by side with `psql \\copy` (PostgreSQL's own speed, the limit), carto-python's
CopySQLClient and curl, in one run on one machine.

Contenders run interleaved (A B C A B C ...) for several rounds and the median is reported, so
a noisy neighbour hurts every contender alike; the ratio to psql is the figure that matters.
Every run's row count (COPY FROM) or output size (COPY TO) is checked, and the run fails if a
contender moved different data.

Run through bench/run.sh, which builds the binaries and prepares the Python environment.
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    wall: float
    cpu: float
    max_rss_kib: int
    server_rss_kib: int


@dataclass
class Result:
    contender: str
    direction: str
    dataset: str
    bytes: int
    rows: int
    runs: list = field(default_factory=list)

    def median(self, attr):
        return statistics.median(getattr(r, attr) for r in self.runs)


class Server:
    """carto-sql-api on a throwaway embedded cluster, with direct psql access for the baseline."""

    def __init__(self, binary, work):
        self.binary = binary
        self.work = work
        self.data_dir = work / "data"
        self.port = free_port()
        self.log = open(work / "server.log", "w")
        self.proc = subprocess.Popen(
            [binary, "--data-dir", str(self.data_dir), "serve", "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/version", timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise SystemExit("bench: the server did not start; see " + str(work / "server.log"))
                time.sleep(0.1)
        out = subprocess.run(
            [binary, "--data-dir", str(self.data_dir), "user", "add", "bench",
             "--server-url", f"http://127.0.0.1:{self.port}"],
            check=True, capture_output=True, text=True,
        )
        self.api_key = json.loads(out.stdout)["api_key"]
        self.base_url = f"http://127.0.0.1:{self.port}/user/bench/"
        self.api = self.base_url + "api/v2"
        self.psql_env = self._psql_env()

    def _psql_env(self):
        """Connection settings for psql as the user's master role, the role the API uses."""
        pid_file = self.data_dir / "postgres" / "data" / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        env = dict(os.environ)
        env.update(
            PGHOST=lines[4].strip(),
            PGPORT=lines[3].strip(),
            PGUSER="postgres",
            PGPASSWORD=(self.data_dir / "superuser-password").read_text().strip(),
            PGDATABASE="carto_meta",
        )
        password = subprocess.run(
            ["psql", "-Atc", "SELECT db_role || ' ' || db_password FROM api_keys "
             "WHERE username = 'bench' AND kind = 'master'"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.split()
        env.update(PGUSER=password[0], PGPASSWORD=password[1], PGDATABASE="carto_user_bench")
        return env

    def psql(self, sql):
        return subprocess.run(
            ["psql", "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            env=self.psql_env, check=True, capture_output=True, text=True,
        ).stdout.strip()

    def reset_peak_rss(self):
        # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each run gets its own peak.
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def generate(path, rows, geometry):
    """Deterministic data: text with quotes and commas, integers, and EWKT points."""
    with open(path, "w") as f:
        f.write("ext_id,name,value,the_geom\n" if geometry else "ext_id,name,value\n")
        for i in range(1, rows + 1):
            name = f'"place {i}, ""{i % 97}"" street"'
            value = (i * 7919) % 100000
            if geometry:
                lon = -180 + (i * 0.013717) % 360
                lat = -85 + (i * 0.007103) % 170
                f.write(f"{i},{name},{value},SRID=4326;POINT({lon:.6f} {lat:.6f})\n")
            else:
                f.write(f"{i},{name},{value}\n")


def measure(server, argv, env=None):
    """Runs one contender under GNU time: its own wall, CPU and peak RSS. (wait4's ru_maxrss
    would report this Python process's size, since Linux carries the peak over exec.)"""
    server.reset_peak_rss()
    stats = server.work / "time.out"
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-o", str(stats), "-f", "%U %S %M", *argv], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        raise SystemExit(f"bench: {' '.join(map(str, argv))} failed ({proc.returncode}): {stderr[-2000:]}")
    user, system, max_rss_kib = stats.read_text().split()[-3:]
    return Run(wall, float(user) + float(system), int(max_rss_kib), server.peak_rss_kib())


def contenders(server, carto_bin, python, direction, table, columns, path, out):
    """(name, argv, env) for each contender moving `path` into `table` (from) or out to `out`."""
    key, api = server.api_key, server.api
    cols = ", ".join(columns)
    if direction == "from":
        sql = f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv, HEADER true)"
        q = urllib.parse.quote(sql)
        yield "psql \\copy", ["psql", "-v", "ON_ERROR_STOP=1", "-c",
                               f"\\copy {table} ({cols}) FROM '{path}' WITH (FORMAT csv, HEADER true)"], server.psql_env
        if carto_bin:
            base = [carto_bin, "--base-url", server.base_url, "--api-key", key, "--quiet", "copy", "from", str(path), "--query", sql]
            yield "carto (gzip)", base, None
            yield "carto (no gzip)", base + ["--no-compress"], None
        yield "carto-python", [python, str(HERE / "carto_python_copy.py"), "from", server.base_url, key, sql, str(path)], None
        if importlib.util.find_spec("carto_rs"):  # carto_rs (crates/carto-py), when installed
            yield "carto_rs", [python, str(HERE / "carto_rs_copy.py"), "from", server.base_url, key, sql, str(path)], None
        yield "curl", ["curl", "-sS", "--fail-with-body", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/octet-stream",
                       "-H", "Transfer-Encoding: chunked", "-T", str(path), f"{api}/sql/copyfrom?api_key={key}&q={q}"], None
    else:
        sql = f"COPY {table} ({cols}) TO STDOUT WITH (FORMAT csv, HEADER true)"
        q = urllib.parse.quote(sql)
        yield "psql \\copy", ["psql", "-v", "ON_ERROR_STOP=1", "-c",
                               f"\\copy {table} ({cols}) TO '{out}' WITH (FORMAT csv, HEADER true)"], server.psql_env
        if carto_bin:
            base = [carto_bin, "--base-url", server.base_url, "--api-key", key, "--quiet", "copy", "to", str(out), "--query", sql]
            # On loopback carto asks for no gzip by default; --compress shows what gzip costs.
            yield "carto", base, None
            yield "carto (gzip)", base + ["--compress"], None
        yield "carto-python", [python, str(HERE / "carto_python_copy.py"), "to", server.base_url, key, sql, str(out)], None
        if importlib.util.find_spec("carto_rs"):
            yield "carto_rs", [python, str(HERE / "carto_rs_copy.py"), "to", server.base_url, key, sql, str(out)], None
        yield "curl", ["curl", "-sS", "--fail", "-o", str(out), f"{api}/sql/copyto?api_key={key}&q={q}"], None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows per dataset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default=str(ROOT / "target/release/carto-sql-api"))
    parser.add_argument("--carto", default=str(ROOT / "target/release/carto"))
    parser.add_argument("--out", default=str(ROOT / "docs/bench"), help="where results go")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--only", choices=["points", "plain", "carto"],
                        help="run one dataset only (carto: the CARTO-table cases, also run by default)")
    parser.add_argument("--direction", choices=["from", "to"], help="run one direction only")
    args = parser.parse_args()

    carto_bin = args.carto if Path(args.carto).exists() else None
    carto_results = []
    work = Path(tempfile.mkdtemp(prefix="carto-bench."))
    os.chmod(work, 0o755)  # the cluster's OS user must reach it when this runs as root
    server = Server(args.server, work)
    results = []
    try:
        cartodbfy = server.psql(
            "SELECT count(*) FROM pg_proc WHERE proname ILIKE 'cdb_cartodbfytable'") != "0"
        server.psql("CREATE TABLE points (ext_id int, name text, value int, the_geom geometry(Geometry, 4326))")
        if cartodbfy:
            server.psql("SELECT CDB_CartodbfyTable(current_schema, 'points')")
        server.psql("CREATE TABLE plain (ext_id int, name text, value int)")
        datasets = [
            ("points" + (" (cartodbfied)" if cartodbfy else ""), "points", ["ext_id", "name", "value", "the_geom"], True),
            ("plain", "plain", ["ext_id", "name", "value"], False),
        ]
        for label, table, columns, geometry in datasets:
            if args.only and table != args.only:
                continue
            path = work / f"{table}.csv"
            generate(path, args.rows, geometry)
            size = path.stat().st_size
            print(f"== {label}: {args.rows} rows, {size / 1e6:.1f} MB", flush=True)

            by_name = {}
            from_rounds = 0 if args.direction == "to" else args.rounds
            if args.direction == "to":
                # COPY TO needs the table filled once.
                server.psql(f"TRUNCATE {table}")
                subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-c",
                                f"\\copy {table} ({', '.join(columns)}) FROM '{path}' WITH (FORMAT csv, HEADER true)"],
                               env=server.psql_env, check=True, capture_output=True)
            for round_ in range(from_rounds):
                for name, argv, env in contenders(server, carto_bin, sys.executable, "from", table, columns, path, None):
                    server.psql(f"TRUNCATE {table}")
                    run = measure(server, argv, env)
                    count = int(server.psql(f"SELECT count(*) FROM {table}"))
                    if count != args.rows:
                        raise SystemExit(f"bench: {name} loaded {count} rows into {table}, expected {args.rows}")
                    by_name.setdefault(name, Result(name, "COPY FROM", label, size, args.rows)).runs.append(run)
                    print(f"   from  round {round_ + 1}  {name:16} {run.wall:7.2f} s", flush=True)
            results.extend(by_name.values())

            by_name, sizes = {}, {}
            out = work / f"{table}.out.csv"
            for round_ in range(0 if args.direction == "from" else args.rounds):
                for name, argv, env in contenders(server, carto_bin, sys.executable, "to", table, columns, None, out):
                    if out.exists():
                        out.unlink()
                    run = measure(server, argv, env)
                    sizes[name] = out.stat().st_size
                    by_name.setdefault(name, Result(name, "COPY TO", label, sizes[name], args.rows)).runs.append(run)
                    print(f"   to    round {round_ + 1}  {name:16} {run.wall:7.2f} s", flush=True)
            if len(set(sizes.values())) > 1:
                raise SystemExit(f"bench: COPY TO outputs differ in size: {sizes}")
            results.extend(by_name.values())
            out.unlink(missing_ok=True)
            path.unlink()
        if cartodbfy and args.only in (None, "carto") and args.direction != "to":
            carto_results = carto_table_cases(server, carto_bin, args, work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    if results:
        write_report(results, args)
    if carto_results:
        write_carto_report(carto_results, args)


# --- CARTO tables: what a CARTO user's load costs, next to PostgreSQL's limit ---------------------

CARTO_COLUMNS = ["ext_id", "name", "value", "the_geom"]


def carto_table_contenders(server, carto_bin, path):
    """(name, argv, env, table, prepare SQL) for each way of getting the points CSV into a CARTO
    table, and the limit they are measured against: `psql \\copy` into a bare table (columns and
    geometry, no index, no trigger)."""
    cols = ", ".join(CARTO_COLUMNS)
    options = "WITH (FORMAT csv, HEADER true)"
    sql = f"COPY carto_points ({cols}) FROM STDIN {options}"
    psql_copy = lambda table: ["psql", "-v", "ON_ERROR_STOP=1", "-c",
                               f"\\copy {table} ({cols}) FROM '{path}' {options}"]
    yield "psql \\copy, bare table", psql_copy("bare_points"), server.psql_env, "bare_points", \
        "TRUNCATE bare_points"
    yield "psql \\copy, CARTO table", psql_copy("carto_points"), server.psql_env, "carto_points", \
        "TRUNCATE carto_points"
    if carto_bin:
        auth = [carto_bin, "--base-url", server.base_url, "--api-key", server.api_key, "--quiet"]
        yield "carto copy from, CARTO table", auth + ["copy", "from", str(path), "--query", sql], None, \
            "carto_points", "TRUNCATE carto_points"
        yield "carto import (new table)", auth + ["import", str(path), "--table", "imported_points"], None, \
            "imported_points", "DROP TABLE IF EXISTS imported_points"
    q = urllib.parse.quote(sql)
    yield "curl copyfrom, CARTO table", ["curl", "-sS", "--fail-with-body", "-o", "/dev/null", "-X", "POST",
                                         "-H", "Content-Type: application/octet-stream", "-H", "Transfer-Encoding: chunked",
                                         "-T", str(path), f"{server.api}/sql/copyfrom?api_key={server.api_key}&q={q}"], \
        None, "carto_points", "TRUNCATE carto_points"


def carto_table_cases(server, carto_bin, args, work):
    """Loads the points CSV every way of `carto_table_contenders`, interleaved for `args.rounds`
    rounds; checks each load's row count, and that every CARTO table got its web-mercator
    column; returns the Results (dataset "CARTO table")."""
    server.psql(f"CREATE TABLE bare_points (ext_id int, name text, value int, the_geom geometry(Geometry, 4326))")
    server.psql(f"CREATE TABLE carto_points (ext_id int, name text, value int, the_geom geometry(Geometry, 4326))")
    server.psql("SELECT CDB_CartodbfyTable(current_schema, 'carto_points')")
    path = work / "carto_points.csv"
    generate(path, args.rows, True)
    size = path.stat().st_size
    print(f"== CARTO tables: {args.rows} rows, {size / 1e6:.1f} MB", flush=True)
    by_name = {}
    try:
        for round_ in range(args.rounds):
            for name, argv, env, table, prepare in carto_table_contenders(server, carto_bin, path):
                server.psql(prepare)
                run = measure(server, argv, env)
                count = int(server.psql(f"SELECT count(*) FROM {table}"))
                if count != args.rows:
                    raise SystemExit(f"bench: {name} loaded {count} rows into {table}, expected {args.rows}")
                if table != "bare_points":
                    merc = int(server.psql(f"SELECT count(the_geom_webmercator) FROM {table}"))
                    if merc != args.rows:
                        raise SystemExit(f"bench: {name} left {args.rows - merc} rows of {table} without the_geom_webmercator")
                by_name.setdefault(name, Result(name, "COPY FROM", "CARTO table", size, args.rows)).runs.append(run)
                print(f"   carto round {round_ + 1}  {name:30} {run.wall:7.2f} s", flush=True)
    finally:
        path.unlink(missing_ok=True)
    return list(by_name.values())


def write_carto_report(results, args):
    """carto-results.{json,md,png}: each way's median time as a multiple of the bare-table limit
    (lower is better; 1.0 = PostgreSQL's speed into a table with no index or trigger)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = next(r for r in results if r.contender == "psql \\copy, bare table").median("wall")
    rows = [{
        "contender": r.contender, "seconds": r.median("wall"),
        "seconds_all_rounds": [round(x.wall, 3) for x in r.runs],
        "times_bare": r.median("wall") / base,
        "server_peak_rss_mib": max(x.server_rss_kib for x in r.runs) / 1024,
    } for r in results]
    stamp = time.strftime("%Y-%m-%d")
    (out / "carto-results.json").write_text(json.dumps(
        {"date": stamp, "machine": machine(), "rows": args.rows, "rounds": args.rounds, "results": rows}, indent=2))
    lines = [
        "# Loading CARTO tables", "",
        f"{stamp}, {machine()}; {args.rows:,} EWKT points ({results[0].bytes / 1e6:.1f} MB CSV), "
        f"median of {args.rounds} interleaved rounds.",
        "Time as a multiple of `psql \\copy` into a bare table (lower is better; 1.00 = PostgreSQL's limit).", "",
        "| contender | s (median) | s (each round) | × bare |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        each = ", ".join(f"{x:.2f}" for x in r["seconds_all_rounds"])
        lines.append(f"| {r['contender']} | {r['seconds']:.2f} | {each} | {r['times_bare']:.2f} |")
    (out / "carto-results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.no_chart:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(9, 3.8))
        ax.barh([r["contender"] for r in rows][::-1], [r["times_bare"] for r in rows][::-1], color="tab:blue")
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel("time ÷ psql \\copy into a bare table (lower is better)")
        ax.set_title(f"Loading {args.rows:,} points into CARTO tables ({stamp})")
        fig.tight_layout()
        fig.savefig(out / "carto-results.png", dpi=110)


def machine():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {pg}"


def write_report(results, args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        base = next(b for b in results if b.direction == r.direction and b.dataset == r.dataset
                    and b.contender == "psql \\copy")
        wall = r.median("wall")
        rows.append({
            "direction": r.direction, "dataset": r.dataset, "contender": r.contender,
            "seconds": wall, "mb_per_s": r.bytes / 1e6 / wall, "rows_per_s": r.rows / wall,
            "ratio_to_psql": base.median("wall") / wall,
            "client_cpu_s_per_gb": r.median("cpu") / (r.bytes / 1e9),
            "client_peak_rss_mib": max(x.max_rss_kib for x in r.runs) / 1024,
            "server_peak_rss_mib": max(x.server_rss_kib for x in r.runs) / 1024
                                   if r.contender != "psql \\copy" else None,
        })
    stamp = time.strftime("%Y-%m-%d")
    (out / "results.json").write_text(json.dumps(
        {"date": stamp, "machine": machine(), "rows": args.rows, "rounds": args.rounds, "results": rows}, indent=2))
    lines = [
        "# COPY benchmark results", "",
        f"{stamp}, {machine()}; {args.rows:,} rows per dataset, median of {args.rounds} interleaved rounds.",
        "Throughput ratio to `psql \\copy` (higher is better; 1.00 = PostgreSQL's own speed).", "",
        "| direction | dataset | contender | s | MB/s | rows/s | × psql | client CPU s/GB | client peak RSS MiB | server peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        server = "–" if r["server_peak_rss_mib"] is None else f"{r['server_peak_rss_mib']:.1f}"
        lines.append(
            f"| {r['direction']} | {r['dataset']} | {r['contender']} | {r['seconds']:.2f} | {r['mb_per_s']:.1f} "
            f"| {r['rows_per_s']:,.0f} | {r['ratio_to_psql']:.2f} | {r['client_cpu_s_per_gb']:.2f} "
            f"| {r['client_peak_rss_mib']:.1f} | {server} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.no_chart:
        chart(rows, out / "results.png", stamp)


def chart(rows, path, stamp):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["direction"], r["dataset"]) for r in rows})
    names = list(dict.fromkeys(r["contender"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [next((r["ratio_to_psql"] for r in rows if (r["direction"], r["dataset"]) == g
                        and r["contender"] == name), 0) for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], values, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(groups))])
    ax.set_xticklabels([f"{d}\n{s}" for d, s in groups])
    ax.set_ylabel("throughput ÷ psql \\copy")
    ax.set_title(f"carto-rs COPY benchmark ({stamp})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
