"""Refunds are visible to the owner (hole 10 of issue 7): a payment shows what was given back and
reads `partially_refunded` / `refunded`; an invoice shows the refunded sum and each refund's reason.
Only succeeded refunds count; pending or unknown ones are listed but not counted yet."""

from __future__ import annotations

import pytest

from billing.models import PaymentAttempt, Refund, RefundStatus
from tests.billing.api_helpers import add_card, buy, catalog_world, owner_client, post, results

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]


@pytest.fixture
def bought(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    purchase = buy(client, vehicle)
    attempt = PaymentAttempt.objects.get(invoice__purchase__pk=purchase["id"])
    return client, purchase, attempt


def _refund(attempt, amount_minor: int, status: str, reason: str) -> Refund:
    return Refund.objects.create(
        payment_attempt=attempt,
        amount_minor=amount_minor,
        currency=attempt.currency,
        status=status,
        reason=reason,
    )


def _payment(client, attempt) -> dict:
    [listed] = [p for p in results(client.get("/api/v1/me/payments/")) if p["id"] == str(attempt.pk)]
    single = client.get(f"/api/v1/me/payments/{attempt.pk}/").json()
    assert listed == single
    return listed


def test_a_payment_without_refunds_reads_succeeded_and_refunded_zero(bought):
    client, _, attempt = bought

    payment = _payment(client, attempt)

    assert payment["status"] == "succeeded"
    assert payment["refunded"] == {"amount_minor": 0, "currency": attempt.currency, "formatted": "EUR 0.00"}


def test_a_succeeded_partial_refund_reads_partially_refunded_with_the_amount(bought):
    client, _, attempt = bought
    _refund(attempt, 4_900, RefundStatus.SUCCEEDED, "goodwill")
    _refund(attempt, 1_000, RefundStatus.PENDING, "goodwill")  # under way: not counted yet
    _refund(attempt, 1_000, RefundStatus.UNKNOWN, "goodwill")
    _refund(attempt, 1_000, RefundStatus.FAILED, "goodwill")

    payment = _payment(client, attempt)

    assert payment["status"] == "partially_refunded"
    assert payment["refunded"]["amount_minor"] == 4_900
    assert payment["amount"]["amount_minor"] == attempt.amount_minor


def test_refunds_covering_the_whole_amount_read_refunded(bought):
    client, _, attempt = bought
    _refund(attempt, attempt.amount_minor - 100, RefundStatus.SUCCEEDED, "vehicle sold")
    _refund(attempt, 100, RefundStatus.SUCCEEDED, "goodwill")

    payment = _payment(client, attempt)

    assert payment["status"] == "refunded"
    assert payment["refunded"]["amount_minor"] == attempt.amount_minor


def test_an_invoice_shows_the_refunded_sum_and_each_refund_with_its_reason(bought):
    client, _, attempt = bought
    _refund(attempt, 4_900, RefundStatus.SUCCEEDED, "goodwill")
    pending = _refund(attempt, 1_000, RefundStatus.PENDING, "vehicle sold")

    [invoice] = results(client.get("/api/v1/me/invoices/"))
    single = client.get(f"/api/v1/me/invoices/{invoice['id']}/").json()

    assert invoice == single
    assert invoice["refunded"]["amount_minor"] == 4_900
    assert [(r["reason"], r["status"], r["amount"]["amount_minor"]) for r in invoice["refunds"]] == [
        ("goodwill", "succeeded", 4_900),
        ("vehicle sold", "pending", 1_000),
    ]
    assert invoice["refunds"][1]["id"] == str(pending.pk)
    assert invoice["refunds"][1]["payment"] == str(attempt.pk)


def test_a_withdrawn_purchase_reads_refunded_in_full(bought):
    client, purchase, attempt = bought

    withdrawn = post(client, f"/api/v1/me/purchases/{purchase['id']}/withdraw/")

    assert withdrawn.status_code == 200, withdrawn.json()
    payment = _payment(client, attempt)
    assert (payment["status"], payment["refunded"]["amount_minor"]) == ("refunded", attempt.amount_minor)
    [invoice] = results(client.get("/api/v1/me/invoices/"))
    assert [(r["reason"], r["status"]) for r in invoice["refunds"]] == [("withdrawal", "succeeded")]
