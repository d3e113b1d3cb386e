"""Bad input never reaches a 500: every refusal is a 4xx `{code, message, details}` and creates nothing."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from billing.models import Invoice, PaymentAttempt, PaymentMethod, Purchase, Subscription
from core.models import IdempotencyRecord
from tests.billing.api_helpers import add_card, catalog_world, owner_client, post

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

BAD_IDS = [
    "-" * 36,
    "0" * 36,
    "not-a-uuid",
    "1",
    "-1",
    "0",
    "%20",
    "00000000-0000-0000-0000-00000000000g",
    "x" * 300,
    "1e9",
]


@pytest.fixture
def buyer(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    return owner, vehicle, client


def counts() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (Purchase, Subscription, Invoice, PaymentAttempt, PaymentMethod))


def assert_error(response, *statuses: int, code: str | None = None) -> dict:
    assert response.status_code in statuses, (response.status_code, response.content[:400])
    body = response.json()
    assert set(body) == {"code", "message", "details"}, body
    assert isinstance(body["details"], dict) and body["message"]
    if code:
        assert body["code"] == code, body
    return body


def test_malformed_json_is_400(buyer, stripe_proxy):
    _, vehicle, client = buyer
    before, calls = counts(), len(stripe_proxy.calls())

    response = client.post(
        f"/api/v1/me/vehicles/{vehicle.pk}/purchases/",
        data='{"offer": "heated_seats_unlock",',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )

    assert_error(response, 400, code="malformed_json")
    assert counts() == before and len(stripe_proxy.calls()) == calls


@pytest.mark.parametrize(
    ("content_type", "data"),
    [("text/plain", "offer=heated_seats_unlock"), ("application/xml", "<offer>heated_seats_unlock</offer>")],
)
def test_wrong_content_type_is_415(buyer, stripe_proxy, content_type, data):
    _, vehicle, client = buyer
    before = counts()

    response = client.post(
        f"/api/v1/me/vehicles/{vehicle.pk}/purchases/",
        data=data,
        content_type=content_type,
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )

    assert_error(response, 415)
    assert counts() == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"unknown": 1},
        {"offer": None},
        {"offer": ""},
        {"offer": ["heated_seats_unlock"]},
        {"offer": {"code": "heated_seats_unlock"}},
        {"offer": "heated seats unlock!"},
        {"offer": "x" * 100_000},
        [{"offer": "heated_seats_unlock"}],
        "heated_seats_unlock",
        {"offer": "no_such_offer"},
    ],
    ids=repr,
)
def test_bad_purchase_bodies_are_4xx_and_buy_nothing(buyer, stripe_proxy, body):
    _, vehicle, client = buyer
    before, calls = counts(), len(stripe_proxy.calls())

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", body)

    assert_error(response, 400, 404, 422)
    assert counts() == before and len(stripe_proxy.calls()) == calls


@pytest.mark.parametrize(
    "payment_method",
    [-1, 0, 1.5, "1.5", "abc", True, 2**63, -(2**63) - 1, 10**30, "", [1], {"id": 1}],
    ids=repr,
)
def test_bad_payment_method_ids_are_4xx_and_charge_nothing(buyer, stripe_proxy, payment_method):
    _, vehicle, client = buyer
    before, calls = counts(), len(stripe_proxy.calls())

    response = post(
        client,
        f"/api/v1/me/vehicles/{vehicle.pk}/purchases/",
        {"offer": "heated_seats_unlock", "payment_method": payment_method},
    )

    assert_error(response, 400, 422)
    assert counts() == before and len(stripe_proxy.calls()) == calls


def _id_routes() -> list[tuple[str, str]]:
    return [
        ("get", "/api/v1/me/subscriptions/{}/"),
        ("post", "/api/v1/me/subscriptions/{}/cancel/"),
        ("post", "/api/v1/me/subscriptions/{}/resume/"),
        ("post", "/api/v1/me/subscriptions/{}/change/"),
        ("post", "/api/v1/me/subscriptions/{}/change-preview/"),
        ("get", "/api/v1/me/purchases/{}/"),
        ("post", "/api/v1/me/purchases/{}/withdraw/"),
        ("get", "/api/v1/me/invoices/{}/"),
        ("get", "/api/v1/me/payments/{}/"),
        ("post", "/api/v1/me/payments/{}/confirm/"),
        ("post", "/api/v1/me/payment-methods/{}/default/"),
        ("get", "/api/v1/me/vehicles/{}/"),
        ("get", "/api/v1/me/vehicles/{}/offers/"),
        ("post", "/api/v1/me/vehicles/{}/purchases/"),
        ("post", "/api/v1/me/vehicles/{}/transfer/"),
    ]


@pytest.mark.parametrize(("method", "template"), _id_routes())
def test_invalid_ids_in_paths_are_404_not_500(buyer, stripe_proxy, method, template):
    _, _, client = buyer
    before, calls = counts(), len(stripe_proxy.calls())
    for bad in BAD_IDS:
        url = template.format(bad)
        if method == "post":
            response = post(client, url, {"offer": "heated_seats_monthly"})
        else:
            response = client.get(url)
        assert response.status_code == 404, (url, response.status_code, response.content[:300])
        if response["Content-Type"].startswith("application/json"):  # URL regex misses are Django's own 404
            assert_error(response, 404, code="not_found")
    assert counts() == before and len(stripe_proxy.calls()) == calls


def test_huge_and_odd_strings_elsewhere_are_4xx(buyer, stripe_proxy):
    _, vehicle, client = buyer
    before = counts()
    cases = [
        client.post("/api/v1/me/payment-methods/", {"payment_method": "pm_" + "x" * 10_000}, format="json"),
        client.post("/api/v1/me/payment-methods/", {"payment_method": "card_123"}, format="json"),
        client.post("/api/v1/me/payment-methods/", {"payment_method": "pm_\x00"}, format="json"),
        client.post(
            "/api/v1/me/transfers/claim/", {"vin": "V" * 10_000, "code": "c" * 10_000}, format="json"
        ),
        client.post("/api/v1/me/transfers/claim/", {"vin": "\x00" * 17, "code": "x"}, format="json"),
        client.post("/api/v1/auth/token/", {"username": "u" * 10_000, "password": "p"}, format="json"),
        client.post("/api/v1/auth/token/refresh/", {"refresh": "r" * 10_000}, format="json"),
        client.post(
            f"/api/v1/me/vehicles/{vehicle.pk}/purchases/",
            {"offer": "heated_seats_unlock"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="k" * 10_000,
        ),
        client.post(
            f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"}, format="json"
        ),
        client.get("/api/v1/me/invoices/", {"status": "x" * 5_000, "limit": "-1", "offset": "abc"}),
        client.get("/api/v1/me/purchases/", {"vehicle": "not-a-uuid"}),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
        assert_error(response, response.status_code)
    assert counts() == before
    assert not IdempotencyRecord.objects.filter(key__startswith="kkkk").exists()


def test_wrong_authorization_headers_are_401():
    for header in [
        "Bearer",
        "Bearer x.y.z",
        "Basic dTpw",
        "Vehicle nodot",
        "Vehicle a.b",
        "Bearer " + "a" * 9000,
    ]:
        response = APIClient().get("/api/v1/me/vehicles/", HTTP_AUTHORIZATION=header)
        assert_error(response, 401)
        response = APIClient().get("/api/v1/vehicle/entitlements/", HTTP_AUTHORIZATION=header)
        assert_error(response, 401)
