"""R21 — BOLA matrix: every /api/v1/ route with an object id, every method, as another owner.

The route list is generated from the URL resolver, so a new id-bearing route fails
`test_every_id_route_has_an_id_provider` until it is added to `ID_PROVIDERS` (and so is covered).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from billing.models import (
    Entitlement,
    Invoice,
    PaymentAttempt,
    PaymentMethod,
    Purchase,
    Refund,
    Subscription,
)
from billing.services.refunds import refund_create
from tests.billing.api_helpers import (
    add_card,
    catalog_world,
    localstripe_card,
    owner_client,
    post,
    vehicle_client,
)
from tests.factories import FeatureFactory, OfferFactory, OwnerFactory, PriceFactory, VehicleFactory
from vehicles.models import Ownership, VehicleTransfer

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

API_PREFIX = "api/v1/"
ALL_METHODS = ("get", "post", "put", "patch", "delete")
PUBLIC_ROUTE_PREFIXES = ("api/v1/auth/", "api/v1/.well-known/")
_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>[^)]*\)|<(?:\w+:)?(?P<conv>\w+)>")


# --- routes from the resolver ----------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    template: str  # e.g. "api/v1/me/vehicles/{pk}/offers/"
    name: str
    params: tuple[str, ...]
    methods: tuple[str, ...]  # lower-case HTTP methods the view answers

    def url(self, **values: Any) -> str:
        return "/" + self.template.format(**values)


def _walk(patterns, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern


def _methods(pattern: URLPattern) -> tuple[str, ...]:
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:  # a ViewSet route: only the mapped methods exist
        return tuple(m for m in ALL_METHODS if m in actions)  # DRF adds "head" at runtime
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view_class is None:
        return ("get",)
    return tuple(m for m in ALL_METHODS if hasattr(view_class, m))


def api_routes() -> list[Route]:
    routes = []
    for raw, pattern in _walk(get_resolver().url_patterns):
        if not raw.startswith(API_PREFIX):
            continue
        params: list[str] = []

        def placeholder(match: re.Match, params: list[str] = params) -> str:
            name = match.group("name") or match.group("conv")
            params.append(name)
            return "{" + name + "}"

        template = _GROUP.sub(placeholder, raw).replace("^", "").replace("$", "")
        routes.append(Route(template, pattern.name or "", tuple(params), _methods(pattern)))
    return routes


def id_routes() -> list[Route]:
    """Owner and vehicle routes with an id (the staff-only /operator/ routes: test_api_operator.py)."""
    return [r for r in api_routes() if r.params and "operator/" not in r.template]


# --- the world ---------------------------------------------------------------------------------
@dataclass
class World:
    owner_a: Any
    vehicle_a: Any
    client_a: APIClient
    owner_b: Any
    vehicle_b: Any
    client_b: APIClient
    card_b: dict
    ids: dict[str, str] = field(default_factory=dict)


def build_world(localstripe_url: str) -> World:
    """Owner A: a vehicle, a card, a paid unlock, an active paid subscription, a pending transfer.
    Owner B: his own vehicle (same market, same hardware) and his own card."""
    owner_a, vehicle_a = catalog_world()
    nav = FeatureFactory(code="navigation_plus")
    nav_monthly = OfferFactory(code="nav_monthly", subscription=True, trial_days=0, features=[nav])
    nav_yearly = OfferFactory(code="nav_yearly", subscription=True, interval="year", features=[nav])
    PriceFactory(offer=nav_monthly, market=vehicle_a.market, amount_minor=499)
    PriceFactory(offer=nav_yearly, market=vehicle_a.market, amount_minor=4_999)
    owner_b = OwnerFactory()
    vehicle_b = VehicleFactory(
        owner=owner_b, market=vehicle_a.market, capabilities=list(vehicle_a.capabilities.all())
    )
    client_a, client_b = owner_client(owner_a), owner_client(owner_b)
    card_a = add_card(client_a, localstripe_card(localstripe_url, "4242424242424242"))
    card_b = add_card(client_b, localstripe_card(localstripe_url, "4242424242424242"))

    bought = post(
        client_a, f"/api/v1/me/vehicles/{vehicle_a.pk}/purchases/", {"offer": "heated_seats_unlock"}
    )
    assert bought.status_code == 201, bought.json()
    subscribed = post(
        client_a, f"/api/v1/me/vehicles/{vehicle_a.pk}/subscriptions/", {"offer": "nav_monthly"}
    )
    assert subscribed.status_code == 201, subscribed.json()
    assert subscribed.json()["subscription"]["status"] == "active"
    transfer = post(client_a, f"/api/v1/me/vehicles/{vehicle_a.pk}/transfer/")
    assert transfer.status_code == 201, transfer.json()

    world = World(owner_a, vehicle_a, client_a, owner_b, vehicle_b, client_b, card_b)
    world.ids = {
        "vehicle": str(vehicle_a.pk),
        "purchase": bought.json()["purchase"]["id"],
        "invoice": bought.json()["invoice"]["id"],
        "payment": bought.json()["payment"]["id"],
        "subscription": subscribed.json()["subscription"]["id"],
        "subscription_invoice": subscribed.json()["invoice"]["id"],
        "subscription_payment": subscribed.json()["payment"]["id"],
        "payment_method": str(card_a["id"]),
        "transfer": transfer.json()["transfer"],
    }
    goodwill = PaymentAttempt.objects.get(pk=world.ids["subscription_payment"])
    world.ids["credit_note"] = str(
        refund_create(payment_attempt=goodwill, amount_minor=100, reason="goodwill").credit_note.pk
    )
    return world


# route name -> (which of A's ids goes into {pk}, JSON body for POSTs that need one)
ID_PROVIDERS: dict[str, tuple[str, dict]] = {
    "my-vehicle-detail": ("vehicle", {}),
    "my-vehicle-offers": ("vehicle", {}),
    "my-vehicle-purchases": ("vehicle", {"offer": "heated_seats_unlock"}),
    "my-vehicle-subscriptions": ("vehicle", {"offer": "heated_seats_monthly", "trial": False}),
    "my-vehicle-transfer": ("vehicle", {}),
    "my-subscription-detail": ("subscription", {}),
    "my-subscription-cancel": ("subscription", {}),
    "my-subscription-resume": ("subscription", {}),
    "my-subscription-change": ("subscription", {"offer": "nav_yearly"}),
    "my-subscription-change-preview": ("subscription", {"offer": "nav_yearly"}),
    "my-purchase-detail": ("purchase", {}),
    "my-purchase-withdraw": ("purchase", {}),
    "my-invoice-detail": ("invoice", {}),
    "my-invoice-pay": ("invoice", {}),
    "my-invoice-pdf": ("invoice", {}),
    "my-credit-note-pdf": ("credit_note", {}),
    "my-payment-detail": ("payment", {}),
    "my-payment-confirm": ("payment", {}),
    "my-payment-method-default": ("payment_method", {}),
}


def snapshot() -> dict[str, list]:
    """Every row that matters for money and ownership, with its state."""
    return {
        "subscriptions": sorted(
            Subscription.objects.values_list(
                "id", "owner_id", "status", "offer_id", "pending_offer_id", "cancel_at_period_end"
            )
        ),
        "purchases": sorted(Purchase.objects.values_list("id", "owner_id", "status")),
        "invoices": sorted(Invoice.objects.values_list("id", "owner_id", "status", "total_minor")),
        "attempts": sorted(PaymentAttempt.objects.values_list("id", "owner_id", "status", "amount_minor")),
        "refunds": sorted(Refund.objects.values_list("id", "status", "amount_minor")),
        "payment_methods": sorted(PaymentMethod.objects.values_list("id", "owner_id", "is_default")),
        "entitlements": sorted(
            (str(e[0]), e[1], e[2], str(e[3]))
            for e in Entitlement.objects.values_list("id", "vehicle_id", "source", "ends_at")
        ),
        "ownerships": sorted(Ownership.objects.values_list("id", "vehicle_id", "owner_id", "ends_at")),
        "transfers": sorted(
            VehicleTransfer.objects.values_list("id", "status", "to_owner_id", "failed_attempts")
        ),
    }


def call(client: APIClient, method: str, url: str, body: dict | None = None):
    kwargs: dict[str, Any] = {"HTTP_IDEMPOTENCY_KEY": str(uuid.uuid4())} if method == "post" else {}
    if method in ("post", "put", "patch"):
        return getattr(client, method)(url, body or {}, format="json", **kwargs)
    return getattr(client, method)(url, **kwargs)


@pytest.fixture
def world(stripe_proxy, localstripe_url) -> World:
    return build_world(localstripe_url)


# --- tests -------------------------------------------------------------------------------------
def test_the_resolver_yields_the_known_id_routes():
    """Guards the generator itself: if it found nothing, the matrix below would pass vacuously."""
    names = {r.name for r in id_routes()}
    assert {"my-vehicle-detail", "my-subscription-cancel", "my-payment-method-default"} <= names
    assert all(r.params == ("pk",) for r in id_routes())
    assert next(r for r in id_routes() if r.name == "my-vehicle-purchases").methods == ("post",)


def test_every_id_route_has_an_id_provider():
    missing = sorted(r.template for r in id_routes() if r.name not in ID_PROVIDERS)
    assert not missing, f"add these id routes to ID_PROVIDERS (BOLA matrix): {missing}"


def test_owner_b_gets_404_for_every_id_route_and_method_and_nothing_changes(world, stripe_proxy):
    before, calls_before = snapshot(), len(stripe_proxy.calls())
    owner_a_customer = type(world.owner_a).objects.get(pk=world.owner_a.pk).stripe_customer_id
    checked = 0
    for route in id_routes():
        id_kind, body = ID_PROVIDERS[route.name]
        url = route.url(pk=world.ids[id_kind])
        unknown_url = route.url(pk=str(uuid.uuid4()) if id_kind != "payment_method" else "987654321")
        for method in ALL_METHODS:
            response = call(world.client_b, method, url, body)
            where = f"{method.upper()} {url} ({route.name})"
            assert response.status_code < 500, where
            if method in route.methods:
                assert response.status_code == 404, (where, response.status_code, response.content[:300])
                assert response.json()["code"] == "not_found", where
                assert set(response.json()) == {"code", "message", "details"}, where
                checked += 1
            else:
                assert response.status_code == 405, (where, response.status_code)
            # no existence leak: A's object answers exactly like an id that does not exist
            unknown = call(world.client_b, method, unknown_url, body)
            assert unknown.status_code == response.status_code, where
            assert unknown.json().get("code") == response.json().get("code"), where
            for kind, value in world.ids.items():
                if kind != "payment_method":  # a small integer: would match any digit
                    assert value not in response.content.decode(), where
    expected = sum(len(r.methods) for r in id_routes())
    assert (checked, expected >= 16) == (expected, True)
    assert snapshot() == before
    assert len(stripe_proxy.calls()) == calls_before, [c.path for c in stripe_proxy.calls()[calls_before:]]
    assert type(world.owner_a).objects.get(pk=world.owner_a.pk).stripe_customer_id == owner_a_customer


def test_owner_a_reaches_the_same_routes(world):
    """The matrix above is meaningful only if the ids are right: A's own GETs answer 200."""
    for route in id_routes():
        if "get" not in route.methods:
            continue
        id_kind, _ = ID_PROVIDERS[route.name]
        response = world.client_a.get(route.url(pk=world.ids[id_kind]))
        assert response.status_code == 200, (route.name, response.content[:300])


