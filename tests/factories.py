"""factory_boy factories for every model."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from billing import models as billing
from vehicles import models as vehicles

VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
_vin_counter = itertools.count(1)


def make_vin() -> str:
    serial = next(_vin_counter)
    rng = random.Random(serial)
    return "".join(rng.choice(VIN_ALPHABET) for _ in range(11)) + f"{serial:06d}"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}@example.com")
    email = factory.SelfAttribute("username")
    password = factory.django.Password("pw-for-tests-1")


class MarketFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = vehicles.Market
        django_get_or_create = ("code",)

    code = "DE"
    name = "Germany"
    country = "DE"
    currency = "EUR"
    withdrawal_period_days = 14


class CapabilityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = vehicles.Capability
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"capability_{n}")
    name = factory.LazyAttribute(lambda o: o.code.replace("_", " ").title())


class OwnerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = vehicles.Owner

    kind = vehicles.Owner.Kind.PERSON
    display_name = factory.Faker("name")
    email = factory.Sequence(lambda n: f"owner{n}@example.com")
    user = factory.SubFactory(UserFactory, username=factory.SelfAttribute("..email"))
    billing_country = "DE"
    currency = "EUR"


class VehicleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = vehicles.Vehicle
        skip_postgeneration_save = True

    vin = factory.LazyFunction(make_vin)
    brand = "Volta"
    model = "E5"
    model_year = 2025
    market = factory.SubFactory(MarketFactory)
    software_version = "2026.40.1"
    battery_capacity_wh = 82_000
    delivered_at = factory.LazyFunction(lambda: timezone.now() - dt.timedelta(days=30))

    @factory.post_generation
    def capabilities(self, create, extracted, **kwargs):
        if create and extracted:
            self.capabilities.add(*extracted)

    @factory.post_generation
    def owner(self, create, extracted, **kwargs):
        """`VehicleFactory(owner=some_owner)` also records the current ownership."""
        if create and extracted:
            OwnershipFactory(vehicle=self, owner=extracted)


class OwnershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = vehicles.Ownership

    vehicle = factory.SubFactory(VehicleFactory)
    owner = factory.SubFactory(OwnerFactory)
    starts_at = factory.LazyFunction(lambda: timezone.now() - dt.timedelta(days=30))
    ends_at = None


class FeatureFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = billing.Feature
        skip_postgeneration_save = True
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"feature_{n}")
    name = factory.LazyAttribute(lambda o: o.code.replace("_", " ").title())
    category = billing.Feature.Category.COMFORT

    @factory.post_generation
    def required_capabilities(self, create, extracted, **kwargs):
        if create and extracted:
            self.required_capabilities.add(*extracted)

    @factory.post_generation
    def markets(self, create, extracted, **kwargs):
        if create and extracted:
            self.markets.add(*extracted)


class OfferFactory(factory.django.DjangoModelFactory):
    """A one-time unlock by default; `OfferFactory(subscription=True)` for a monthly plan."""

    class Meta:
        model = billing.Offer
        skip_postgeneration_save = True
        django_get_or_create = ("code",)

    class Params:
        subscription = factory.Trait(kind=billing.Offer.Kind.SUBSCRIPTION, interval="month")

    code = factory.Sequence(lambda n: f"offer_{n}")
    name = factory.LazyAttribute(lambda o: o.code.replace("_", " ").title())
    kind = billing.Offer.Kind.ONE_TIME
    interval = ""

    @factory.post_generation
    def features(self, create, extracted, **kwargs):
        if create:
            self.features.add(*(extracted or [FeatureFactory()]))


class PriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = billing.Price

    offer = factory.SubFactory(OfferFactory)
    market = factory.SubFactory(MarketFactory)
    currency = factory.SelfAttribute("market.currency")
    amount_minor = 999
    version = 1
    valid_from = factory.LazyFunction(lambda: timezone.now() - dt.timedelta(days=365))
