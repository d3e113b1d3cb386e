"""A large synthetic fleet for the entitlement benchmark, inserted in bulk.

Every vehicle gets an owner, a current `Ownership` and 2-5 features, each entitled by a paid
`Purchase`, an active `Subscription` (current period, sometimes the previous one too) or an
admin grant: the rows the entitlement check constraint asks for exist, and the database enforces
every constraint while we insert. Batches commit one by one, so an interrupted seed resumes
where it stopped; a seeded fleet is detected by counting its vehicles (VINs `BNCH...`).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from billing.models import (
    Entitlement,
    EntitlementSource,
    Feature,
    Offer,
    Price,
    Purchase,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
)
from vehicles.models import Market, Owner, Ownership, Vehicle, VehicleCredential
from vehicles.services.credentials import vehicle_credential_issue

VIN_PREFIX = "BNCH"
BATCH_SIZE = 5_000
FEATURE_CODES = (
    "heated_seats",
    "premium_connectivity",
    "adaptive_cruise",
    "acceleration_boost",
    "navigation_plus",
    "remote_parking",
    "ambient_lighting",
    "battery_preconditioning",
)
# Source of each entitled feature: purchase / subscription / grant, weighted.
_SOURCES = (EntitlementSource.PURCHASE, EntitlementSource.SUBSCRIPTION, EntitlementSource.GRANT)
_SOURCE_WEIGHTS = (4, 4, 2)

Progress = Callable[[str], None]


def bench_vin(index: int) -> str:
    """The VIN of the `index`-th benchmark vehicle (17 characters, matches the VIN check)."""
    return f"{VIN_PREFIX}{index:013d}"


@dataclass(frozen=True)
class Catalog:
    market: Market
    features: list[Feature]
    unlocks: dict[int, tuple[Offer, Price]]  # feature id -> one-time offer and its price
    monthlies: dict[int, tuple[Offer, Price]]  # feature id -> monthly offer and its price
    granted_by: object


@dataclass
class SeedReport:
    vehicles_created: int = 0
    entitlements_created: int = 0
    total_vehicles: int = 0
    clients: list[str] = field(default_factory=list)  # "Vehicle <key_id>.<secret>" header values


def catalog_ensure(*, now: dt.datetime) -> Catalog:
    """The benchmark's market, features, offers, prices and granting admin (created once)."""
    market, _ = Market.objects.get_or_create(
        code="DE",
        defaults={"name": "Germany", "country": "DE", "currency": "EUR", "withdrawal_period_days": 14},
    )
    user_model = get_user_model()
    admin, created = user_model.objects.get_or_create(
        username="bench-admin@example.com", defaults={"email": "bench-admin@example.com", "is_staff": True}
    )
    if created:
        admin.set_unusable_password()
        admin.save(update_fields=["password"])
    features, unlocks, monthlies = [], {}, {}
    valid_from = now - dt.timedelta(days=3650)
    for code in FEATURE_CODES:
        feature, _ = Feature.objects.get_or_create(
            code=code, defaults={"name": code.replace("_", " ").title(), "category": Feature.Category.COMFORT}
        )
        features.append(feature)
        for kind, suffix, amount, target in (
            (Offer.Kind.ONE_TIME, "unlock", 19_900, unlocks),
            (Offer.Kind.SUBSCRIPTION, "monthly", 999, monthlies),
        ):
            offer, created = Offer.objects.get_or_create(
                code=f"{code}_{suffix}",
                defaults={
                    "name": f"{feature.name} ({suffix})",
                    "kind": kind,
                    "interval": "month" if kind == Offer.Kind.SUBSCRIPTION else "",
                },
            )
            if created:
                offer.features.add(feature)
            price, _ = Price.objects.get_or_create(
                offer=offer,
                market=market,
                version=1,
                defaults={"currency": market.currency, "amount_minor": amount, "valid_from": valid_from},
            )
            target[feature.pk] = (offer, price)
    return Catalog(market=market, features=features, unlocks=unlocks, monthlies=monthlies, granted_by=admin)


