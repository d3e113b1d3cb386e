"""R5/R24 under real concurrency (PostgreSQL, committed transactions): 8 simultaneous purchases
with one Idempotency-Key, then 8 with different keys, charge exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from billing.models import Entitlement, Invoice, PaymentAttempt, Purchase
from tests.billing.api_helpers import add_card, catalog_world, owner_client
from tests.concurrency import run_concurrently

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stripe, pytest.mark.concurrency]

THREADS = 8


def _purchase(owner, vehicle, key_for: Callable[[int], str]) -> Callable[[int], tuple[int, dict, dict]]:
    url = f"/api/v1/me/vehicles/{vehicle.pk}/purchases/"

    def work(i: int) -> tuple[int, dict, dict]:
        client = owner_client(owner)
        response = client.post(
            url, {"offer": "heated_seats_unlock"}, format="json", HTTP_IDEMPOTENCY_KEY=key_for(i)
        )
        return response.status_code, response.json(), dict(response.headers)

    return work


@pytest.fixture
def shop(stripe_proxy):
    owner, vehicle = catalog_world()
    add_card(owner_client(owner))
    return owner, vehicle


def test_same_key_eight_at_once_charges_once(shop, stripe_proxy):
    owner, vehicle = shop
    key = str(uuid.uuid4())

    results = run_concurrently(_purchase(owner, vehicle, lambda i: key), threads=THREADS)

    statuses = sorted(status for status, _, _ in results)
    assert all(status < 500 for status in statuses), results
    originals = [r for r in results if r[0] == 201 and r[2].get("Idempotent-Replayed") != "true"]
    replays = [r for r in results if r[0] == 201 and r[2].get("Idempotent-Replayed") == "true"]
    in_use = [r for r in results if r[0] == 409]
    assert len(originals) == 1, statuses
    assert len(originals) + len(replays) + len(in_use) == THREADS, results
    assert all(r[1]["code"] == "idempotency_key_in_use" for r in in_use)
    assert all(r[1] == originals[0][1] for r in replays)
    assert originals[0][1]["purchase"]["status"] == "paid"
    assert len(stripe_proxy.calls(method="POST", path="/v1/payment_intents")) == 1
    assert (Purchase.objects.count(), Invoice.objects.count(), PaymentAttempt.objects.count()) == (1, 1, 1)
    assert Entitlement.objects.filter(vehicle=vehicle).count() == 1


def test_different_keys_eight_at_once_still_one_purchase_and_one_charge(shop, stripe_proxy):
    owner, vehicle = shop

    results = run_concurrently(
        _purchase(owner, vehicle, lambda i: f"buy-{i}-{uuid.uuid4()}"), threads=THREADS
    )

    statuses = sorted(status for status, _, _ in results)
    assert all(status < 500 for status in statuses), results
    assert statuses.count(201) == 1, results
    refused = [r for r in results if r[0] != 201]
    assert all(r[0] in (409, 422) for r in refused), statuses
    # Refused: the purchase is pending or paid (`already_entitled`), or the winner's payment is
    # committed and at Stripe right now (`conflict`: try again in a few minutes). Nothing charged.
    assert all(r[1]["code"] in ("already_entitled", "invalid_state", "conflict") for r in refused), [
        r[1] for r in refused
    ]
    assert Purchase.objects.filter(status="paid").count() == 1
    assert Purchase.objects.count() == Invoice.objects.count() == PaymentAttempt.objects.count() == 1
    assert len(stripe_proxy.calls(method="POST", path="/v1/payment_intents")) == 1
    assert Entitlement.objects.filter(vehicle=vehicle).count() == 1
