"""Run a piece of work in several threads released at the same instant (the concurrency tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import connections

T = TypeVar("T")


def run_concurrently(work: Callable[[int], T], *, threads: int, timeout: float = 60.0) -> list[T]:
    """Run `work(i)` for i in range(threads), all released at once by a barrier; each thread closes its own
    database connections. Returns the results in index order; re-raises the first exception of any thread;
    fails if a thread is still running after `timeout`."""
    barrier = threading.Barrier(threads)
    results: list = [None] * threads
    errors: list[BaseException] = []
    lock = threading.Lock()

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=timeout)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            with lock:
                errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = sum(worker.is_alive() for worker in workers)
    with lock:
        failures = list(errors)

    if failures:
        first = failures[0]
        if len(failures) > 1:
            first.add_note(f"{len(failures) - 1} other thread(s) failed too: {failures[1:]!r}")
        if hung:
            first.add_note(f"{hung} thread(s) still running after {timeout} s")
        raise first
    if hung:
        raise AssertionError(f"{hung} of {threads} thread(s) still running after {timeout} s")
    return results
