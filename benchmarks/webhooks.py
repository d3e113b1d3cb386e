"""Benchmark of `POST /webhooks/stripe/` against a production server, on loopback.

    .venv/bin/python benchmarks/webhooks.py [--duration 10] [--senders 50] [--workers 2]
                                            [--worker-class sync] [--threads 4]

1. Creates (if missing) and migrates a *separate* PostgreSQL database (default `billing_bench`).
2. Starts gunicorn (`config.wsgi:application`, DEBUG off) on 127.0.0.1:<free port>, with a
   webhook secret of its own.
3. Signs distinct Stripe-shaped events ahead (each with its own id, timestamp now) and sends them
   with `--senders` concurrent connections (asyncio, one request per connection as gunicorn's sync
   workers close it) for a warm-up and then `--duration` seconds.
4. Prints events/s accepted (2xx), p50/p99 latency, errors, and `lost`: events answered 2xx that
   are not in the inbox afterwards (must be 0). Processing is asynchronous and not measured here.

Last line, machine-readable: `events_per_s=<n> p99_ms=<n> lost=<n>`. Goal on two cores: at least
1,000 events/s with p99 at most 50 ms (the load generator shares the cores with the server and
PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.entitlements import (  # noqa: E402 - after the path insert
    DEFAULT_DATABASE_URL,
    database_ensure,
    django_setup,
    gunicorn_running,
    percentile,
    redis_reachable,
    say,
)

SECRET = "whsec_benchmark_only"
PATH = "/webhooks/stripe/"


def signed_event(*, secret: str = SECRET, at: int | None = None) -> tuple[str, bytes]:
    """A Stripe-shaped event of a type we acknowledge and ignore, with its Stripe-Signature."""
    timestamp = int(time.time()) if at is None else at
    event = {
        "id": f"evt_bench_{uuid.uuid4().hex}",
        "object": "event",
        "type": "customer.created",
        "created": timestamp,
        "livemode": False,
        "data": {"object": {"id": f"cus_{uuid.uuid4().hex[:14]}", "object": "customer"}},
    }
    body = json.dumps(event).encode()
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}", body


def request_bytes(port: int, header: str, body: bytes) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {header}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _send(port: int, payload: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # until the server closes
        return int(status_line.split()[1]) if status_line else 0
    finally:
        writer.close()


async def load(
    port: int, requests: Sequence[bytes], *, senders: int, seconds: float
) -> tuple[int, int, list[float], float]:
    """Send `requests` in order with `senders` connections until `seconds` pass or they run out.
    Returns (accepted 2xx, errors, latencies in ms, elapsed seconds)."""
    queue = iter(requests)
    accepted, errors, latencies = 0, 0, []
    deadline = time.monotonic() + seconds

    async def sender() -> None:
        nonlocal accepted, errors
        for payload in queue:
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter()
            try:
                status = await _send(port, payload)
            except OSError:
                status = 0
            latencies.append((time.perf_counter() - started) * 1000)
            if 200 <= status < 300:
                accepted += 1
            else:
                errors += 1

    started = time.monotonic()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return accepted, errors, sorted(latencies), time.monotonic() - started


def inbox_count() -> int:
    from billing.models import StripeEvent

    return StripeEvent.objects.count()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    parser.add_argument("--threads", type=int, default=4, help="per worker, with --worker-class gthread")
    parser.add_argument("--rate-hint", type=int, default=3_000, help="events/s to pre-sign for (upper bound)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    database_ensure(args.database_url, recreate=False)
    django_setup(args.database_url)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    redis_url = args.redis_url if redis_reachable(args.redis_url) else ""
    os.environ["STRIPE_WEBHOOK_SECRET"] = SECRET
    total = int((args.duration + args.warmup) * args.rate_hint)
    say(f"signing {total:,} distinct events")
    events = [signed_event() for _ in range(total)]
    before = inbox_count()
    with gunicorn_running(
        database_url=args.database_url,
        redis_url=redis_url,
        workers=args.workers,
        worker_class=args.worker_class,
        threads=args.threads,
    ) as port:
        payloads = [request_bytes(port, header, body) for header, body in events]
        warm = int(args.warmup * args.rate_hint)
        if args.warmup > 0:
            asyncio.run(load(port, payloads[:warm], senders=args.senders, seconds=args.warmup))
        counted_from = inbox_count()
        accepted, errors, latencies, elapsed = asyncio.run(
            load(port, payloads[warm:], senders=args.senders, seconds=args.duration)
        )
        time.sleep(0.5)  # the last commits
        stored = inbox_count() - counted_from
    rate = accepted / elapsed if elapsed else 0.0
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    lost = max(0, accepted - stored)
    say(
        f"\n{accepted:,} events accepted in {elapsed:.1f} s with {args.senders} senders against gunicorn "
        f"{args.workers} x {args.worker_class}: {rate:,.0f} events/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"{errors} errors, {stored:,} new inbox rows (inbox had {before:,} before)"
    )
    say(f"note: {os.cpu_count()} CPU cores shared by the sender, gunicorn and PostgreSQL")
    print(f"events_per_s={rate:.0f} p99_ms={p99:.1f} lost={lost}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
