"""Billing test wiring: the Stripe gateway talks to localstripe through our fault-injecting proxy."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from tests.stripe_proxy import StripeProxy


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
