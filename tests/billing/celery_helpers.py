"""Real Celery processes for the tests: workers and beats over Redis, on the test database."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from django.conf import settings

REQUIRES_REDIS = "needs REDIS_URL (make test sets it)"


def uses_redis_broker() -> bool:
    return settings.CELERY_BROKER_URL.startswith("redis")


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a Celery process that works on this test session's database and proxy."""
    db = settings.DATABASES["default"]
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "STRIPE_API_BASE": settings.STRIPE_API_BASE,
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "STRIPE_TIMEOUT_SECONDS": "5",
        "STRIPE_RATE_LIMIT_PER_SECOND": str(settings.STRIPE_RATE_LIMIT_PER_SECOND),
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def _log():
    """Where the process writes: CELERY_TEST_LOG_DIR when set (debugging), else nowhere."""
    folder = os.environ.get("CELERY_TEST_LOG_DIR")
    if not folder:
        return subprocess.DEVNULL
    return open(os.path.join(folder, f"celery-{time.time_ns()}.log"), "w")


def worker_start(*, pool: str = "solo", concurrency: int = 1, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-Q",
            "celery",
            "-l",
            "INFO",
        ],
        env=process_env(**env),
        cwd=settings.BASE_DIR,
        stdout=_log(),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def beat_start(schedule_file: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "beat", "--schedule", schedule_file, "-l", "INFO"],
        env=process_env(**env),
        cwd=settings.BASE_DIR,
        stdout=_log(),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, *, timeout: float = 20) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL of the whole process group if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def running(*procs: subprocess.Popen) -> Iterator[tuple[subprocess.Popen, ...]]:
    try:
        yield procs
    finally:
        for proc in procs:
            stop(proc)


def wait_until(condition: Callable[[], bool], *, timeout: float, every: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
