"""R22 — no mass assignment, no over-exposure.

Static: no serializer lists `__all__` or uses `exclude`. Dynamic: every writable endpoint ignores
fields it does not declare (the state equals that of the same request without them), and no
response carries secrets.
"""

from __future__ import annotations

import ast
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from billing.models import Entitlement, Invoice, PaymentAttempt, PaymentMethod, Purchase, Subscription
from tests.billing.api_helpers import add_card, catalog_world, localstripe_card, owner_client, post
from tests.factories import OwnerFactory, VehicleFactory
from vehicles.models import Owner, VehicleTransfer

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

ROOT = Path(settings.BASE_DIR)
FORBIDDEN_KEYS = {
    "secret_hash",
    "private_jwk",
    "password",
    "stripe_customer_id",
    "code_hash",
    "is_staff",
    "is_superuser",
    "stripe_payment_method_id",
    "error_message",
}


def extras(other_owner: Owner, other_vehicle) -> dict[str, Any]:
    """Fields an attacker might add: none of them is an input of any endpoint."""
    return {
        "owner": other_owner.pk,
        "owner_id": other_owner.pk,
        "user": other_owner.user_id,
        "status": "refunded",
        "amount_minor": 1,
        "amount": {"amount_minor": 1, "currency": "JPY"},
        "currency": "JPY",
        "price": 1,
        "price_id": 1,
        "features": ["everything"],
        "stripe_customer_id": "cus_attacker",
        "stripe_payment_method_id": "pm_attacker",
        "is_staff": True,
        "is_superuser": True,
        "is_default": False,
        "vehicle": str(other_vehicle.pk),
        "vehicle_id": str(other_vehicle.pk),
        "paid_at": "2000-01-01T00:00:00Z",
        "trial_end": "2100-01-01T00:00:00Z",
        "current_period_end": "2100-01-01T00:00:00Z",
        "id": str(uuid.uuid4()),
        "brand": "attacker",
        "last4": "0000",
        "to_owner": other_owner.pk,
        "expires_at": "2100-01-01T00:00:00Z",
    }


# --- static ------------------------------------------------------------------------------------
def _serializer_files() -> list[Path]:
    files = {p for p in ROOT.glob("*/api/*.py")} | {p for p in ROOT.glob("*/**/serializers*.py")}
    return sorted(p for p in files if ".venv" not in p.parts and "tests" not in p.parts)


def test_no_serializer_uses_all_fields_or_exclude():
    files = _serializer_files()
    assert ROOT / "billing" / "api" / "serializers.py" in files
    problems = []
    model_serializers = 0
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ClassDef) and node.name == "Meta"):
                continue
            model_serializers += 1
            names = {}
            for statement in node.body:
                if isinstance(statement, ast.Assign):
                    for target in statement.targets:
                        if isinstance(target, ast.Name):
                            names[target.id] = statement.value
            if "exclude" in names:
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} uses exclude")
            fields = names.get("fields")
            if "model" in names and fields is None:
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} has a model but no explicit fields")
            if fields is not None and not isinstance(fields, ast.List | ast.Tuple):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} fields is not a literal list")
    for path in files:  # "__all__" / ALL_FIELDS reached by any route (a constant, a variable)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == "__all__":
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} uses '__all__'")
            if isinstance(node, ast.Name | ast.Attribute) and "ALL_FIELDS" in ast.unparse(node):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} uses ALL_FIELDS")
    assert model_serializers >= 5
    assert not problems, problems


def test_model_serializers_expose_only_their_listed_fields():
    from billing.api import serializers as s

    for serializer_class in (
        s.PurchaseSerializer,
        s.SubscriptionSerializer,
        s.InvoiceSerializer,
        s.PaymentSerializer,
        s.PaymentMethodSerializer,
    ):
        assert set(serializer_class().fields) == set(serializer_class.Meta.fields)
        assert not set(serializer_class().fields) & FORBIDDEN_KEYS, serializer_class


# --- dynamic -----------------------------------------------------------------------------------
def find_forbidden(value: Any, path: str = "$") -> list[str]:
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in FORBIDDEN_KEYS:
                found.append(f"{path}.{key}")
            found += find_forbidden(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += find_forbidden(item, f"{path}[{index}]")
    return found


@pytest.fixture
def setup(stripe_proxy, localstripe_url):
    owner, vehicle = catalog_world()
    twin = VehicleFactory(owner=owner, market=vehicle.market, capabilities=list(vehicle.capabilities.all()))
    other = OwnerFactory()
    other_vehicle = VehicleFactory(
        owner=other, market=vehicle.market, capabilities=list(vehicle.capabilities.all())
    )
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, "4242424242424242"))
    return owner, vehicle, twin, other, other_vehicle, client


