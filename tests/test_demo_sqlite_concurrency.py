"""The zero-setup demo database (SQLite) holds concurrent writers (hole 13 of issue 7).

Six checkouts of different offers by one fleet, at the same moment, each with its own
Idempotency-Key, over real HTTP against `manage.py runserver` on a SQLite file (what `make run`
serves): every one answers 2xx, and Stripe (localstripe behind the proxy) charged each exactly once.
On the old settings two of them answered 500 `database is locked` after Stripe had charged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.conf import settings

pytestmark = pytest.mark.stripe

CHECKOUTS = 6
FLEET_LOGIN = {"username": "fleet@example.com", "password": "demo-password-3"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # loopback only
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw[:300]


@pytest.fixture
def demo_server(stripe_proxy, tmp_path):
    """`make run`'s web process on a fresh SQLite file, its gateway pointed at the test proxy."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "REDIS_URL": "",
        "VAR_DIR": str(tmp_path),
        "STRIPE_API_BASE": stripe_proxy.url,
        "STRIPE_SECRET_KEY": "",
        "LOG_LEVEL": "WARNING",
        "LOG_JSON": "false",
        "RATE_LIMIT_CHECKOUT": "1000/minute",
    }
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--no-input", "-v", "0"], ["seed_demo"]):
        subprocess.run(
            [*manage, *command], env=env, cwd=settings.BASE_DIR, check=True, capture_output=True, timeout=180
        )
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=1).close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo server did not start"
            time.sleep(0.2)
    try:
        yield url, tmp_path / "server.log"
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def _distinct_offers(api: str, auth: dict) -> list[tuple[str, str, str]]:
    """(vehicle id, path, offer) of CHECKOUTS purchases or paid subscriptions of the fleet that
    do not overlap in features on one vehicle, so each must be charged."""
    status, vehicles = _http("GET", f"{api}/me/vehicles/", headers=auth)
    assert status == 200, vehicles
    picked, kinds = [], {"one_time": "purchases", "subscription": "subscriptions"}
    for kind in ("one_time", "subscription"):
        for vehicle in vehicles["results"]:
            status, offers = _http("GET", f"{api}/me/vehicles/{vehicle['id']}/offers/", headers=auth)
            assert status == 200, offers
            taken = {f for v, _, _, features in picked if v == vehicle["id"] for f in features}
            for offer in offers:
                if offer["kind"] != kind or offer["owned"] or offer["subscribed"] or offer["included_until"]:
                    continue
                if taken & set(offer["features"]) or offer["price"]["amount_minor"] <= 0:
                    continue
                picked.append((vehicle["id"], kinds[kind], offer["code"], offer["features"]))
                taken |= set(offer["features"])
    assert len(picked) >= CHECKOUTS, picked
    return [(vehicle, path, code) for vehicle, path, code, _ in picked[:CHECKOUTS]]


def test_six_concurrent_checkouts_on_the_sqlite_demo_all_succeed_each_charged_once(
    demo_server, stripe_proxy
):
    url, server_log = demo_server
    api = f"{url}/api/v1"
    status, tokens = _http("POST", f"{api}/auth/token/", FLEET_LOGIN)
    assert status == 200, tokens
    auth = {"Authorization": f"Bearer {tokens['access']}"}
    card = {"payment_method": "pm_card_visa", "make_default": True}
    status, body = _http("POST", f"{api}/me/payment-methods/", card, headers=auth)
    assert status == 201, body
    checkouts = _distinct_offers(api, auth)

    def checkout(item: tuple[str, str, str]) -> tuple[int, Any]:
        vehicle, path, offer = item
        headers = {**auth, "Idempotency-Key": str(uuid.uuid4())}
        payload = {"offer": offer, **({"trial": False} if path == "subscriptions" else {})}
        return _http("POST", f"{api}/me/vehicles/{vehicle}/{path}/", payload, headers=headers)

    with ThreadPoolExecutor(max_workers=CHECKOUTS) as pool:
        answers = list(pool.map(checkout, checkouts))

    log = server_log.read_text()
    assert [status for status, _ in answers] == [201] * CHECKOUTS, (answers, log[-3000:])
    assert all(body["status"] == "succeeded" for _, body in answers), answers
    assert "database is locked" not in log
    # Stripe's side: one PaymentIntent per checkout, each created once (no replay needed, none lost)
    created = stripe_proxy.calls(method="POST", path="/v1/payment_intents")
    assert len(created) == CHECKOUTS, created
    assert all(call.outcome == "forwarded" and call.status == 200 for call in created), created
    per_attempt = Counter(call.form.get("metadata[payment_attempt_id]") for call in created)
    assert len(per_attempt) == CHECKOUTS and set(per_attempt.values()) == {1}, per_attempt
    # ... and our side agrees: every payment recorded succeeded, for the amount charged
    status, payments = _http("GET", f"{api}/me/payments/?limit=200", headers=auth)
    assert status == 200, payments
    charged = {body["payment"]["id"]: body["payment"]["amount"]["amount_minor"] for _, body in answers}
    recorded = {p["id"]: p for p in payments["results"] if p["id"] in charged}
    assert {pid: p["status"] for pid, p in recorded.items()} == {pid: "succeeded" for pid in charged}
    assert {pid: p["amount"]["amount_minor"] for pid, p in recorded.items()} == charged
