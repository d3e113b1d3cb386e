"""The Stripe SDK's transport (`billing/gateways/stripe.py`, `_BudgetedHTTPClient`): kept-alive
`http.client` connections, one per thread and host.

- calls reuse one connection;
- a connection the server closed while idle is replaced before the next request is sent, so an
  idle timeout on the other side never turns a charge into an unknown outcome;
- a server that does not answer in time, or drops the connection after reading the request, is an
  `APIConnectionError` the SDK may retry (same key), which the gateway records as unknown.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from billing.gateways.stripe import _BudgetedHTTPClient


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections: list[socket.socket] = []
        self.mode = "answer"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self) -> None:
        super().setup()
        self.server.connections.append(self.request)  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "hang":
            time.sleep(1.5)
        if mode == "drop":
            self.request.shutdown(socket.SHUT_RDWR)
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_budget(settings):
    settings.STRIPE_RATE_LIMIT_PER_SECOND = 0


def post(client: _BudgetedHTTPClient, server: _Server) -> tuple[bytes, int]:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/payment_intents"
    content, status, headers = client.request("post", url, {"Idempotency-Key": "k"}, "amount=1")
    assert headers["content-type"] == "application/json"  # case-insensitive, as the SDK expects
    return content, status


def test_calls_reuse_one_kept_alive_connection(server):
    client = _BudgetedHTTPClient(timeout=5)

    answers = [post(client, server) for _ in range(5)]

    assert answers == [(b'{"ok": true}', 200)] * 5
    assert len(server.connections) == 1


def test_a_connection_closed_by_the_server_while_idle_is_replaced_before_sending(server):
    client = _BudgetedHTTPClient(timeout=5)
    post(client, server)
    server.connections[0].shutdown(socket.SHUT_RDWR)  # the server's idle timeout
    time.sleep(0.05)

    assert post(client, server) == (b'{"ok": true}', 200)  # not an unknown outcome
    assert len(server.connections) == 2


@pytest.mark.parametrize("mode", ["hang", "drop"])
def test_no_answer_is_a_connection_error_the_sdk_may_retry(server, mode):
    client = _BudgetedHTTPClient(timeout=0.5)
    post(client, server)
    server.mode = mode

    with pytest.raises(stripe.APIConnectionError) as failed:
        post(client, server)

    assert failed.value.should_retry is True
    server.mode = "answer"
    assert post(client, server) == (b'{"ok": true}', 200)  # a fresh connection afterwards