def test_owner_b_cannot_pay_with_owner_a_card(world, stripe_proxy):
    before, calls_before = snapshot(), len(stripe_proxy.calls())

    response = post(
        world.client_b,
        f"/api/v1/me/vehicles/{world.vehicle_b.pk}/purchases/",
        {"offer": "heated_seats_unlock", "payment_method": int(world.ids["payment_method"])},
    )

    assert response.status_code == 422, response.json()
    assert response.json()["code"] == "no_payment_method"
    assert snapshot() == before
    assert len(stripe_proxy.calls()) == calls_before


def test_owner_b_cannot_claim_a_card_already_saved_by_owner_a(world, stripe_proxy):
    stripe_id = PaymentMethod.objects.get(pk=world.ids["payment_method"]).stripe_payment_method_id
    before = snapshot()

    response = world.client_b.post(
        "/api/v1/me/payment-methods/", {"payment_method": stripe_id, "make_default": True}, format="json"
    )

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert snapshot() == before


def test_list_endpoints_as_owner_b_contain_only_b_objects(world):
    list_routes = [
        r for r in api_routes() if not r.params and "get" in r.methods and r.template.startswith("api/v1/me/")
    ]
    assert len(list_routes) >= 6
    secrets = [v for k, v in world.ids.items() if k != "payment_method"] + [world.vehicle_a.vin]
    for route in list_routes:
        response = world.client_b.get(route.url())
        assert response.status_code == 200, route.template
        text = response.content.decode()
        for value in secrets:
            assert value not in text, (route.template, value)
    vehicles = world.client_b.get("/api/v1/me/vehicles/").json()["results"]
    assert [v["id"] for v in vehicles] == [str(world.vehicle_b.pk)]
    methods = world.client_b.get("/api/v1/me/payment-methods/").json()["results"]
    assert [m["id"] for m in methods] == [world.card_b["id"]]
    # filters cannot widen the scope either
    for path in ("subscriptions", "purchases", "invoices"):
        filtered = world.client_b.get(f"/api/v1/me/{path}/", {"vehicle": world.ids["vehicle"]})
        assert filtered.status_code in (200, 400), path
        assert world.ids["vehicle"] not in filtered.content.decode() or filtered.status_code == 400


