"""Benchmark of the vehicle entitlement endpoints against a production server, on loopback.

    .venv/bin/python benchmarks/entitlements.py [--vehicles 100000] [--duration 10] [--connections 8]
                                                [--workers 2] [--worker-class sync] [--client auto]

1. Creates (if missing) and migrates a *separate* PostgreSQL database (default `billing_bench`),
   seeds the fleet once (benchmarks/seed_fleet.py) and issues credentials to `--clients` vehicles.
2. Starts gunicorn (`config.wsgi:application`, DEBUG off, LOG_LEVEL=WARNING) on 127.0.0.1:<free port>.
3. Loads `/ping` (baseline: no database, no auth), the JSON entitlement list and the offline token,
   each for a warm-up and then `--duration` seconds, rotating through the clients' credentials,
   with `wrk` when installed, else a light Python client (threads, http.client keep-alive).
4. Prints requests, req/s, p50/p99 latency and the ratio to the baseline (goal: >= 0.5).

Bounded: fixed durations, a fixed number of connections, gunicorn is stopped at the end (and on
Ctrl-C). `--profile N` instead runs N in-process requests per endpoint under cProfile.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/billing_bench"
GOAL_RATIO = 0.5
ENDPOINTS = (
    ("ping (baseline)", "/ping", False),
    ("entitlements (JSON)", "/api/v1/vehicle/entitlements/", True),
    ("entitlement token", "/api/v1/vehicle/entitlements/token/", True),
)
_LOOPBACK_NAMES = {"localhost"}


def say(message: str) -> None:
    print(message, flush=True)


# --- pure parts (tested in tests/test_benchmark_smoke.py) ----------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of ascending values, nearest-rank method; NaN when empty."""
    if not sorted_values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Result:
    name: str
    path: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def result_from_latencies(
    *, name: str, path: str, latencies_s: Sequence[float], errors: int, seconds: float
) -> Result:
    ordered = sorted(latencies_s)
    return Result(
        name=name,
        path=path,
        requests=len(ordered),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
    )


