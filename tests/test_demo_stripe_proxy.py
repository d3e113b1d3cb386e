"""The demo (`make run`) puts localstripe behind the idempotency proxy the tests use: its launcher
replays a repeated Idempotency-Key as Stripe does, so a retried charge is never executed twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from django.conf import settings

AUTH = {"Authorization": "Bearer sk_test_localstripe"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(url: str, *, form: dict | None = None, key: str | None = None) -> tuple[int, dict, dict]:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # loopback only
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.fixture
def launched_proxy(localstripe_url):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.stripe_proxy", "--upstream", localstripe_url, "--port", str(port)],
        cwd=settings.BASE_DIR,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            _call(f"{url}/v1/customers")
            break
        except OSError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.1)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_the_demo_proxy_replays_a_repeated_idempotency_key_without_reaching_localstripe(
    launched_proxy, localstripe_url
):
    url, _ = launched_proxy
    email = f"replay-{time.time_ns()}@example.com"
    form = {"email": email}

    first = _call(f"{url}/v1/customers", form=form, key=f"customer-{email}")
    again = _call(f"{url}/v1/customers", form=form, key=f"customer-{email}")
    other_body = _call(f"{url}/v1/customers", form={"email": "x@example.com"}, key=f"customer-{email}")

    assert first[0] == again[0] == 200
    assert again[2]["id"] == first[2]["id"]
    assert again[1].get("Idempotent-Replayed") == "true"
    assert other_body[0] == 400 and other_body[2]["error"]["type"] == "idempotency_error"
    customers = _call(f"{localstripe_url}/v1/customers?limit=100")[2]["data"]
    assert [c["id"] for c in customers if c["email"] == email] == [first[2]["id"]]


def test_the_demo_proxy_stops_cleanly_on_sigterm(launched_proxy):
    _, proc = launched_proxy

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=10) == 0
    assert "stripe proxy listening on http://127.0.0.1:" in proc.stdout.read()


def test_the_demo_proxy_refuses_an_upstream_off_loopback():
    command = ["-m", "devtools.stripe_proxy", "--upstream", "https://api.stripe.com", "--port", "0"]
    result = subprocess.run(
        [sys.executable, *command],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2 and "loopback" in result.stderr
