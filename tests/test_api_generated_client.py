"""The OpenAPI schema generates a client that works: `openapi-python-client` turns the schema into a
Python package (once per test session, no network), the package imports, and the README's owner
flow runs through it, unedited, against a live server (Stripe: localstripe behind our proxy).
Every answer parses into its model: 2xx bodies, the error envelope of each 4xx, headers."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer

from tests.billing.api_helpers import catalog_world
from tests.factories import FeatureFactory, OfferFactory, PriceFactory
from vehicles.services.credentials import vehicle_credential_issue

PACKAGE = "billing_api_client"
PASSWORD = "pw-for-tests-1"  # tests.factories.UserFactory
# application/pdf as bytes; no post hooks (the generated code is used as generated)
GENERATOR_CONFIG = "content_type_overrides:\n  application/pdf: application/octet-stream\npost_hooks: []\n"


@pytest.fixture(scope="session")
def api(tmp_path_factory):
    """The generated package, imported (its `api` and `models` modules are imported on demand)."""
    workdir = tmp_path_factory.mktemp("generated-client")
    schema = SchemaGenerator().get_schema(request=None, public=True)
    (workdir / "schema.json").write_bytes(OpenApiJsonRenderer().render(schema))
    (workdir / "config.yaml").write_text(GENERATOR_CONFIG)
    generator = Path(sys.executable).with_name("openapi-python-client")
    result = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(workdir / "schema.json"),
            "--config",
            str(workdir / "config.yaml"),
            "--meta",
            "none",
            "--output-path",
            str(workdir / PACKAGE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Warning" not in output and "WARNING" not in output, output  # every operation generated
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(workdir))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def module(name: str):
    return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.fixture
def world(transactional_db):
    """The README's owner: a car with heated-seat hardware, an unlock and two plans on sale."""
    owner, vehicle = catalog_world()
    wifi = FeatureFactory(code="wifi_hotspot")
    plan = OfferFactory(code="wifi_hotspot_monthly", subscription=True, features=[wifi])
    PriceFactory(offer=plan, market=vehicle.market, amount_minor=499)
    return owner, vehicle


def test_every_operation_is_generated_with_its_error_model(api):
    schema = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
    operations = [op for item in schema["paths"].values() for op in item.values() if isinstance(op, dict)]
    package = Path(api.__file__).parent / "api"
    generated = {path.stem for path in package.glob("*/*.py")}

    assert {op["operationId"] for op in operations} <= generated
    error = module("models").Error.from_dict({"code": "not_found", "message": "No.", "details": {}})
    assert error.code == "not_found"