def _jws_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_vehicle_b_credential_only_ever_sees_vehicle_b(world):
    car_b = vehicle_client(world.vehicle_b)
    car_a = vehicle_client(world.vehicle_a)

    entitlements = car_b.get("/api/v1/vehicle/entitlements/")
    token = car_b.get("/api/v1/vehicle/entitlements/token/")

    assert entitlements.status_code == token.status_code == 200
    assert entitlements.json()["vin"] == world.vehicle_b.vin
    assert entitlements.json()["features"] == []
    claims = _jws_claims(token.json()["token"])
    assert claims["aud"] == world.vehicle_b.vin
    assert claims["sub"] == str(world.vehicle_b.pk)
    assert claims["features"] == []
    for response in (entitlements, token):
        assert world.vehicle_a.vin not in response.content.decode()
        assert str(world.vehicle_a.pk) not in response.content.decode()
    # sanity: A's car does have features, so B's empty answer is not vacuous
    assert {f["code"] for f in car_a.get("/api/v1/vehicle/entitlements/").json()["features"]} == {
        "heated_seats",
        "navigation_plus",
    }
    # query strings cannot redirect the lookup to another car
    sneaky = car_b.get(
        "/api/v1/vehicle/entitlements/", {"vehicle": world.ids["vehicle"], "vin": world.vehicle_a.vin}
    )
    assert sneaky.json()["vin"] == world.vehicle_b.vin


