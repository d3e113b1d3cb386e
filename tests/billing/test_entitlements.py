"""Entitlement grants and the "which features may this vehicle use at instant t" selector."""

import datetime as dt

import pytest
from django.db import IntegrityError, transaction

from billing.models import Entitlement, EntitlementSource, Purchase, Subscription, SubscriptionStatus
from billing.selectors import features_active_at
from billing.services.entitlements import (
    entitlement_grant_admin,
    entitlements_end,
    entitlements_grant_for_purchase,
    entitlements_grant_for_subscription_period,
    entitlements_grant_included,
)
from core.errors import ValidationError
from tests.factories import (
    FeatureFactory,
    OfferFactory,
    OwnerFactory,
    PriceFactory,
    UserFactory,
    VehicleFactory,
)

pytestmark = pytest.mark.django_db
UTC = dt.UTC
JAN_31 = dt.datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
FEB_28 = dt.datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
MAR_31 = dt.datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


def make_subscription(vehicle, offer, start=JAN_31, end=FEB_28):
    owner = OwnerFactory()
    price = PriceFactory(offer=offer, market=vehicle.market)
    return Subscription.objects.create(
        owner=owner,
        vehicle=vehicle,
        offer=offer,
        price=price,
        status=SubscriptionStatus.ACTIVE,
        billing_anchor=start,
        current_period_start=start,
        current_period_end=end,
    )


def codes(vehicle, at):
    return {f.code: f for f in features_active_at(vehicle_id=vehicle.id, at=at)}


def test_subscription_period_is_half_open_at_its_boundaries():
    vehicle = VehicleFactory()
    offer = OfferFactory(subscription=True, features=[FeatureFactory(code="heated_seats")])
    subscription = make_subscription(vehicle, offer)
    entitlements_grant_for_subscription_period(
        subscription=subscription, period_start=JAN_31, period_end=FEB_28
    )

    assert "heated_seats" not in codes(vehicle, JAN_31 - dt.timedelta(microseconds=1))
    assert codes(vehicle, JAN_31)["heated_seats"].valid_until == FEB_28
    assert "heated_seats" in codes(vehicle, FEB_28 - dt.timedelta(microseconds=1))
    assert "heated_seats" not in codes(vehicle, FEB_28)


def test_renewed_period_extends_validity_without_a_gap():
    vehicle = VehicleFactory()
    offer = OfferFactory(subscription=True, features=[FeatureFactory(code="adas_highway_assist")])
    subscription = make_subscription(vehicle, offer)
    entitlements_grant_for_subscription_period(
        subscription=subscription, period_start=JAN_31, period_end=FEB_28
    )
    entitlements_grant_for_subscription_period(
        subscription=subscription, period_start=FEB_28, period_end=MAR_31
    )

    assert codes(vehicle, JAN_31)["adas_highway_assist"].valid_until == MAR_31
    assert codes(vehicle, FEB_28)["adas_highway_assist"].valid_until == MAR_31
    assert "adas_highway_assist" not in codes(vehicle, MAR_31)


def test_granting_the_same_period_twice_creates_one_row():
    vehicle = VehicleFactory()
    offer = OfferFactory(subscription=True, features=[FeatureFactory(), FeatureFactory()])
    subscription = make_subscription(vehicle, offer)

    for _ in range(3):
        entitlements_grant_for_subscription_period(
            subscription=subscription, period_start=JAN_31, period_end=FEB_28
        )

    assert Entitlement.objects.filter(subscription=subscription).count() == 2


def test_purchase_is_perpetual_and_other_vehicles_see_nothing():
    vehicle, other = VehicleFactory(), VehicleFactory()
    offer = OfferFactory(features=[FeatureFactory(code="acceleration_boost")])
    price = PriceFactory(offer=offer, market=vehicle.market)
    purchase = Purchase.objects.create(
        owner=OwnerFactory(), vehicle=vehicle, offer=offer, price=price, status="paid"
    )
    entitlements_grant_for_purchase(purchase=purchase, starts_at=JAN_31)
    entitlements_grant_for_purchase(purchase=purchase, starts_at=JAN_31)

    far_future = dt.datetime(2090, 1, 1, tzinfo=UTC)
    assert codes(vehicle, far_future)["acceleration_boost"].valid_until is None
    assert codes(vehicle, far_future)["acceleration_boost"].sources == ("purchase",)
    assert codes(other, far_future) == {}
    assert Entitlement.objects.filter(purchase=purchase).count() == 1


