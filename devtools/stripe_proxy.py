"""A reverse proxy in front of localstripe that honours idempotency keys as Stripe does, and injects
faults on command (the network edge, not a mock). The tests and the demo (`make run`) both use it.

Demo: `python -m devtools.stripe_proxy --upstream http://127.0.0.1:8420 --port 8421` (loopback only;
stored keys expire after 24 hours, and only the latest calls are kept in the record).

localstripe ignores idempotency keys and never fails on its own. This proxy, run on loopback in a
background thread with its own event loop, adds what real Stripe does and what networks do:

- idempotency as Stripe implements it: a repeated POST key with the same method, path and body
  replays the stored response (header `Idempotent-Replayed: true`) without reaching localstripe;
  the same key with another body gets 400 `idempotency_error`; a key still in flight gets 409.
  Like Stripe, only responses of requests that executed are stored (2xx and 402), not refusals;
- a record of every call: method, path, idempotency key, form body, and what the proxy did;
- faults on command for the next N matching calls: a 500, a 429 (optionally with
  `Stripe-Should-Retry`), a hang past the client timeout, and "drop after forward": the request
  reaches localstripe (and its result is stored under the key, as Stripe would), then the
  connection is closed without an answer: the unknown-outcome case;
- optionally a request budget per second above which it answers 429 (rate-limit tests);
- optionally (`answer_payment_intents`, off by default) it answers `POST /v1/payment_intents`
  itself with a succeeded PaymentIntent echoing amount, currency, customer, payment method and
  metadata, without forwarding: the benchmarks measure our own work with Stripe's left out
  (idempotency, faults, the rate limit and the record apply as to any call).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web

FaultKind = Literal["status_500", "status_429", "hang", "drop_after_forward"]
_HOP_BY_HOP = {
    "connection",
    "content-length",
    "content-encoding",
    "host",
    "keep-alive",
    "transfer-encoding",
    "date",
    "server",
}


@dataclass(frozen=True)
class RecordedCall:
    method: str
    path: str
    query: str
    idempotency_key: str | None
    form: dict[str, str]
    # forwarded | replayed | idempotency_conflict | idempotency_in_flight | rate_limited | fault:<kind>
    outcome: str
    status: int | None  # what the client was sent; None when the connection was dropped
    reached_upstream: bool  # localstripe executed it (forwarded, drop_after_forward, hang+forward)


@dataclass
class _Fault:
    kind: FaultKind
    method: str | None
    path: str | None
    remaining: int
    should_retry: bool | None
    hang_seconds: float
    forward: bool

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or self.path == path)


@dataclass(frozen=True)
class _Stored:
    fingerprint: tuple
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float = 0.0  # time.monotonic() when stored


def _error_body(error_type: str, message: str, code: str | None = None) -> bytes:
    error = {"type": error_type, "message": message}
    if code:
        error["code"] = code
    return json.dumps({"error": error}).encode()


class StripeProxy:
    """`key_ttl_seconds`: forget a stored key after that long (Stripe: 24 h; None: never, for tests
    that replay much later). `max_recorded_calls`: keep only the latest calls (None: all)."""

    def __init__(
        self,
        upstream: str,
        *,
        key_ttl_seconds: float | None = None,
        max_recorded_calls: int | None = None,
        answer_payment_intents: bool = False,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.answer_payment_intents = self._answer_payment_intents_default = answer_payment_intents
        self.url = ""
        self.key_ttl_seconds = key_ttl_seconds
        self._lock = threading.Lock()
        self._calls: collections.deque[RecordedCall] = collections.deque(maxlen=max_recorded_calls)
        self._faults: list[_Fault] = []
        self._stored: dict[str, _Stored] = {}
        self._in_flight: set[str] = set()
        self._rate_limit: int | None = None
        self._recent: collections.deque[float] = collections.deque()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stripe-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._release: asyncio.Event | None = None

    # -- lifecycle (called from the test thread) --------------------------------------------------
    def start(self, *, port: int = 0) -> str:
        """Listen on 127.0.0.1:`port` (0: a free port); returns the proxy's URL."""
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(port), self._loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def reset(self) -> None:
        """Forget calls, faults, stored keys and the rate limit, go back to the mode it was created
        with; release hanging requests."""
        with self._lock:
            self.answer_payment_intents = self._answer_payment_intents_default
            self._calls.clear()
            self._faults.clear()
            self._stored.clear()
            self._in_flight.clear()
            self._rate_limit = None
            self._recent.clear()
        asyncio.run_coroutine_threadsafe(self._release_hangs(), self._loop).result(timeout=10)

    # -- commands ---------------------------------------------------------------------------------
    def inject(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        method: str | None = "POST",
        path: str | None = None,
        should_retry: bool | None = None,
        hang_seconds: float = 30.0,
        forward: bool = False,
    ) -> None:
        """Apply `kind` to the next `times` calls matching `method` and exact `path` (None: any).

        `should_retry` adds `Stripe-Should-Retry: true/false` (500 and 429). `forward` (hang only)
        forwards the request first, so the object exists while the client times out.
        """
        with self._lock:
            self._faults.append(_Fault(kind, method, path, times, should_retry, hang_seconds, forward))

    def set_rate_limit(self, per_second: int | None) -> None:
        """Answer 429 to requests above `per_second` in any sliding one-second window."""
        with self._lock:
            self._rate_limit = per_second
            self._recent.clear()

    def set_answer_payment_intents(self, enabled: bool) -> None:
        """Answer `POST /v1/payment_intents` here (a synthetic succeeded PaymentIntent) or forward it."""
        with self._lock:
            self.answer_payment_intents = enabled

    def calls(
        self, *, method: str | None = None, path: str | None = None, outcome: str | None = None
    ) -> list[RecordedCall]:
        with self._lock:
            return [
                call
                for call in self._calls
                if (method is None or call.method == method)
                and (path is None or call.path == path)
                and (outcome is None or call.outcome == outcome)
            ]

    # -- inside the proxy's loop ------------------------------------------------------------------
    async def _start(self, port: int) -> int:
        self._release = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False)
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        await web.SockSite(self._runner, sock).start()
        return sock.getsockname()[1]

    async def _stop(self) -> None:
        await self._release_hangs()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _release_hangs(self) -> None:
        assert self._release is not None
        self._release.set()
        self._release = asyncio.Event()

    def _expired(self, stored: _Stored) -> bool:
        return self.key_ttl_seconds is not None and time.monotonic() - stored.stored_at > self.key_ttl_seconds

    def _forget_expired(self) -> None:
        """Drop stored keys past their TTL (called with the lock held; dicts keep insertion order)."""
        if self.key_ttl_seconds is None:
            return
        for key in [key for key, stored in self._stored.items() if self._expired(stored)]:
            del self._stored[key]

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
        return None

    def _over_rate_limit(self) -> bool:
        with self._lock:
            if self._rate_limit is None:
                return False
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self._rate_limit:
                return True
            self._recent.append(now)
            return False

    def _record(
        self,
        request: web.Request,
        key: str | None,
        form: dict[str, str],
        outcome: str,
        status: int | None,
        *,
        reached_upstream: bool = False,
    ) -> None:
        call = RecordedCall(
            request.method, request.path, request.query_string, key, form, outcome, status, reached_upstream
        )
        with self._lock:
            self._calls.append(call)

    async def _forward(self, request: web.Request, body: bytes) -> _Stored:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            payload = await upstream.read()
            kept = tuple((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP)
            return _Stored((), upstream.status, kept, payload)

    @staticmethod
    def _synthetic_payment_intent(form: dict[str, str]) -> _Stored:
        """A succeeded, confirmed PaymentIntent for a create, echoing what was sent."""
        intent_id = f"pi_local_{uuid.uuid4().hex[:24]}"
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(form.get("amount", "0")),
            "amount_received": int(form.get("amount", "0")),
            "currency": form.get("currency", ""),
            "customer": form.get("customer"),
            "payment_method": form.get("payment_method"),
            "payment_method_types": ["card"],
            "metadata": {
                key[9:-1]: value
                for key, value in form.items()
                if key.startswith("metadata[") and key.endswith("]")
            },
            "status": "succeeded",
            "confirmation_method": "automatic",
            "capture_method": "automatic",
            "client_secret": f"{intent_id}_secret_local",
            "created": int(time.time()),
            "livemode": False,
            "last_payment_error": None,
            "next_action": None,
        }
        return _Stored((), 200, (("Content-Type", "application/json"),), json.dumps(intent).encode())

    async def _hang(self, seconds: float) -> None:
        assert self._release is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), timeout=seconds)

    @staticmethod
    def _respond(stored: _Stored, extra: dict[str, str] | None = None) -> web.Response:
        response = web.Response(status=stored.status, body=stored.body)
        for name, value in stored.headers:
            response.headers[name] = value
        for name, value in (extra or {}).items():
            response.headers[name] = value
        return response

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=499)  # never reaches the client

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        method, path = request.method, request.path
        pairs = parse_qsl(body.decode(), keep_blank_values=True) if method == "POST" else []
        form = dict(pairs)
        key = request.headers.get("Idempotency-Key") if method == "POST" else None
        json_type: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)

        if self._over_rate_limit():
            self._record(request, key, form, "rate_limited", 429)
            return self._respond(
                _Stored(
                    (),
                    429,
                    json_type,
                    _error_body("invalid_request_error", "Too many requests", "rate_limit"),
                )
            )

        fault = self._take_fault(method, path)
        if fault is not None and fault.kind in {"status_500", "status_429"}:
            status = 500 if fault.kind == "status_500" else 429
            headers = json_type
            if fault.should_retry is not None:
                headers += (("Stripe-Should-Retry", "true" if fault.should_retry else "false"),)
            error = (
                _error_body("api_error", "Injected failure")
                if status == 500
                else _error_body("invalid_request_error", "Injected rate limit", "rate_limit")
            )
            self._record(request, key, form, f"fault:{fault.kind}", status)
            return self._respond(_Stored((), status, headers, error))
        if fault is not None and fault.kind == "hang" and not fault.forward:
            self._record(request, key, form, "fault:hang", None)
            await self._hang(fault.hang_seconds)
            return self._drop(request)

        fingerprint = (method, path, request.query_string, tuple(sorted(pairs)))
        if key is not None:
            with self._lock:
                stored = self._stored.get(key)
                if stored is not None and self._expired(stored):
                    del self._stored[key]
                    stored = None
                in_flight = stored is None and key in self._in_flight
                if stored is None and not in_flight:
                    self._in_flight.add(key)
            if in_flight:
                self._record(request, key, form, "idempotency_in_flight", 409)
                message = "There is currently another in-progress request using this Stripe token"
                return self._respond(_Stored((), 409, json_type, _error_body("idempotency_error", message)))
            if stored is not None and stored.fingerprint != fingerprint:
                self._record(request, key, form, "idempotency_conflict", 400)
                message = (
                    "Keys for idempotent requests can only be used with the same parameters they were "
                    f"first used with. Try using a key other than '{key}' if you meant to execute a "
                    "different request."
                )
                return self._respond(_Stored((), 400, json_type, _error_body("idempotency_error", message)))
            if stored is not None:
                self._record(request, key, form, "replayed", stored.status)
                return self._respond(stored, {"Idempotent-Replayed": "true"})

        try:
            if self.answer_payment_intents and method == "POST" and path == "/v1/payment_intents":
                result = self._synthetic_payment_intent(form)
            else:
                result = await self._forward(request, body)
            if key is not None and (result.status < 400 or result.status == 402):
                with self._lock:
                    self._forget_expired()
                    self._stored[key] = _Stored(
                        fingerprint, result.status, result.headers, result.body, time.monotonic()
                    )
        finally:
            if key is not None:
                with self._lock:
                    self._in_flight.discard(key)

        if fault is not None:  # drop_after_forward, or hang with forward=True
            self._record(request, key, form, f"fault:{fault.kind}", None, reached_upstream=True)
            if fault.kind == "hang":
                await self._hang(fault.hang_seconds)
            return self._drop(request)
        self._record(request, key, form, "forwarded", result.status, reached_upstream=True)
        return self._respond(result)


# -- the demo's launcher ---------------------------------------------------------------------------
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
KEY_TTL_SECONDS = 24 * 3600
MAX_RECORDED_CALLS = 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve localstripe behind an idempotency-honouring proxy, on loopback only."
    )
    parser.add_argument("--upstream", required=True, help="localstripe's URL, e.g. http://127.0.0.1:8420")
    parser.add_argument("--port", type=int, default=8421)
    parser.add_argument(
        "--answer-payment-intents",
        action="store_true",
        help="answer POST /v1/payment_intents here with a succeeded PaymentIntent (benchmarks)",
    )
    args = parser.parse_args(argv)
    if urlsplit(args.upstream).hostname not in _LOOPBACK:
        parser.error("the upstream must be a localstripe on loopback")
    proxy = StripeProxy(
        args.upstream,
        key_ttl_seconds=KEY_TTL_SECONDS,
        max_recorded_calls=MAX_RECORDED_CALLS,
        answer_payment_intents=args.answer_payment_intents,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    url = proxy.start(port=args.port)
    print(f"stripe proxy listening on {url} -> {proxy.upstream}", flush=True)
    stop.wait()
    proxy.stop()


if __name__ == "__main__":
    main()