def test_credentials_of_one_kind_do_not_open_the_other_kind_of_route(world):
    car_b = vehicle_client(world.vehicle_b)
    for route in id_routes():
        id_kind, body = ID_PROVIDERS[route.name]
        for method in route.methods:
            response = call(car_b, method, route.url(pk=world.ids[id_kind]), body)
            assert response.status_code in (401, 403), (route.name, method, response.status_code)
    owner_on_car_route = world.client_a.get("/api/v1/vehicle/entitlements/")
    assert owner_on_car_route.status_code in (401, 403)


def test_unauthenticated_gets_401_everywhere_but_auth_and_jwks(world, stripe_proxy):
    anonymous = APIClient()
    before, calls_before = snapshot(), len(stripe_proxy.calls())
    checked = 0
    for route in api_routes():
        if route.template.startswith(PUBLIC_ROUTE_PREFIXES):
            continue
        pk = world.ids[ID_PROVIDERS[route.name][0]] if route.name in ID_PROVIDERS else "1"  # operator
        url = route.url(pk=pk) if route.params else route.url()
        for method in route.methods:
            response = call(anonymous, method, url, {})
            assert response.status_code == 401, (method, url, response.status_code, response.content[:200])
            assert response.json()["code"] == "not_authenticated"
            checked += 1
    assert checked >= 25
    assert APIClient().get("/api/v1/.well-known/jwks.json").status_code == 200
    assert snapshot() == before
    assert len(stripe_proxy.calls()) == calls_before
