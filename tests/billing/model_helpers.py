"""Helpers of the model-based test (`test_model_based.py`): a clean slate per example, the
catalog and fleet it runs over, and what localstripe says was charged and refunded.

localstripe is read directly (not through the fault proxy), the way an operator would read the
Stripe dashboard: the invariants observe, they never call our services or inject anything.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from django.core.management.color import no_style
from django.db import connection

from tests.factories import (
    CapabilityFactory,
    FeatureFactory,
    MarketFactory,
    OfferFactory,
    OwnerFactory,
    OwnershipFactory,
    PriceFactory,
    UserFactory,
    VehicleFactory,
)

LOCALSTRIPE_KEY = "sk_test_localstripe"
CARD_3DS = "4000002760003184"  # localstripe: every PaymentIntent with it waits for 3-D Secure

# Tables Django itself fills at migrate time: kept between examples.
_KEPT_TABLES = {"django_migrations", "django_content_type", "auth_permission"}
_CLEAR_SQL: list[str] = []


def database_clear() -> None:
    """Empty every application table: a clean slate for the next example.

    The test runs with `django_db(transaction=True)`, so services commit for real (row locks,
    `on_commit` callbacks) and nothing is rolled back for us between Hypothesis examples. A
    DELETE per table with foreign-key triggers off is several times faster than one TRUNCATE
    of every table for the few rows an example writes; sequences restart so that invoice
    numbers, and so the order of rows the machine picks from, are the same on every run.
    """
    if not _CLEAR_SQL:
        tables = [
            name
            for name in connection.introspection.django_table_names(only_existing=True, include_views=False)
            if name not in _KEPT_TABLES
        ]
        sequences = connection.introspection.sequence_list()
        _CLEAR_SQL.append(
            "SET session_replication_role = replica;"  # no FK triggers while emptying
            + "".join(f"DELETE FROM {connection.ops.quote_name(name)};" for name in tables)
            + "SET session_replication_role = DEFAULT;"
            + "".join(connection.ops.sequence_reset_by_name_sql(no_style(), sequences))
        )
    with connection.cursor() as cursor:
        cursor.execute(_CLEAR_SQL[0])


# -- the world -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OfferSpec:
    code: str
    features: tuple[str, ...]
    amount_minor: int
    subscription: bool = True
    trial_days: int = 0
    tier: int = 0
    included_months: int = 0
    ends_on_transfer: bool = False


# A slice of the demo catalog (billing/services/demo_data.py), in one EUR market. It has what
# the holes of issue 7 need: a bundle that overlaps single plans (winter_bundle covers
# heated_seats_monthly, adas_plus_bundle covers adas_highway_assist_monthly), plans with trials,
# upgrades and downgrades between plans of one interval, an unlock that stays with the car and
# one that ends on resale, and an offer included with a new car for two months.
OFFERS = (
    OfferSpec("heated_seats_unlock", ("heated_seats",), 29_900, subscription=False),
    OfferSpec(
        "extended_warranty_unlock", ("extended_warranty",), 8_990, subscription=False, ends_on_transfer=True
    ),
    OfferSpec("heated_seats_monthly", ("heated_seats",), 999, trial_days=7, tier=1),
    OfferSpec("winter_bundle", ("heated_seats", "heated_steering_wheel"), 1_499, tier=2),
    OfferSpec("adas_highway_assist_monthly", ("adas_highway_assist",), 2_900, trial_days=14, tier=1),
    OfferSpec("adas_plus_bundle", ("adas_highway_assist", "adas_auto_park"), 4_900, tier=2),
    OfferSpec("premium_connectivity_monthly", ("live_traffic", "streaming"), 999, tier=2, included_months=2),
)
ONE_TIME_OFFERS = tuple(o.code for o in OFFERS if not o.subscription)
PLANS = tuple(o.code for o in OFFERS if o.subscription)
PRICE = {o.code: o.amount_minor for o in OFFERS}
OFFER_FEATURES = {o.code: frozenset(o.features) for o in OFFERS}
FEATURES = tuple(sorted({f for o in OFFERS for f in o.features}))


@dataclass
class World:
    owners: list  # [consumer, fleet]
    vehicles: list  # 3 cars: the consumer owns two, the fleet one
    admin: object


def world_create(*, now) -> World:
    """Market, catalog, two owners (a consumer with the EU withdrawal right, a fleet without),
    three cars delivered 30 days before `now`, their included offers granted."""
    from billing.services.included_offers import vehicle_included_offers_grant
    from vehicles.models import Owner

    market = MarketFactory()
    hardware = CapabilityFactory(code="full_hw")
    features = {code: FeatureFactory(code=code) for code in FEATURES}
    for spec in OFFERS:
        offer = OfferFactory(
            code=spec.code,
            kind="subscription" if spec.subscription else "one_time",
            interval="month" if spec.subscription else "",
            trial_days=spec.trial_days,
            tier=spec.tier,
            included_months_with_new_car=spec.included_months,
            transfer_policy="ends_on_transfer" if spec.ends_on_transfer else "stays_with_vehicle",
            features=[features[code] for code in spec.features],
        )
        PriceFactory(
            offer=offer,
            market=market,
            amount_minor=spec.amount_minor,
            valid_from=now - dt.timedelta(days=365),
        )
    consumer = OwnerFactory(display_name="Anna Consumer")
    fleet = OwnerFactory(display_name="Fleet GmbH", kind=Owner.Kind.FLEET, is_consumer=False)
    vehicles = []
    for owner in (consumer, consumer, fleet):
        vehicle = VehicleFactory(
            market=market, capabilities=[hardware], delivered_at=now - dt.timedelta(days=30)
        )
        OwnershipFactory(vehicle=vehicle, owner=owner, starts_at=now - dt.timedelta(days=30))
        vehicle_included_offers_grant(vehicle=vehicle)
        vehicles.append(vehicle)
    admin = UserFactory(username="ops@example.com", is_staff=True)
    return World(owners=[consumer, fleet], vehicles=vehicles, admin=admin)


# -- localstripe: what Stripe says -----------------------------------------------------------------
def localstripe_request(base: str, method: str, path: str, form: dict | None = None) -> dict:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(
        f"{base}{path}", data=data, method=method, headers={"Authorization": f"Bearer {LOCALSTRIPE_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        body = response.read()
    return json.loads(body) if body.strip() else {}


def localstripe_list(base: str, resource: str) -> list[dict]:
    """Every object of a list endpoint, auto-paging (localstripe has no filters we can trust)."""
    objects: list[dict] = []
    starting_after = None
    while True:
        query = {"limit": 100, **({"starting_after": starting_after} if starting_after else {})}
        page = localstripe_request(base, "GET", f"/v1/{resource}?{urllib.parse.urlencode(query)}")
        objects += page["data"]
        if not page.get("has_more") or not page["data"]:
            return objects
        starting_after = page["data"][-1]["id"]


def localstripe_card(base: str, number: str) -> str:
    """A PaymentMethod from raw card details, as the owner app's Stripe SDK makes it."""
    form = {
        "type": "card",
        "card[number]": number,
        "card[exp_month]": "12",
        "card[exp_year]": "2030",
        "card[cvc]": "123",
    }
    return localstripe_request(base, "POST", "/v1/payment_methods", form)["id"]