def purchase_state(vehicle) -> tuple:
    purchase = Purchase.objects.get(vehicle=vehicle)
    invoice = Invoice.objects.get(purchase=purchase)
    attempt = PaymentAttempt.objects.get(invoice=invoice)
    entitlements = sorted(
        (e.feature_id, e.source, e.ends_at) for e in Entitlement.objects.filter(vehicle=vehicle)
    )
    return (
        (
            purchase.owner_id,
            purchase.offer_id,
            purchase.price_id,
            purchase.status,
            purchase.paid_at is not None,
        ),
        (
            invoice.owner_id,
            invoice.kind,
            invoice.status,
            invoice.currency,
            invoice.total_minor,
            invoice.tax_minor,
        ),
        (attempt.owner_id, attempt.status, attempt.amount_minor, attempt.payment_method_id),
        entitlements,
    )


def test_purchase_ignores_extra_fields(setup):
    owner, vehicle, twin, other, other_vehicle, client = setup
    body = {"offer": "heated_seats_unlock"}

    plain = post(client, f"/api/v1/me/vehicles/{twin.pk}/purchases/", body)
    loaded = post(
        client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {**body, **extras(other, other_vehicle)}
    )

    assert plain.status_code == loaded.status_code == 201, loaded.json()
    assert purchase_state(vehicle) == purchase_state(twin)
    assert loaded.json()["purchase"]["price"] == plain.json()["purchase"]["price"]
    assert loaded.json()["purchase"]["vehicle"] == str(vehicle.pk)
    assert not Purchase.objects.filter(vehicle=other_vehicle).exists()
    assert not Purchase.objects.filter(owner=other).exists()
    owner.refresh_from_db()
    other.refresh_from_db()
    assert owner.stripe_customer_id.startswith("cus_") and owner.stripe_customer_id != "cus_attacker"
    assert other.stripe_customer_id in ("", None)
    assert not owner.user.__class__.objects.filter(is_staff=True).exists()
    assert not find_forbidden(loaded.json())


def subscription_state(vehicle) -> tuple:
    subscription = Subscription.objects.get(vehicle=vehicle)
    return (
        subscription.owner_id,
        subscription.offer_id,
        subscription.price_id,
        subscription.status,
        subscription.trial_end - subscription.current_period_start if subscription.trial_end else None,
        subscription.current_period_end - subscription.current_period_start,
        Invoice.objects.filter(subscription=subscription).count(),
        sorted((e.feature_id, e.source) for e in Entitlement.objects.filter(vehicle=vehicle)),
    )


def test_subscription_start_ignores_extra_fields(setup, stripe_proxy):
    _owner, vehicle, twin, other, other_vehicle, client = setup
    body = {"offer": "heated_seats_monthly"}

    plain = post(client, f"/api/v1/me/vehicles/{twin.pk}/subscriptions/", body)
    loaded = post(
        client, f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/", {**body, **extras(other, other_vehicle)}
    )

    assert plain.status_code == loaded.status_code == 201, loaded.json()
    assert loaded.json()["status"] == plain.json()["status"] == "trialing"
    assert subscription_state(vehicle) == subscription_state(twin)
    assert not Subscription.objects.filter(owner=other).exists()
    assert not stripe_proxy.calls(method="POST", path="/v1/payment_intents")


def test_subscription_actions_ignore_extra_fields(setup):
    owner, vehicle, twin, other, other_vehicle, client = setup
    sub_ids = []
    for car in (vehicle, twin):
        response = post(
            client, f"/api/v1/me/vehicles/{car.pk}/subscriptions/", {"offer": "heated_seats_monthly"}
        )
        assert response.status_code == 201
        sub_ids.append(response.json()["subscription"]["id"])
    loaded_id, plain_id = sub_ids
    junk = extras(other, other_vehicle)

    preview_plain = client.post(
        f"/api/v1/me/subscriptions/{plain_id}/change-preview/",
        {"offer": "heated_seats_monthly"},
        format="json",
    )
    preview_loaded = client.post(
        f"/api/v1/me/subscriptions/{loaded_id}/change-preview/",
        {"offer": "heated_seats_monthly", **junk},
        format="json",
    )
    assert preview_plain.status_code == preview_loaded.status_code
    assert preview_plain.json().get("code") == preview_loaded.json().get("code")

    cancel_plain = post(client, f"/api/v1/me/subscriptions/{plain_id}/cancel/", {})
    cancel_loaded = post(client, f"/api/v1/me/subscriptions/{loaded_id}/cancel/", junk)
    assert cancel_plain.status_code == cancel_loaded.status_code == 200, cancel_loaded.json()
    strip = {
        "id",
        "vehicle",
        "created_at",
        "current_period_start",
        "current_period_end",
        "trial_end",
        "canceled_at",
        "ended_at",
    }
    assert {k: v for k, v in cancel_loaded.json().items() if k not in strip} == {
        k: v for k, v in cancel_plain.json().items() if k not in strip
    }
    assert Subscription.objects.get(pk=loaded_id).owner_id == owner.pk


