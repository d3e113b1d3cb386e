"""Demo data: a realistic catalog, three owners, six cars, live subscriptions and their rights.

Idempotent: every row is looked up by its natural key (market code, capability/feature/offer
code, (offer, market, version), username, VIN, (vehicle, owner, starts_at), the live
subscription of (vehicle, offer)), so running the seed twice creates nothing new. Catalog rows
are updated to the definitions below; prices and passwords are never touched once created
(a price is immutable; a changed password is the user's).

For the demo only: subscriptions are written as rows (as if their payments had succeeded);
their entitlements come from the entitlement services.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.utils import timezone

from billing.models import (
    CustomerTaxProfile,
    Entitlement,
    Feature,
    Offer,
    Price,
    Subscription,
    SubscriptionStatus,
    TaxRate,
    TrialUsage,
)
from billing.models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from billing.services.catalog import offer_for_vehicle
from billing.services.entitlements import (
    entitlements_grant_for_subscription_period,
    entitlements_grant_included,
)
from core.periods import Interval, add_interval, period_at
from vehicles.models import Capability, Market, Owner, Ownership, Vehicle

DEMO_ADMIN = ("admin", "admin")


def _at(year: int, month: int, day: int, hour: int = 9) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


MARKETS = [
    # code, name, currency, withdrawal days
    ("DE", "Germany", "EUR", 14),
    ("FR", "France", "EUR", 14),
    ("US", "United States", "USD", 0),
    ("JP", "Japan", "JPY", 0),
]
# VAT per market, for every feature category ("default"): consumers pay their country's rate
# (EU one-stop shop). Germany shows a rate change: 16 % from July to December 2020.
# market, kind, rate, valid from, valid to (exclusive)
TAX_RATES = [
    ("DE", "standard", "0.19", (2007, 1, 1), (2020, 7, 1)),
    ("DE", "standard", "0.16", (2020, 7, 1), (2021, 1, 1)),
    ("DE", "standard", "0.19", (2021, 1, 1), None),
    ("FR", "standard", "0.20", (2014, 1, 1), None),
    ("US", "outside_scope", "0", (2007, 1, 1), None),  # no VAT (US sales tax is not handled here)
    ("JP", "standard", "0.10", (2019, 10, 1), None),  # consumption tax
]
# The fleet's VAT id and address: its invoices are Factur-X e-invoices.
FLEET_TAX_PROFILE = {
    "vat_id": "DE123456704",
    "address_line": "Am Sandtorkai 1",
    "postcode": "20457",
    "city": "Hamburg",
}

CAPABILITIES = {
    "heated_seat_hw": "Heated seat hardware",
    "heated_steering_hw": "Heated steering wheel hardware",
    "adas_sensor_suite_l2": "ADAS sensor suite (level 2)",
    "adas_sensor_suite_l2plus": "ADAS sensor suite (level 2+)",
    "lidar": "Lidar",
    "ev_battery": "Traction battery (EV)",
    "dc_fast_charging": "DC fast charging",
    "iso15118_plc": "ISO 15118 power-line communication",
    "premium_audio_hw": "Premium audio hardware",
    "lte_modem": "LTE modem",
    "wifi_ap": "Wi-Fi access point",
    "dual_motor": "Dual motor",
}


@dataclass(frozen=True)
class FeatureDef:
    code: str
    name: str
    category: str
    capabilities: tuple[str, ...] = ()
    min_software_version: str = ""
    markets: tuple[str, ...] = ()  # empty: every market
    description: str = ""


C = Feature.Category
FEATURES = [
    FeatureDef(
        "adas_highway_assist", "Highway Assist", C.DRIVER_ASSISTANCE, ("adas_sensor_suite_l2",), "2026.10.0"
    ),
    FeatureDef(
        "adas_auto_park", "Auto Park", C.DRIVER_ASSISTANCE, ("adas_sensor_suite_l2plus",), "2026.20.0"
    ),
    FeatureDef(
        "adas_lane_change",
        "Automatic Lane Change",
        C.DRIVER_ASSISTANCE,
        ("adas_sensor_suite_l2plus", "lidar"),
        "2026.30.0",
        ("DE", "FR", "US"),
        "Type-approved in the EU and the US only.",
    ),
    FeatureDef("heated_seats", "Heated Front Seats", C.COMFORT, ("heated_seat_hw",)),
    FeatureDef("heated_steering_wheel", "Heated Steering Wheel", C.COMFORT, ("heated_steering_hw",)),
    FeatureDef("premium_audio", "Premium Audio", C.COMFORT, ("premium_audio_hw",), "2025.40.0"),
    FeatureDef("live_traffic", "Live Traffic Navigation", C.CONNECTIVITY, ("lte_modem",)),
    FeatureDef("premium_connectivity", "Premium Connectivity", C.CONNECTIVITY, ("lte_modem",)),
    FeatureDef("wifi_hotspot", "Wi-Fi Hotspot", C.CONNECTIVITY, ("lte_modem", "wifi_ap")),
    FeatureDef("streaming", "Music and Video Streaming", C.CONNECTIVITY, ("lte_modem",), "2026.10.0"),
    FeatureDef(
        "acceleration_boost", "Acceleration Boost", C.PERFORMANCE, ("ev_battery", "dual_motor"), "2026.20.0"
    ),
    FeatureDef(
        "plug_and_charge", "Plug & Charge", C.CHARGING, ("ev_battery", "iso15118_plc"), "", ("DE", "FR", "US")
    ),
    FeatureDef(
        "charging_flat_rate",
        "Charging Flat Rate",
        C.CHARGING,
        ("ev_battery", "dc_fast_charging"),
        "",
        ("DE", "FR"),
        "Flat-rate fast charging on the partner network in Europe.",
    ),
    FeatureDef("service_package_basic", "Service Package Basic", C.SERVICE),
    FeatureDef("extended_warranty", "Extended Warranty", C.SERVICE),
]


@dataclass(frozen=True)
class OfferDef:
    code: str
    name: str
    features: tuple[str, ...]
    # Amounts in minor units per market (JPY has no decimals). Markets left out: not sold there.
    prices: dict[str, int]
    interval: str = ""  # "" one-time, "month", "year"
    trial_days: int = 0
    tier: int = 0
    included_months_with_new_car: int = 0
    transfer_policy: str = Offer.TransferPolicy.STAYS_WITH_VEHICLE
    # Second versions: market -> (amount_minor, valid_from)
    v2_prices: tuple[tuple[str, int, datetime], ...] = ()


ALL = ("DE", "FR", "US", "JP")


def _prices(eur: int, usd: int, jpy: int | None, markets: tuple[str, ...] = ALL) -> dict[str, int]:
    by_currency = {"DE": eur, "FR": eur, "US": usd, "JP": jpy}
    return {m: amount for m in markets if (amount := by_currency[m]) is not None}


OFFERS = [
    OfferDef(
        "heated_seats_unlock",
        "Heated Seats (unlock)",
        ("heated_seats",),
        _prices(29900, 29900, 39800),
        v2_prices=(("DE", 34900, _at(2026, 9, 1, 0)), ("FR", 34900, _at(2026, 9, 1, 0))),
    ),
    OfferDef(
        "heated_seats_monthly",
        "Heated Seats (monthly)",
        ("heated_seats",),
        _prices(999, 999, 1200),
        "month",
        trial_days=7,
        tier=1,
    ),
    OfferDef(
        "winter_bundle",
        "Winter Bundle (heated seats + steering wheel)",
        ("heated_seats", "heated_steering_wheel"),
        _prices(1499, 1499, 1800),
        "month",
        tier=2,
    ),
    OfferDef(
        "adas_highway_assist_monthly",
        "Highway Assist (monthly)",
        ("adas_highway_assist",),
        _prices(2900, 2900, 3900),
        "month",
        trial_days=14,
        tier=1,
        v2_prices=(("JP", 4400, _at(2026, 4, 1, 0)),),
    ),
    OfferDef(
        "adas_highway_assist_yearly",
        "Highway Assist (yearly)",
        ("adas_highway_assist",),
        _prices(29000, 29000, 39000),
        "year",
        trial_days=14,
        tier=1,
    ),
    OfferDef(
        "adas_plus_bundle",
        "ADAS Plus (highway assist, auto park, lane change)",
        ("adas_highway_assist", "adas_auto_park", "adas_lane_change"),
        _prices(4900, 4900, None, ("DE", "FR", "US")),
        "month",
        tier=2,
    ),
    OfferDef(
        "acceleration_boost_unlock",
        "Acceleration Boost (unlock)",
        ("acceleration_boost",),
        _prices(199900, 199900, 298000),
    ),
    OfferDef(
        "premium_audio_unlock", "Premium Audio (unlock)", ("premium_audio",), _prices(49900, 49900, 69800)
    ),
    OfferDef(
        "connectivity_basic_monthly",
        "Connectivity Basic (monthly)",
        ("live_traffic",),
        _prices(499, 499, 600),
        "month",
        tier=1,
    ),
    OfferDef(
        "premium_connectivity_monthly",
        "Premium Connectivity (monthly)",
        ("live_traffic", "premium_connectivity", "streaming"),
        _prices(999, 999, 1300),
        "month",
        tier=2,
        included_months_with_new_car=36,
        v2_prices=(
            ("DE", 1199, _at(2026, 7, 1, 0)),
            ("FR", 1199, _at(2026, 7, 1, 0)),
            ("US", 1199, _at(2026, 7, 1, 0)),
        ),
    ),
    OfferDef(
        "premium_connectivity_yearly",
        "Premium Connectivity (yearly)",
        ("live_traffic", "premium_connectivity", "streaming"),
        _prices(9900, 9900, 13000),
        "year",
        tier=2,
    ),
    OfferDef(
        "wifi_hotspot_monthly", "Wi-Fi Hotspot (monthly)", ("wifi_hotspot",), _prices(799, 799, 980), "month"
    ),
    OfferDef(
        "charging_flat_rate_monthly",
        "Charging Flat Rate with Plug & Charge (monthly)",
        ("charging_flat_rate", "plug_and_charge"),
        _prices(1199, 0, None, ("DE", "FR")),
        "month",
    ),
    OfferDef(
        "plug_and_charge_yearly",
        "Plug & Charge (yearly)",
        ("plug_and_charge",),
        _prices(2900, 2900, None, ("DE", "FR", "US")),
        "year",
    ),
    OfferDef(
        "service_package_basic_yearly",
        "Service Package Basic (yearly)",
        ("service_package_basic",),
        _prices(14900, 14900, 19800),
        "year",
        transfer_policy=Offer.TransferPolicy.ENDS_ON_TRANSFER,
    ),
    OfferDef(
        "extended_warranty_unlock",
        "Extended Warranty (2 years)",
        ("extended_warranty",),
        _prices(89900, 99900, 128000),
    ),
]
PRICE_V1_VALID_FROM = _at(2025, 1, 1, 0)


@dataclass(frozen=True)
class OwnerDef:
    key: str
    display_name: str
    email: str
    password: str
    kind: str
    billing_country: str
    currency: str
    is_consumer: bool = True


OWNERS = [
    OwnerDef("anna", "Anna Schmidt", "anna@example.com", "demo-password-1", Owner.Kind.PERSON, "DE", "EUR"),
    OwnerDef("kenji", "Kenji Sato", "kenji@example.com", "demo-password-2", Owner.Kind.PERSON, "JP", "JPY"),
    OwnerDef(
        "fleet",
        "Nordfleet Logistics GmbH",
        "fleet@example.com",
        "demo-password-3",
        Owner.Kind.FLEET,
        "DE",
        "EUR",
        is_consumer=False,
    ),
]


@dataclass(frozen=True)
class VehicleDef:
    vin: str  # ISO 3779 with a valid check digit
    brand: str
    model: str
    model_year: int
    market: str
    software_version: str
    battery_capacity_wh: int
    delivered_at: datetime
    capabilities: tuple[str, ...]
    # (owner key, starts_at) in order; the last one is the current owner.
    owners: tuple[tuple[str, datetime], ...]


VEHICLES = [
    VehicleDef(
        "YV4H60DL4S1012345",
        "Volvo",
        "EX90 Twin Motor Performance",
        2025,
        "DE",
        "2026.32.0",
        111_000,
        _at(2025, 4, 14),
        (
            "heated_seat_hw",
            "heated_steering_hw",
            "adas_sensor_suite_l2",
            "adas_sensor_suite_l2plus",
            "lidar",
            "ev_battery",
            "dc_fast_charging",
            "iso15118_plc",
            "premium_audio_hw",
            "lte_modem",
            "wifi_ap",
            "dual_motor",
        ),
        (("anna", _at(2025, 4, 14)),),
    ),
    VehicleDef(
        "JTMAB3BB0SA006117",
        "Toyota",
        "bZ4X Z",
        2025,
        "JP",
        "2026.32.0",
        71_400,
        _at(2025, 6, 20),
        (
            "heated_seat_hw",
            "heated_steering_hw",
            "adas_sensor_suite_l2",
            "lte_modem",
            "ev_battery",
            "dc_fast_charging",
        ),
        (("kenji", _at(2025, 6, 20)),),
    ),
    VehicleDef(
        "SJNFAAZE6RU302586",
        "Nissan",
        "Ariya B6",
        2024,
        "JP",
        "2025.44.2",
        66_000,
        _at(2024, 9, 2),
        ("heated_seat_hw", "adas_sensor_suite_l2", "lte_modem", "ev_battery", "dc_fast_charging"),
        (("kenji", _at(2024, 9, 2)),),
    ),
    VehicleDef(
        "W1V3KCFZ2SP675432",
        "Mercedes-Benz",
        "eSprinter 113 kWh",
        2025,
        "DE",
        "2026.20.0",
        113_000,
        _at(2025, 10, 1),
        ("adas_sensor_suite_l2", "lte_modem", "ev_battery", "dc_fast_charging", "iso15118_plc"),
        (("fleet", _at(2025, 10, 1)),),
    ),
    VehicleDef(
        "VF1RCB00772381904",
        "Renault",
        "Megane E-Tech EV60",
        2023,
        "FR",
        "2025.40.3",
        60_000,
        _at(2023, 5, 10),
        ("heated_seat_hw", "lte_modem", "ev_battery", "dc_fast_charging"),
        (("anna", _at(2023, 5, 10)), ("fleet", _at(2024, 1, 10))),
    ),
    VehicleDef(
        "3FMTK4SX8SMA04821",
        "Ford",
        "Mustang Mach-E Premium AWD",
        2025,
        "US",
        "2026.32.1",
        91_000,
        _at(2026, 2, 11),
        (
            "heated_seat_hw",
            "heated_steering_hw",
            "adas_sensor_suite_l2",
            "adas_sensor_suite_l2plus",
            "lte_modem",
            "wifi_ap",
            "ev_battery",
            "dc_fast_charging",
            "iso15118_plc",
            "premium_audio_hw",
            "dual_motor",
        ),
        (("fleet", _at(2026, 2, 11)),),
    ),
]

# (VIN, offer code, started_at): live subscriptions; with a trial, billing starts after it.
SUBSCRIPTIONS = [
    ("YV4H60DL4S1012345", "heated_seats_monthly", _at(2026, 8, 3)),
    ("YV4H60DL4S1012345", "adas_plus_bundle", _at(2026, 5, 20)),
    ("JTMAB3BB0SA006117", "adas_highway_assist_monthly", _at(2026, 7, 1)),
    ("SJNFAAZE6RU302586", "heated_seats_monthly", _at(2025, 12, 5)),
    ("W1V3KCFZ2SP675432", "charging_flat_rate_monthly", _at(2025, 10, 1)),
    ("W1V3KCFZ2SP675432", "service_package_basic_yearly", _at(2025, 10, 1)),
    ("VF1RCB00772381904", "connectivity_basic_monthly", _at(2024, 1, 15)),
]
# (VIN, offer code): included with the new car from its delivery.
INCLUDED = [("3FMTK4SX8SMA04821", "premium_connectivity_monthly")]


@dataclass(frozen=True)
class SeedCount:
    label: str
    total: int
    new: int

    def __str__(self) -> str:
        return f"{self.label}: {self.total} ({self.new} new)"


@dataclass
class SeedResult:
    counts: list[SeedCount]
    logins: list[tuple[str, str]]
    admin_created: bool


class _Tally:
    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self.new: Counter[str] = Counter()

    def add(self, label: str, created: bool, n: int = 1) -> None:
        self.total[label] += n
        self.new[label] += n if created else 0

    def counts(self) -> list[SeedCount]:
        return [SeedCount(label, self.total[label], self.new[label]) for label in self.total]


_M = TypeVar("_M", bound=models.Model)


def _upsert(tally: _Tally, label: str, model: type[_M], defaults: dict[str, Any], **keys: Any) -> _M:
    obj, created = model._default_manager.update_or_create(defaults=defaults, **keys)
    tally.add(label, created)
    return obj


def _seed_catalog(tally: _Tally) -> None:
    markets = {
        code: _upsert(
            tally,
            "markets",
            Market,
            {"name": name, "country": code, "currency": currency, "withdrawal_period_days": days},
            code=code,
        )
        for code, name, currency, days in MARKETS
    }
    capabilities = {
        code: _upsert(tally, "capabilities", Capability, {"name": name}, code=code)
        for code, name in CAPABILITIES.items()
    }
    features = {}
    for f in FEATURES:
        feature = _upsert(
            tally,
            "features",
            Feature,
            {
                "name": f.name,
                "category": f.category,
                "min_software_version": f.min_software_version,
                "description": f.description,
            },
            code=f.code,
        )
        feature.required_capabilities.set([capabilities[c] for c in f.capabilities])
        feature.markets.set([markets[m] for m in f.markets])
        features[f.code] = feature
    for o in OFFERS:
        offer = _upsert(
            tally,
            "offers",
            Offer,
            {
                "name": o.name,
                "kind": Offer.Kind.SUBSCRIPTION if o.interval else Offer.Kind.ONE_TIME,
                "interval": o.interval,
                "trial_days": o.trial_days,
                "tier": o.tier,
                "included_months_with_new_car": o.included_months_with_new_car,
                "transfer_policy": o.transfer_policy,
                "is_active": True,
            },
            code=o.code,
        )
        offer.features.set([features[f] for f in o.features])
        versions = [(m, amount, 1, PRICE_V1_VALID_FROM) for m, amount in o.prices.items()]
        versions += [(m, amount, 2, valid_from) for m, amount, valid_from in o.v2_prices]
        for market_code, amount, version, valid_from in versions:
            market = markets[market_code]
            # get_or_create, never update: a price row is immutable once it exists.
            _, created = Price.objects.get_or_create(
                offer=offer,
                market=market,
                version=version,
                defaults={"currency": market.currency, "amount_minor": amount, "valid_from": valid_from},
            )
            tally.add("prices", created)


def _seed_owners(tally: _Tally) -> dict[str, Owner]:
    user_model = get_user_model()
    owners = {}
    for o in OWNERS:
        user, created = user_model.objects.get_or_create(username=o.email, defaults={"email": o.email})
        if created:
            user.set_password(o.password)
            user.save(update_fields=["password"])
        tally.add("users", created)
        owners[o.key] = _upsert(
            tally,
            "owners",
            Owner,
            {
                "kind": o.kind,
                "display_name": o.display_name,
                "email": o.email,
                "billing_country": o.billing_country,
                "currency": o.currency,
                "is_consumer": o.is_consumer,
            },
            user=user,
        )
    return owners


def _seed_tax(tally: _Tally, owners: dict[str, Owner]) -> None:
    for code, kind, rate, valid_from, valid_to in TAX_RATES:
        _upsert(
            tally,
            "tax rates",
            TaxRate,
            {
                "kind": kind,
                "rate": Decimal(rate),
                "valid_to": _at(*valid_to, hour=0) if valid_to else None,
            },
            market=Market.objects.get(code=code),
            category="default",
            valid_from=_at(*valid_from, hour=0),
        )
    _upsert(tally, "tax profiles", CustomerTaxProfile, FLEET_TAX_PROFILE, owner=owners["fleet"])


def _seed_vehicles(tally: _Tally, owners: dict[str, Owner]) -> dict[str, Vehicle]:
    markets = {m.code: m for m in Market.objects.all()}
    capabilities = {c.code: c for c in Capability.objects.all()}
    vehicles = {}
    for v in VEHICLES:
        vehicle = _upsert(
            tally,
            "vehicles",
            Vehicle,
            {
                "brand": v.brand,
                "model": v.model,
                "model_year": v.model_year,
                "market": markets[v.market],
                "software_version": v.software_version,
                "battery_capacity_wh": v.battery_capacity_wh,
                "delivered_at": v.delivered_at,
            },
            vin=v.vin,
        )
        vehicle.capabilities.set([capabilities[c] for c in v.capabilities])
        ends = [start for _, start in v.owners[1:]] + [None]
        for (owner_key, starts_at), ends_at in zip(v.owners, ends, strict=True):
            _, created = Ownership.objects.get_or_create(
                vehicle=vehicle, owner=owners[owner_key], starts_at=starts_at, defaults={"ends_at": ends_at}
            )
            tally.add("ownerships", created)
        vehicles[v.vin] = vehicle
    return vehicles


def _tally_entitlements(tally: _Tally, granted: list[Entitlement], new: int) -> None:
    tally.add("entitlements", False, len(granted) - new)
    tally.add("entitlements", True, new)


def _seed_subscriptions(tally: _Tally, vehicles: dict[str, Vehicle], now: datetime) -> None:
    for vin, offer_code, started_at in SUBSCRIPTIONS:
        vehicle = vehicles[vin]
        owner = Ownership.objects.select_related("owner").get(vehicle=vehicle, ends_at__isnull=True).owner
        offer, price = offer_for_vehicle(vehicle=vehicle, offer_code=offer_code, at=now)
        interval = Interval(offer.interval)
        trial_end = started_at + timedelta(days=offer.trial_days) if offer.trial_days else None
        anchor = trial_end or started_at
        period = period_at(anchor, interval, now)
        subscription = Subscription.objects.filter(
            vehicle=vehicle, offer=offer, status__in=LIVE_SUBSCRIPTION_STATUSES
        ).first()
        created = subscription is None
        if created:
            subscription = Subscription.objects.create(
                owner=owner,
                vehicle=vehicle,
                offer=offer,
                price=price,
                status=SubscriptionStatus.ACTIVE,
                billing_anchor=anchor,
                current_period_start=period.start,
                current_period_end=period.end,
                trial_end=trial_end,
            )
            # created_at is auto_now_add (the seeding time), but these subscriptions began weeks or
            # months ago: withdrawal periods and history count from when they began.
            subscription.created_at = min(started_at, now)
            Subscription.objects.filter(pk=subscription.pk).update(created_at=subscription.created_at)
        assert subscription is not None  # found or created above
        tally.add("subscriptions", created)
        if trial_end:
            for feature in offer.features.all():
                _, used = TrialUsage.objects.get_or_create(
                    vehicle=vehicle,
                    feature=feature,
                    defaults={"subscription": subscription, "started_at": started_at},
                )
                tally.add("trial usages", used)
        before = Entitlement.objects.filter(subscription=subscription).count()
        granted = entitlements_grant_for_subscription_period(
            subscription=subscription,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
        )
        _tally_entitlements(
            tally, granted, Entitlement.objects.filter(subscription=subscription).count() - before
        )
    for vin, offer_code in INCLUDED:
        vehicle = vehicles[vin]
        offer = Offer.objects.get(code=offer_code)
        starts_at = vehicle.delivered_at
        assert starts_at is not None  # the demo's cars with an included offer were delivered
        ends_at = add_interval(starts_at, interval=Interval.MONTH, count=offer.included_months_with_new_car)
        before = Entitlement.objects.filter(vehicle=vehicle, offer=offer).count()
        granted = entitlements_grant_included(
            vehicle=vehicle, offer=offer, starts_at=starts_at, ends_at=ends_at
        )
        _tally_entitlements(
            tally, granted, Entitlement.objects.filter(vehicle=vehicle, offer=offer).count() - before
        )


def _seed_admin() -> bool:
    user_model = get_user_model()
    username, password = DEMO_ADMIN
    if user_model.objects.filter(username=username).exists():
        return False
    user_model.objects.create_superuser(username=username, email=f"{username}@example.com", password=password)
    return True


@transaction.atomic
def demo_data_seed(*, now: datetime | None = None) -> SeedResult:
    """Create (or complete) the demo data set; returns per-kind totals and what was new."""
    now = now or timezone.now()
    tally = _Tally()
    _seed_catalog(tally)
    owners = _seed_owners(tally)
    _seed_tax(tally, owners)
    vehicles = _seed_vehicles(tally, owners)
    _seed_subscriptions(tally, vehicles, now)
    admin_created = _seed_admin()
    logins = [(o.email, o.password) for o in OWNERS]
    return SeedResult(counts=tally.counts(), logins=logins, admin_created=admin_created)