def test_the_readme_owner_flow_runs_through_the_generated_client(api, world, live_server, stripe_proxy):
    owner, vehicle = world
    models = module("models")
    Client, AuthenticatedClient = api.Client, api.AuthenticatedClient
    call = lambda name: module(f"api.{name}")  # noqa: E731

    # 1. Log in: a wrong password is a parsed 401 Error, the right one a token pair
    anonymous = Client(base_url=live_server.url, raise_on_unexpected_status=True)
    refused = call("auth.auth_token_obtain").sync_detailed(
        client=anonymous, body=models.LoginRequest(username=owner.user.username, password="wrong")
    )
    assert refused.status_code == 401
    assert isinstance(refused.parsed, models.Error) and refused.parsed.code == "not_authenticated"
    pair = call("auth.auth_token_obtain").sync(
        client=anonymous, body=models.LoginRequest(username=owner.user.username, password=PASSWORD)
    )
    assert isinstance(pair, models.TokenPair)
    me = AuthenticatedClient(base_url=live_server.url, token=pair.access, raise_on_unexpected_status=True)

    # 2. My vehicles, and what one of them can buy (a bare list, priced in its market)
    vehicles = call("vehicles.me_vehicles_list").sync(client=me)
    assert [v.vin for v in vehicles.results] == [vehicle.vin]
    vehicle_id = vehicles.results[0].id
    offers = call("vehicles.me_vehicles_offers_list").sync(client=me, id=str(vehicle_id))
    by_code = {offer.code: offer for offer in offers}
    assert by_code["heated_seats_unlock"].kind == "one_time" and not by_code["heated_seats_unlock"].owned
    assert by_code["wifi_hotspot_monthly"].price.amount_minor == 499

    # 3. Save a card as the default payment method
    card = call("payment_methods.me_payment_methods_create").sync(
        client=me, body=models.PaymentMethodAddInputRequest(payment_method="pm_card_visa", make_default=True)
    )
    assert card.is_default and card.last4 == "4242"

    # 4. Buy a one-time unlock with an Idempotency-Key; the retry replays the stored answer
    key = str(uuid.uuid4())
    purchase = call("vehicles.me_vehicles_purchases_create")
    body = models.PurchaseCreateInputRequest(offer="heated_seats_unlock")
    bought = purchase.sync_detailed(client=me, id=str(vehicle_id), body=body, idempotency_key=key)
    assert bought.status_code == 201, bought.content
    assert bought.parsed.status == "succeeded" and bought.parsed.purchase.offer == "heated_seats_unlock"
    replayed = purchase.sync_detailed(client=me, id=str(vehicle_id), body=body, idempotency_key=key)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.parsed.purchase.id == bought.parsed.purchase.id
    without_key = purchase.sync_detailed(client=me, id=str(vehicle_id), body=body, idempotency_key="")
    assert without_key.status_code == 400 and without_key.parsed.code in {
        "idempotency_key_required",
        "idempotency_key_invalid",
    }
    again = purchase.sync_detailed(
        client=me, id=str(vehicle_id), body=body, idempotency_key=str(uuid.uuid4())
    )
    assert again.status_code == 422 and again.parsed.code == "already_entitled"
    assert "ErrorDetail" not in again.parsed.message

    # 5. Start a subscription (with the plan's trial where there is one)
    started = call("vehicles.me_vehicles_subscriptions_create").sync_detailed(
        client=me,
        id=str(vehicle_id),
        body=models.SubscriptionCreateInputRequest(offer="wifi_hotspot_monthly"),
        idempotency_key=str(uuid.uuid4()),
    )
    assert started.status_code == 201, started.content
    subscription = started.parsed.subscription
    assert subscription.offer == "wifi_hotspot_monthly" and subscription.status in {"active", "trialing"}
    assert subscription.pending_offer is None

    # 6. Invoices and payments: the unlock was paid
    invoices = call("invoices.me_invoices_list").sync(client=me)
    assert any(invoice.total.amount_minor == 19_900 for invoice in invoices.results)
    payments = call("payments.me_payments_list").sync(client=me)
    assert [p.status for p in payments.results if p.amount.amount_minor == 19_900] == ["succeeded"]
    subscriptions = call("subscriptions.me_subscriptions_list").sync(client=me, vehicle=vehicle_id)
    assert [s.offer for s in subscriptions.results] == ["wifi_hotspot_monthly"]

    # An unknown object is a parsed 404 Error, as is an unknown route's
    missing = call("purchases.me_purchases_retrieve").sync_detailed(client=me, id=str(uuid.uuid4()))
    assert missing.status_code == 404 and missing.parsed.code == "not_found"


def test_the_car_reads_its_entitlements_and_token_through_the_generated_client(api, world, live_server):
    _owner, vehicle = world
    issued = vehicle_credential_issue(vehicle=vehicle)
    car = api.AuthenticatedClient(
        base_url=live_server.url, token=f"{issued.key_id}.{issued.secret}", prefix="Vehicle"
    )
    entitlements = module("api.vehicle.vehicle_entitlements_retrieve")

    first = entitlements.sync_detailed(client=car)
    assert first.status_code == 200 and first.parsed.vin == vehicle.vin
    unchanged = entitlements.sync_detailed(client=car, if_none_match=first.headers["ETag"])
    assert unchanged.status_code == 304
    token = module("api.vehicle.vehicle_entitlements_token_retrieve").sync(client=car)
    assert token.token.count(".") == 2
    keys = module("api.keys.jwks_retrieve").sync(client=api.Client(base_url=live_server.url))
    assert token.kid in {key.kid for key in keys.keys}
