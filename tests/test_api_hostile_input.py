"""Hostile or mistaken requests answer a JSON 4xx with a machine-readable code and change nothing:
deeply nested JSON, absurd page sizes, oversized bodies, unknown card ids (hole 14 of issue 7)."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from billing.models import Invoice, PaymentAttempt, PaymentMethod, Purchase, Subscription
from core.models import IdempotencyRecord
from tests.billing.api_helpers import add_card, catalog_world, owner_client

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]


@pytest.fixture
def buyer(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    return owner, vehicle, client


def counts() -> tuple[int, ...]:
    models = (Purchase, Subscription, Invoice, PaymentAttempt, PaymentMethod, IdempotencyRecord)
    return tuple(m.objects.count() for m in models)


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:400])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"code", "message", "details"}, body
    assert body["code"] == code, body
    return body


@pytest.mark.parametrize("depth", [100_000, 5_000, 200])
def test_deeply_nested_json_is_400_malformed_json_even_on_anonymous_login(db, depth):
    response = APIClient().post("/api/v1/auth/token/", data="[" * depth, content_type="application/json")

    assert_json_error(response, 400, "malformed_json")


def test_deeply_nested_json_on_a_purchase_is_400_and_buys_nothing(buyer, stripe_proxy):
    _, vehicle, client = buyer
    before, calls = counts(), len(stripe_proxy.calls())
    body = '{"offer": ' + "[" * 100_000

    response = client.post(
        f"/api/v1/me/vehicles/{vehicle.pk}/purchases/",
        data=body,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )

    assert_json_error(response, 400, "malformed_json")
    assert counts() == before and len(stripe_proxy.calls()) == calls


def test_truncated_json_is_400_malformed_json(buyer):
    _, vehicle, client = buyer

    response = client.post(
        f"/api/v1/me/vehicles/{vehicle.pk}/purchases/",
        data='{"offer": "heated_seats_unlock",',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )

    assert_json_error(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "query",
    [
        {"limit": str(10**23)},
        {"offset": str(10**23)},
        {"limit": "201"},
        {"limit": "10", "offset": str(2**63)},
    ],
    ids=repr,
)
@pytest.mark.parametrize("route", ["/api/v1/me/invoices/", "/api/v1/me/payments/", "/api/v1/me/vehicles/"])
def test_page_limit_or_offset_out_of_range_is_400_validation_error(buyer, route, query):
    _, _, client = buyer

    body = assert_json_error(client.get(route, query), 400, "validation_error")

    assert set(body["details"]) <= {"limit", "offset"} and body["details"]


def test_page_limit_up_to_the_maximum_still_pages(buyer):
    _, _, client = buyer

    response = client.get("/api/v1/me/vehicles/", {"limit": "200", "offset": "0"})

    assert response.status_code == 200 and response.json()["count"] == 1


@pytest.mark.parametrize("route", ["/api/v1/auth/token/", "/api/v1/me/payment-methods/"])
def test_a_body_over_the_upload_limit_is_json_413_request_too_large(buyer, settings, route):
    _, _, client = buyer
    before = counts()
    body = '{"payment_method": "pm_card_visa", "username": "' + "x" * (3 * 1024 * 1024) + '"}'

    response = client.post(route, data=body, content_type="application/json")

    assert_json_error(response, 413, "request_too_large")
    assert counts() == before


def test_an_unknown_card_id_is_400_payment_method_invalid_and_saves_nothing(buyer, stripe_proxy):
    _, _, client = buyer
    before = counts()

    response = client.post(
        "/api/v1/me/payment-methods/", {"payment_method": "pm_does_not_exist"}, format="json"
    )

    assert_json_error(response, 400, "payment_method_invalid")
    assert counts() == before