def test_payment_method_add_ignores_extra_fields(setup, localstripe_url):
    owner, _vehicle, _twin, other, other_vehicle, client = setup
    pm = localstripe_card(localstripe_url, "4242424242424242")

    response = client.post(
        "/api/v1/me/payment-methods/",
        {"payment_method": pm, "make_default": True, **extras(other, other_vehicle)},
        format="json",
    )

    assert response.status_code == 201, response.json()
    method = PaymentMethod.objects.get(stripe_payment_method_id=pm)
    assert method.owner_id == owner.pk
    assert (method.brand, method.last4, method.is_default) == ("visa", "4242", True)
    assert not PaymentMethod.objects.filter(owner=other).exists()
    assert not find_forbidden(response.json())


def test_transfer_start_and_claim_ignore_extra_fields(setup):
    owner, vehicle, _twin, other, other_vehicle, client = setup
    junk = extras(other, other_vehicle)

    started = client.post(
        f"/api/v1/me/vehicles/{vehicle.pk}/transfer/",
        {**junk, "code": "AAAA"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )

    assert started.status_code == 201, started.json()
    transfer = VehicleTransfer.objects.get(pk=started.json()["transfer"])
    assert (transfer.from_owner_id, transfer.to_owner_id, transfer.status) == (owner.pk, None, "pending")
    assert started.json()["code"] != "AAAA"
    assert not find_forbidden(started.json())
    buyer = owner_client(other)
    claimed = buyer.post(
        "/api/v1/me/transfers/claim/",
        {"vin": vehicle.vin, "code": started.json()["code"], **junk, "to_owner": owner.pk, "owner": owner.pk},
        format="json",
    )
    assert claimed.status_code == 200, claimed.json()
    transfer.refresh_from_db()
    assert transfer.to_owner_id == other.pk


def test_login_ignores_extra_fields_and_never_echoes_the_password(setup):
    owner = setup[0]
    response = APIClient().post(
        "/api/v1/auth/token/",
        {
            "username": owner.user.username,
            "password": "pw-for-tests-1",
            "is_staff": True,
            "is_superuser": True,
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert set(response.json()) == {"access", "refresh"}
    owner.user.refresh_from_db()
    assert not owner.user.is_staff and not owner.user.is_superuser
    wrong = APIClient().post(
        "/api/v1/auth/token/", {"username": owner.user.username, "password": "nope-secret"}, format="json"
    )
    assert wrong.status_code == 401
    assert b"nope-secret" not in wrong.content


def test_no_response_carries_secrets(setup, localstripe_url):
    owner, vehicle, _twin, _other, other_vehicle, client = setup
    bought = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})
    assert bought.status_code == 201
    from tests.billing.api_helpers import vehicle_client

    car = vehicle_client(vehicle)
    responses = {
        "purchase": bought,
        "setup_intent": post(client, "/api/v1/me/payment-methods/setup-intent/"),
        "jwks": APIClient().get("/api/v1/.well-known/jwks.json"),
        "entitlements": car.get("/api/v1/vehicle/entitlements/"),
        "token": car.get("/api/v1/vehicle/entitlements/token/"),
    }
    for path in ("vehicles", "subscriptions", "purchases", "invoices", "payments", "payment-methods"):
        responses[path] = client.get(f"/api/v1/me/{path}/")
    responses["vehicle"] = client.get(f"/api/v1/me/vehicles/{vehicle.pk}/")
    responses["offers"] = client.get(f"/api/v1/me/vehicles/{vehicle.pk}/offers/")
    responses["payment"] = client.get(f"/api/v1/me/payments/{bought.json()['payment']['id']}/")

    for name, response in responses.items():
        assert response.status_code in (200, 201), name
        body = response.json()
        assert not find_forbidden(body), (name, find_forbidden(body))
        if name != "setup_intent":  # the SetupIntent's client_secret is the point of that endpoint
            assert "client_secret" not in str(find_client_secrets(body)), name
    for key in responses["jwks"].json()["keys"]:
        assert "d" not in key and key.get("kty") == "OKP", key
    assert responses["setup_intent"].json()["client_secret"]
    assert bought.json()["payment"]["client_secret"] is None  # only while requires_action
    text = " ".join(r.content.decode() for r in responses.values())
    assert str(other_vehicle.pk) not in text and other_vehicle.vin not in text
    assert owner.__class__.objects.get(pk=owner.pk).stripe_customer_id not in text


def find_client_secrets(value: Any) -> list[str]:
    """Non-empty client_secret values anywhere in a body."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "client_secret" and item:
                found.append("client_secret")
            found += find_client_secrets(item)
    elif isinstance(value, list):
        for item in value:
            found += find_client_secrets(item)
    return found
