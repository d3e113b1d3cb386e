"""Test session wiring: localstripe started by the session itself, on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from django.conf import settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.stripe_proxy import StripeProxy

hypothesis_settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# HYPOTHESIS_PROFILE=long: 500 examples (the model-based test reads the profile's budget too).
hypothesis_settings.register_profile("long", parent=hypothesis_settings.get_profile("ci"), max_examples=500)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """PBKDF2 is deliberately slow; tests need no protection against brute force."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _no_stripe_rate_budget(settings) -> None:
    """The shared Stripe budget paces bursts (25 calls/s against localstripe): tests that are not
    about it run unpaced; tests of the budget set `STRIPE_RATE_LIMIT_PER_SECOND` themselves."""
    settings.STRIPE_RATE_LIMIT_PER_SECOND = 0


@pytest.fixture(autouse=True)
def _generous_rate_limits(settings) -> None:
    """Counters live in Redis across tests and runs; tests of the limits set their own."""
    settings.RATE_LIMITS = {scope: "100000/minute" for scope in settings.RATE_LIMITS}


@pytest.fixture(autouse=True)
def _fresh_process_memos() -> None:
    """Per-process hot copies must not carry rows of an earlier test's rolled-back transaction."""
    from billing.selectors import _hot_features
    from billing.services.offline_tokens import _recent_tokens
    from billing.services.signing_keys import signing_key_memo_clear
    from vehicles.services.credentials import _credentials

    signing_key_memo_clear()
    _hot_features.clear()
    _credentials.clear()
    _recent_tokens.clear()


def pytest_report_header(config) -> list[str]:
    db = settings.DATABASES["default"]
    return [
        f"database: {db['ENGINE'].rsplit('.', 1)[-1]} {db.get('HOST') or ''}:{db.get('PORT') or ''} "
        f"(test db {db['TEST']['NAME']})",
        f"broker: {settings.CELERY_BROKER_URL.split('://', 1)[0]}",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # the server answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """A localstripe process of this test session, bound to 127.0.0.1."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.localstripe_server", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=settings.BASE_DIR,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/v1/customers")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def stripe_proxy_server(localstripe_url: str) -> Iterator[StripeProxy]:
    proxy = StripeProxy(localstripe_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def stripe_proxy(stripe_proxy_server: StripeProxy, localstripe_url: str, settings) -> Iterator[StripeProxy]:
    """A cleared localstripe behind a reset proxy; the gateway points at the proxy.

    Small client timeout (2 s) and no SDK network retries by default; a test may raise
    `settings.STRIPE_MAX_NETWORK_RETRIES` (the gateway builds a client per configuration).
    """
    stripe_proxy_server.reset()
    request = urllib.request.Request(f"{localstripe_url}/_config/data", method="DELETE")
    urllib.request.urlopen(request, timeout=5).close()
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_API_BASE = stripe_proxy_server.url
    settings.STRIPE_TIMEOUT_SECONDS = 2
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    yield stripe_proxy_server
    stripe_proxy_server.reset()  # releases requests still hanging on an injected fault
