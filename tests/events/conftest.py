"""A carmaker's receiver on loopback, written with the `standardwebhooks` package: it verifies
every request it gets and answers what the test tells it to."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from events.models import EventEndpoint
from events.services.endpoints import endpoint_create


@dataclass(frozen=True)
class Received:
    msg_id: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int

    @property
    def event(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """Every request in arrival order; `answer(msg_id, nth_time_seen) -> status` decides."""

    def __init__(self) -> None:
        self.secret = ""
        self.received: list[Received] = []
        self.answer: Callable[[str, int], int] = lambda msg_id, seen: 200
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            wbufsize = 1 << 16  # the status line, headers and body leave in one write
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver.handle(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/billing"

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        msg_id = {k.lower(): v for k, v in headers.items()}.get("webhook-id", "")
        with self._lock:
            seen = sum(1 for r in self.received if r.msg_id == msg_id)
        status = self.answer(msg_id, seen) if verified else 400
        with self._lock:
            self.received.append(Received(msg_id, headers, body, verified, status))
        return status

    def accepted_ids(self) -> list[str]:
        """Ids in the order the receiver accepted them (2xx), duplicates included."""
        with self._lock:
            return [r.msg_id for r in self.received if 200 <= r.answered < 300]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def endpoint(receiver: Receiver, db) -> EventEndpoint:
    """An endpoint of all event types at the receiver, which knows its secret."""
    created, secret = endpoint_create(url=receiver.url, description="carmaker test receiver")
    receiver.secret = secret
    return created