def _seed_batch(*, start: int, stop: int, catalog: Catalog, now: dt.datetime) -> int:
    """Insert vehicles `[start, stop)` with everything they need; returns entitlements created."""
    vehicles, owners = [], []
    for index in range(start, stop):
        rng = random.Random(index)
        vehicles.append(
            Vehicle(
                id=uuid.UUID(int=rng.getrandbits(128), version=4),
                vin=bench_vin(index),
                brand="Volta",
                model=rng.choice(("E3", "E5", "E7")),
                model_year=rng.choice((2024, 2025, 2026)),
                market=catalog.market,
                software_version="2026.40.1",
                battery_capacity_wh=rng.choice((60_000, 82_000, 100_000)),
                delivered_at=now - dt.timedelta(days=rng.randint(60, 900)),
            )
        )
        owners.append(
            Owner(
                display_name=f"Bench owner {index}",
                email=f"owner{index}@bench.example.com",
                billing_country="DE",
                currency="EUR",
            )
        )
    Vehicle.objects.bulk_create(vehicles, batch_size=BATCH_SIZE)
    Owner.objects.bulk_create(owners, batch_size=BATCH_SIZE)  # PostgreSQL sets the pks
    ownerships, purchases, subscriptions, entitlements = [], [], [], []
    for index, vehicle, owner in zip(range(start, stop), vehicles, owners, strict=True):
        rng = random.Random(-index - 1)
        ownerships.append(Ownership(vehicle=vehicle, owner=owner, starts_at=vehicle.delivered_at))
        for feature in rng.sample(catalog.features, rng.randint(2, 5)):
            source = rng.choices(_SOURCES, _SOURCE_WEIGHTS)[0]
            if source == EntitlementSource.PURCHASE:
                offer, price = catalog.unlocks[feature.pk]
                paid_at = now - dt.timedelta(days=rng.randint(1, 50))
                purchase = Purchase(
                    id=uuid.uuid4(),
                    owner=owner,
                    vehicle=vehicle,
                    offer=offer,
                    price=price,
                    status=PurchaseStatus.PAID,
                    paid_at=paid_at,
                )
                purchases.append(purchase)
                entitlements.append(
                    Entitlement(
                        vehicle=vehicle, feature=feature, source=source, purchase=purchase, starts_at=paid_at
                    )
                )
            elif source == EntitlementSource.SUBSCRIPTION:
                offer, price = catalog.monthlies[feature.pk]
                period_end = now + dt.timedelta(days=rng.randint(3, 28), minutes=rng.randint(0, 1439))
                period_start = period_end - dt.timedelta(days=30)
                subscription = Subscription(
                    id=uuid.uuid4(),
                    owner=owner,
                    vehicle=vehicle,
                    offer=offer,
                    price=price,
                    status=SubscriptionStatus.ACTIVE,
                    billing_anchor=period_start,
                    current_period_start=period_start,
                    current_period_end=period_end,
                )
                subscriptions.append(subscription)
                periods = [(period_start, period_end)]
                if rng.random() < 0.5:  # renewed once already: the expired period stays in the table
                    periods.append((period_start - dt.timedelta(days=30), period_start))
                entitlements.extend(
                    Entitlement(
                        vehicle=vehicle,
                        feature=feature,
                        source=source,
                        subscription=subscription,
                        starts_at=starts_at,
                        ends_at=ends_at,
                    )
                    for starts_at, ends_at in periods
                )
            else:
                entitlements.append(
                    Entitlement(
                        vehicle=vehicle,
                        feature=feature,
                        source=source,
                        granted_by=catalog.granted_by,
                        reason="benchmark goodwill grant",
                        starts_at=now - dt.timedelta(days=rng.randint(1, 100)),
                        ends_at=None if rng.random() < 0.5 else now + dt.timedelta(days=rng.randint(30, 365)),
                    )
                )
    Ownership.objects.bulk_create(ownerships, batch_size=BATCH_SIZE)
    Purchase.objects.bulk_create(purchases, batch_size=BATCH_SIZE)
    Subscription.objects.bulk_create(subscriptions, batch_size=BATCH_SIZE)
    Entitlement.objects.bulk_create(entitlements, batch_size=BATCH_SIZE)
    return len(entitlements)


def bench_vehicle_count() -> int:
    return Vehicle.objects.filter(vin__startswith=VIN_PREFIX).count()


def fleet_seed(
    *, vehicles: int, batch_size: int = BATCH_SIZE, progress: Progress | None = None
) -> SeedReport:
    """Ensure `vehicles` benchmark vehicles exist (idempotent, resumable, one transaction a batch)."""
    say = progress or (lambda _message: None)
    now = timezone.now()
    report = SeedReport()
    existing = bench_vehicle_count()
    if existing >= vehicles:
        say(f"fleet already seeded: {existing:,} vehicles")
        report.total_vehicles = existing
        return report
    catalog = catalog_ensure(now=now)
    say(f"seeding vehicles {existing:,}..{vehicles:,} in batches of {batch_size:,}")
    for start in range(existing, vehicles, batch_size):
        stop = min(start + batch_size, vehicles)
        with transaction.atomic():
            report.entitlements_created += _seed_batch(start=start, stop=stop, catalog=catalog, now=now)
        report.vehicles_created += stop - start
        say(f"  {stop:,}/{vehicles:,} vehicles, {report.entitlements_created:,} entitlements")
    report.total_vehicles = bench_vehicle_count()
    return report


def client_credentials_issue(*, clients: int, vehicles: int, progress: Progress | None = None) -> list[str]:
    """Issue (rotate) a credential for `clients` vehicles spread over the fleet; returns the
    `Authorization` header values. Secrets exist only in memory, so every run issues afresh."""
    say = progress or (lambda _message: None)
    step = max(1, vehicles // max(1, clients))
    vins = [bench_vin(i) for i in range(0, vehicles, step)][:clients]
    chosen = list(Vehicle.objects.filter(vin__in=vins).order_by("vin"))
    headers = []
    key_ids = []
    for number, vehicle in enumerate(chosen, 1):
        issued = vehicle_credential_issue(vehicle=vehicle)
        headers.append(issued.authorization)
        key_ids.append(issued.key_id)
        if number % 250 == 0 or number == len(chosen):
            say(f"  credentials {number:,}/{len(chosen):,}")
    # Steady state of polling cars: each credential was used within the last minute, so requests
    # write `last_used_at` at most once a minute per car (a fresh credential's first use writes).
    VehicleCredential.objects.filter(key_id__in=key_ids).update(last_used_at=timezone.now())
    return headers
