"""Operator API: test clocks advanced over HTTP by staff; to anyone else the route does not exist."""

import datetime as dt
import uuid

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from billing.models import Invoice, TestClock
from billing.services import clocks
from billing.services.customers import payment_method_add
from billing.services.subscriptions import subscription_start
from tests.billing.api_helpers import catalog_world, owner_client
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]
START = dt.datetime(2027, 1, 31, 9, 30, tzinfo=dt.UTC)


def staff_client() -> APIClient:
    user = UserFactory(is_staff=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


def test_staff_advances_a_test_clock_over_the_api_and_renewals_run(stripe_proxy):
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    clock = clocks.test_clock_for_owner(owner=owner)
    TestClock.objects.filter(pk=clock.pk).update(frozen_time=START)
    subscription = subscription_start(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_monthly",
        payment_method_id=None,
        use_trial=False,
        at=START,
    ).subscription
    url = f"/api/v1/operator/test-clocks/{clock.pk}/advance/"

    response = staff_client().post(url, {"by": "2mo"}, format="json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))

    assert response.status_code == 200, response.json()
    assert (response.json()["renewed"], response.json()["steps"]) == (2, 2)
    assert Invoice.objects.filter(subscription=subscription).count() == 3
    assert owner_client(owner).post(url, {"by": "1d"}, format="json").status_code == 404
    assert APIClient().post(url, {"by": "1d"}, format="json").status_code == 401
    bad = staff_client().post(url, {"by": "soon"}, format="json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
    assert (bad.status_code, bad.json()["code"]) == (400, "validation_error")