def median_result(runs: Sequence[Result]) -> Result:
    """The run with the median req/s (rounds are interleaved, so background load hits all endpoints
    alike; the median discards the rounds a burst of it distorted most)."""
    ordered = sorted(runs, key=lambda r: r.rps)
    return ordered[(len(ordered) - 1) // 2]


def format_table(results: Sequence[Result], *, goal: float = GOAL_RATIO) -> str:
    """A fixed-width table; the first result is the baseline the others are compared with."""
    baseline = results[0].rps if results else 0.0
    header = ("endpoint", "requests", "errors", "req/s", "p50 ms", "p99 ms", "vs ping", "goal")
    rows = [header]
    for index, r in enumerate(results):
        ratio = r.rps / baseline if baseline else math.nan
        verdict = "baseline" if index == 0 else ("met" if ratio >= goal else "MISSED")
        rows.append(
            (
                r.name,
                f"{r.requests:,}",
                f"{r.errors:,}",
                f"{r.rps:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{ratio:.2f}",
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


# --- database ------------------------------------------------------------------------------------


def _require_loopback(host: str, what: str) -> None:
    if host in _LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    sys.exit(f"{what} must be on a loopback address, not {host!r}")


def database_ensure(url: str, *, recreate: bool) -> None:
    """Create the benchmark database if missing (psycopg, autocommit). Refuses the app's and the
    test databases: the benchmark only ever writes to its own."""
    import psycopg
    from psycopg import sql

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    if (
        not name
        or name == "billing"
        or name.startswith("test")
        or name in {"postgres", "template0", "template1"}
    ):
        sys.exit(f"refusing to use database {name!r}: the benchmark needs its own (e.g. billing_bench)")
    _require_loopback(parts.hostname or "", "the benchmark database")
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if recreate:
            say(f"dropping database {name}")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            say(f"creating database {name}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def django_setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["LOG_LEVEL"] = "WARNING"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def fleet_prepare(*, vehicles: int, clients: int) -> list[str]:
    from django.core.management import call_command
    from django.db import connection

    from benchmarks.seed_fleet import client_credentials_issue, fleet_seed

    say("migrating")
    call_command("migrate", verbosity=0)
    started = time.monotonic()
    report = fleet_seed(vehicles=vehicles, progress=say)
    if report.vehicles_created:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        say(f"seeded {report.vehicles_created:,} vehicles in {time.monotonic() - started:.0f} s")
    say(f"issuing credentials to {clients:,} client vehicles")
    return client_credentials_issue(clients=clients, vehicles=vehicles, progress=say)


# --- server --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_reachable(url: str) -> bool:
    """Whether a Redis server answers PING at `url` (loopback only)."""
    parts = urllib.parse.urlsplit(url)
    _require_loopback(parts.hostname or "", "the benchmark Redis")
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def gunicorn_running(
    *,
    database_url: str,
    redis_url: str,
    workers: int,
    worker_class: str,
    threads: int,
    app: str = "config.wsgi:application",
) -> Iterator[int]:
    """gunicorn on 127.0.0.1:<free port> for the duration of the block; always stopped after."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_ENV": "development",
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONWARNINGS": "ignore:No directory at:UserWarning",  # whitenoise: no collected static files
        "REDIS_URL": redis_url,  # the cache of the rate limits (empty: per-process memory)
        # 1,000 simulated cars fetch tokens far more often than real ones: count, but never refuse.
        "RATE_LIMIT_ENTITLEMENT_TOKEN": "100000000/minute",
    }
    command = [
        str(ROOT / ".venv" / "bin" / "gunicorn"),
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--log-level",
        "warning",
        "--backlog",
        "256",
    ]
    if worker_class == "gthread":
        command += ["--threads", str(threads), "--keep-alive", "30"]
    say(f"starting gunicorn: {workers} x {worker_class} on 127.0.0.1:{port}")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        _wait_for(port, proc)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: the arbiter stops its workers
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        say("gunicorn stopped")


def _wait_for(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            status, _ = http_get(port, "/ping")
            if status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer /ping in time")


def http_get(port: int, path: str, authorization: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": authorization} if authorization else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def endpoints_check(port: int, credentials: Sequence[str]) -> None:
    """One request per endpoint before loading it: a 401 at 5,000 req/s measures nothing."""
    for name, path, needs_auth in ENDPOINTS:
        status, body = http_get(port, path, credentials[0] if needs_auth else None)
        if status != 200:
            raise RuntimeError(f"{name}: {path} answered {status}: {body[:300]!r}")
        data = json.loads(body)
        if path.endswith("/entitlements/") and len(data["features"]) < 1:
            raise RuntimeError(f"{name}: the sample vehicle has no features: {data}")
        if path.endswith("/token/") and data["token"].count(".") != 2:
            raise RuntimeError(f"{name}: not a compact JWS: {data}")


# --- load generators -----------------------------------------------------------------------------

_WRK_SCRIPT = """
local headers = {%s}
local n = #headers
local i = 0
local use_auth = %s
request = function()
  i = i %% n + 1
  if use_auth then
    return wrk.format("GET", nil, {["Authorization"] = headers[i]})
  end
  return wrk.format("GET", nil)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %%d %%d %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def load_wrk(
    *,
    port: int,
    name: str,
    path: str,
    headers: Sequence[str],
    duration: float,
    warmup: float,
    connections: int,
) -> Result:
    wrk = shutil.which("wrk")
    assert wrk is not None
    quoted = ",".join(json.dumps(h) for h in headers) if headers else '""'
    script = _WRK_SCRIPT % (quoted, "true" if headers else "false")
    threads = min(2, connections)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        url = f"http://127.0.0.1:{port}{path}"
        base = [wrk, "-t", str(threads), "-c", str(connections), "-s", handle.name, "--timeout", "5s"]
        if warmup > 0:
            subprocess.run(
                [*base, "-d", f"{warmup:g}s", url], capture_output=True, check=True, timeout=warmup + 30
            )
        run = subprocess.run(
            [*base, "-d", f"{duration:g}s", url],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + 30,
        )
    finally:
        os.unlink(handle.name)
    line = next(line for line in run.stdout.splitlines() if line.startswith("BENCH "))
    requests, micros, *errors, p50_us, p99_us = (int(v) for v in line.split()[1:])
    return Result(
        name=name,
        path=path,
        requests=requests,
        errors=sum(errors),
        seconds=micros / 1e6,
        p50_ms=p50_us / 1000,
        p99_ms=p99_us / 1000,
    )


def load_python(
    *,
    port: int,
    name: str,
    path: str,
    headers: Sequence[str],
    duration: float,
    warmup: float,
    connections: int,
) -> Result:
    """`connections` threads, each with one keep-alive http.client connection (reconnected when
    the server closes it, as gunicorn's sync workers do), for warm-up + duration seconds."""
    started = time.monotonic()
    measure_from = started + warmup
    stop_at = measure_from + duration
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections

    def worker(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine, turn = latencies[number], number
        while True:
            if time.monotonic() >= stop_at:
                break
            begin = time.perf_counter()
            request_headers = {"Authorization": headers[turn % len(headers)]} if headers else {}
            turn += connections
            try:
                conn.request("GET", path, headers=request_headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                if response.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
            elapsed = time.perf_counter() - begin
            if time.monotonic() >= measure_from:
                if ok:
                    mine.append(elapsed)
                else:
                    errors[number] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=warmup + duration + 30)
    return result_from_latencies(
        name=name,
        path=path,
        latencies_s=[value for chunk in latencies for value in chunk],
        errors=sum(errors),
        seconds=duration,
    )


# --- profiling -----------------------------------------------------------------------------------


def profile_in_process(credentials: Sequence[str], requests: int) -> None:
    """cProfile of `requests` calls per endpoint through Django's test client (no HTTP, no gunicorn)."""
    import cProfile
    import pstats

    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    for name, path, needs_auth in ENDPOINTS:
        for warm in range(20):
            client.get(path, HTTP_AUTHORIZATION=credentials[warm % len(credentials)] if needs_auth else "")
        reset_queries()
        profiler = cProfile.Profile()
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            profiler.enable()
            for number in range(requests):
                client.get(
                    path, HTTP_AUTHORIZATION=credentials[number % len(credentials)] if needs_auth else ""
                )
            profiler.disable()
            elapsed = time.perf_counter() - started
        say(
            f"\n== {name} {path}: {elapsed / requests * 1000:.3f} ms/request in process, "
            f"{len(queries) / requests:.2f} queries/request"
        )
        for sql in {q["sql"][:160] for q in queries.captured_queries[-10:]}:
            say(f"   sql: {sql}")
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(15)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=1_000, help="vehicles with a credential (rotated)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring, per endpoint")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the median is shown")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", choices=("sync", "gthread"), default="sync")
    parser.add_argument("--threads", type=int, default=2, help="threads per gthread worker")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
        help="cache of the server's rate limits, as in production; unreachable: per-process memory",
    )
    parser.add_argument("--reseed", action="store_true", help="drop the benchmark database first")
    parser.add_argument("--profile", type=int, metavar="N", default=0, help="profile N requests, no server")
    args = parser.parse_args(argv)
    if not (
        1 <= args.connections <= 64
        and 1 <= args.workers <= 8
        and 0 < args.duration <= 120
        and 1 <= args.rounds <= 9
    ):
        parser.error("bounds: 1-64 connections, 1-8 workers, duration up to 120 s, 1-9 rounds")
    if not 1 <= args.clients <= args.vehicles:
        parser.error("--clients must be between 1 and --vehicles")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    database_ensure(args.database_url, recreate=args.reseed)
    django_setup(args.database_url)
    credentials = fleet_prepare(vehicles=args.vehicles, clients=args.clients)
    if args.profile:
        profile_in_process(credentials, args.profile)
        return 0
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    if args.client == "wrk" and not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk), use --client python")
    load = load_wrk if use_wrk else load_python
    from django.db import connections

    connections.close_all()  # the server has its own connections
    redis_url = args.redis_url if args.redis_url and redis_reachable(args.redis_url) else ""
    say(f"rate-limit cache: {redis_url or 'per-process memory (no Redis reachable)'}")
    rounds: dict[str, list[Result]] = {name: [] for name, _, _ in ENDPOINTS}
    with gunicorn_running(
        database_url=args.database_url,
        redis_url=redis_url,
        workers=args.workers,
        worker_class=args.worker_class,
        threads=args.threads,
    ) as port:
        endpoints_check(port, credentials)
        for number in range(1, args.rounds + 1):
            for name, path, needs_auth in ENDPOINTS:
                say(
                    f"round {number}/{args.rounds}: {path}: {args.warmup:g} s warm-up + {args.duration:g} s, "
                    f"{args.connections} connections"
                )
                result = load(
                    port=port,
                    name=name,
                    path=path,
                    headers=credentials if needs_auth else [],
                    duration=args.duration,
                    warmup=args.warmup,
                    connections=args.connections,
                )
                rounds[name].append(result)
                say(f"  {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
    results = [median_result(runs) for runs in rounds.values()]
    say(
        f"\n{args.vehicles:,} vehicles, {len(credentials):,} client credentials (rotated), gunicorn "
        f"{args.workers} x {args.worker_class}, {args.connections} connections, "
        f"{args.rounds} x {args.duration:g} s per endpoint (interleaved; median round shown), "
        f"load generator: {'wrk' if use_wrk else 'Python http.client threads'}, "
        f"rate-limit cache: {'Redis' if redis_url else 'memory'}"
    )
    say(
        f"note: this machine has {os.cpu_count()} CPU cores; the load generator, gunicorn and PostgreSQL "
        "share them, so absolute numbers are lower bounds and the ratios are what to compare.\n"
    )
    say(format_table(results))
    failed = [r for r in results if r.errors]
    if failed:
        say(f"\nERRORS: {', '.join(f'{r.name}: {r.errors}' for r in failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
