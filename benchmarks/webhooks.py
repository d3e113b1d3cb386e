"""Benchmark of `POST /webhooks/stripe/` against a production server, on loopback.

    .venv/bin/python benchmarks/webhooks.py [--duration 10] [--senders 50] [--workers 2]
                                            [--worker-class sync] [--threads 4]

1. Creates (if missing) and migrates a *separate* PostgreSQL database (default `billing_bench`).
2. Starts gunicorn (`config.wsgi:application`, DEBUG off) on 127.0.0.1:<free port>, with a
   webhook secret of its own.
3. Signs distinct Stripe-shaped events ahead (each with its own id, timestamp now) and sends them
   with `--senders` concurrent connections (one thread, epoll over raw sockets: the sender shares the
   cores with the server; keep-alive, reconnecting whenever the server closes as gunicorn's sync
   workers do) for a warm-up and then `--duration` seconds.
4. Prints events/s accepted (2xx), p50/p99 latency, errors, and `lost`: events answered 2xx that
   are not in the inbox afterwards (must be 0). Processing is asynchronous and not measured here.

Last line, machine-readable: `events_per_s=<n> p99_ms=<n> lost=<n>`. Goal on two cores: at least
1,000 events/s with p99 at most 50 ms (the load generator shares the cores with the server and
PostgreSQL).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import selectors
import socket
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
    """One POST, keep-alive (HTTP/1.1's default): gthread workers keep the connection open, sync
    workers answer `Connection: close` and the sender reconnects for its next event."""
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {header}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Sender:
    """One closed-loop sender: a non-blocking socket, the response read so far, when its request
    started. The connection is kept between requests unless the server answers `Connection: close`."""

    __slots__ = ("pending", "received", "sock", "started")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.received = b""
        self.started = 0.0
        self.pending = b""  # request bytes not yet written (a connect in progress, a full buffer)


def _response_complete(data: bytes) -> tuple[int, bool] | None:
    """(status, server closes) once `data` holds a whole response with a Content-Length body."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end].lower()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line[15:])
    if len(data) < end + 4 + length:
        return None
    return int(data.split(b" ", 2)[1]), b"\r\nconnection: close" in head


def load(
    port: int, requests: Sequence[bytes], *, senders: int, seconds: float
) -> tuple[int, int, list[float], float]:
    """Send `requests` in order with `senders` concurrent connections (each sends its next event when
    the previous one is answered) until `seconds` pass or they run out. One thread, one epoll loop
    over raw sockets: the load generator shares the cores with the server, so it must cost little.
    A latency runs from before the connect (when one is needed) to the end of the response.
    Returns (accepted 2xx, errors, latencies in ms, elapsed seconds)."""
    queue = iter(requests)
    accepted, errors, latencies = 0, 0, []
    selector = selectors.DefaultSelector()
    started_at = time.monotonic()
    deadline = started_at + seconds
    active = 0

    def close(sender: _Sender) -> None:
        if sender.sock is not None:
            selector.unregister(sender.sock)
            sender.sock.close()
            sender.sock = None

    def write(sender: _Sender) -> None:
        assert sender.sock is not None
        try:
            sent = sender.sock.send(sender.pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        sender.pending = sender.pending[sent:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sender.pending else 0)
        selector.modify(sender.sock, events, sender)

    def start(sender: _Sender) -> bool:
        payload = next(queue, None)
        if payload is None or time.monotonic() >= deadline:
            close(sender)
            return False
        sender.started, sender.received, sender.pending = time.perf_counter(), b"", payload
        if sender.sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sender.sock = sock
            selector.register(sock, selectors.EVENT_WRITE, sender)  # writable: connected
        else:
            write(sender)
        return True

    def finish(sender: _Sender, status: int) -> None:
        nonlocal accepted, errors
        latencies.append((time.perf_counter() - sender.started) * 1000)
        if 200 <= status < 300:
            accepted += 1
        else:
            errors += 1

    for _ in range(senders):
        active += start(_Sender())
    while active:
        for key, mask in selector.select(timeout=5):
            sender: _Sender = key.data
            sock = sender.sock
            assert sock is not None
            if mask & selectors.EVENT_WRITE:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    close(sender)
                    finish(sender, 0)
                    active -= 1
                    active += start(sender)
                    continue
                write(sender)
            if not mask & selectors.EVENT_READ:
                continue
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            sender.received += chunk
            done = _response_complete(sender.received) if chunk else (0, True)
            if done is None:
                continue
            status, server_closes = done
            if server_closes:
                close(sender)
            finish(sender, status)
            active -= 1
            active += start(sender)
    selector.close()
    return accepted, errors, sorted(latencies), time.monotonic() - started_at


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
    parser.add_argument(
        "--app",
        default="config.wsgi:application",
        help="the WSGI application; config.wsgi:django_application measures without the webhook fast lane",
    )
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
        app=args.app,
    ) as port:
        payloads = [request_bytes(port, header, body) for header, body in events]
        warm = int(args.warmup * args.rate_hint)
        if args.warmup > 0:
            load(port, payloads[:warm], senders=args.senders, seconds=args.warmup)
        counted_from = inbox_count()
        accepted, errors, latencies, elapsed = load(
            port, payloads[warm:], senders=args.senders, seconds=args.duration
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
