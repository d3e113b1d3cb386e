"""Fixtures of the billing tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def local_stripe(stripe_proxy, settings):
    """The proxy answers PaymentIntents itself (what is under test is our side); the rate budget
    is left out (tested on its own)."""
    stripe_proxy.set_answer_payment_intents(True)
    settings.STRIPE_RATE_LIMIT_PER_SECOND = 0
    return stripe_proxy