def localstripe_authenticate(base: str, intent: dict, *, success: bool) -> dict:
    """The customer passes (or fails) 3-D Secure in their bank's app: Stripe's side only."""
    form = {"client_secret": intent["client_secret"], "success": "true" if success else "false"}
    return localstripe_request(base, "POST", f"/v1/payment_intents/{intent['id']}/_authenticate", form)


@dataclass
class StripeLedger:
    """Per Stripe customer: PaymentIntents by our attempt id, refunds by our refund id."""

    intents: list[dict] = field(default_factory=list)
    refunds: list[dict] = field(default_factory=list)
    intent_by_id: dict[str, dict] = field(default_factory=dict)
    captured_by_customer: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    refunded_by_customer: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def stripe_ledger(base: str) -> StripeLedger:
    ledger = StripeLedger()
    ledger.intents = localstripe_list(base, "payment_intents")
    ledger.intent_by_id = {intent["id"]: intent for intent in ledger.intents}
    for intent in ledger.intents:
        if intent["status"] == "succeeded":
            ledger.captured_by_customer[intent["customer"]] += intent["amount"]
    ledger.refunds = localstripe_list(base, "refunds")
    for refund in ledger.refunds:
        if refund["status"] != "succeeded":
            continue
        intent = ledger.intent_by_id.get(refund.get("payment_intent") or "")
        customer = intent["customer"] if intent else "?unknown-intent"
        ledger.refunded_by_customer[customer] += refund["amount"]
    return ledger