def test_included_offer_and_admin_grant_are_sources():
    vehicle = VehicleFactory()
    connectivity = FeatureFactory(code="premium_connectivity")
    offer = OfferFactory(subscription=True, features=[connectivity])
    three_years = JAN_31.replace(year=2029)
    entitlements_grant_included(vehicle=vehicle, offer=offer, starts_at=JAN_31, ends_at=three_years)
    admin = UserFactory(is_staff=True)
    grant_start = three_years + dt.timedelta(days=30)  # after a gap
    entitlement_grant_admin(
        vehicle=vehicle,
        feature=connectivity,
        granted_by=admin,
        starts_at=grant_start,
        ends_at=None,
        reason="goodwill after a service visit",
    )

    assert codes(vehicle, JAN_31)["premium_connectivity"].valid_until == three_years
    assert "premium_connectivity" not in codes(vehicle, three_years)
    assert codes(vehicle, grant_start)["premium_connectivity"].sources == ("grant",)
    assert codes(vehicle, grant_start)["premium_connectivity"].valid_until is None


def test_admin_grant_needs_a_reason_and_a_non_empty_period():
    vehicle, feature, admin = VehicleFactory(), FeatureFactory(), UserFactory(is_staff=True)

    with pytest.raises(ValidationError):
        entitlement_grant_admin(
            vehicle=vehicle, feature=feature, granted_by=admin, starts_at=FEB_28, ends_at=None, reason="  "
        )
    with pytest.raises(ValidationError):
        entitlement_grant_admin(
            vehicle=vehicle, feature=feature, granted_by=admin, starts_at=FEB_28, ends_at=FEB_28, reason="x"
        )
    assert not Entitlement.objects.exists()


def test_ending_a_subscription_cuts_current_and_ends_future_rows_at_their_start():
    vehicle = VehicleFactory()
    offer = OfferFactory(subscription=True, features=[FeatureFactory(code="streaming")])
    subscription = make_subscription(vehicle, offer)
    entitlements_grant_for_subscription_period(
        subscription=subscription, period_start=JAN_31, period_end=FEB_28
    )
    entitlements_grant_for_subscription_period(
        subscription=subscription, period_start=FEB_28, period_end=MAR_31
    )
    cut_at = JAN_31 + dt.timedelta(days=3)

    entitlements_end(subscription=subscription, at=cut_at)

    assert codes(vehicle, cut_at - dt.timedelta(seconds=1))["streaming"].valid_until == cut_at
    assert "streaming" not in codes(vehicle, cut_at)
    # The future period is ended, never deleted (the audit history keeps it): [start, start)
    rows = Entitlement.objects.filter(subscription=subscription).order_by("starts_at")
    assert [(r.starts_at, r.ends_at) for r in rows] == [(JAN_31, cut_at), (FEB_28, FEB_28)]
    assert "streaming" not in codes(vehicle, FEB_28)  # an empty period covers no instant, not even its start
    assert "streaming" not in codes(vehicle, FEB_28 + dt.timedelta(seconds=1))


@pytest.mark.parametrize(
    "fields",
    [
        {"source": EntitlementSource.PURCHASE},  # a purchase entitlement without its purchase
        {"source": EntitlementSource.GRANT},  # a grant without who granted it
        {"source": EntitlementSource.GRANT, "ends_at": JAN_31 - dt.timedelta(seconds=1)},  # negative period
    ],
)
def test_database_refuses_inconsistent_entitlements(fields):
    vehicle, feature = VehicleFactory(), FeatureFactory()
    values = {"vehicle": vehicle, "feature": feature, "starts_at": JAN_31, **fields}
    if fields.get("ends_at"):
        values["granted_by"] = UserFactory()

    with pytest.raises(IntegrityError), transaction.atomic():
        Entitlement.objects.create(**values)


def test_selector_uses_one_query_whatever_the_number_of_rows(django_assert_num_queries):
    vehicle = VehicleFactory()
    admin = UserFactory(is_staff=True)
    for _ in range(25):
        entitlement_grant_admin(
            vehicle=vehicle,
            feature=FeatureFactory(),
            granted_by=admin,
            starts_at=JAN_31,
            ends_at=None,
            reason="bulk",
        )

    with django_assert_num_queries(1):
        assert len(features_active_at(vehicle_id=vehicle.id, at=FEB_28)) == 25
