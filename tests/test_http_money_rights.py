"""The edge paths where money and rights disagreed, over real HTTP against a running server
(pytest-django's live server, a threaded WSGI server on a loopback port), as an app would call it."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from django.utils import timezone
from rest_framework_simplejwt.tokens import RefreshToken

from billing.models import InvoiceKind, PaymentAttempt, Subscription
from billing.services.customers import payment_method_add
from billing.services.subscriptions import subscription_start
from tests.billing.api_helpers import CARD_3DS, catalog_world, heated_seats_plan, localstripe_card
from tests.concurrency import run_concurrently
from tests.factories import FeatureFactory, OfferFactory, PriceFactory

pytestmark = [pytest.mark.stripe, pytest.mark.django_db(transaction=True)]
PI = "/v1/payment_intents"


class Http:
    """A tiny JSON client over real sockets."""

    def __init__(self, base: str, owner) -> None:
        self.base = f"{base}/api/v1"
        self.token = str(RefreshToken.for_user(owner.user).access_token)

    def post(self, path: str, body: dict | None = None, *, key: str | None = None) -> tuple[int, dict]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Idempotency-Key": key or str(uuid.uuid4()),
        }
        request = urllib.request.Request(
            f"{self.base}{path}", data=json.dumps(body or {}).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")


def _localstripe(base: str, path: str, form: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}{path}",
        data=urllib.parse.urlencode(form).encode() if form is not None else None,
        headers={"Authorization": "Bearer sk_test_localstripe"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _pi_creates(stripe_proxy) -> int:
    return len([c for c in stripe_proxy.calls(method="POST", path=PI) if c.reached_upstream])


def test_upgrade_into_a_live_plan_answers_4xx_before_any_payment_intent(live_server, stripe_proxy):
    owner, vehicle = catalog_world()
    wheel, seats = FeatureFactory(code="heated_wheel"), FeatureFactory(code="heated_seats")
    bundle = OfferFactory(code="winter_bundle_monthly", subscription=True, features=[seats, wheel])
    PriceFactory(offer=bundle, market=vehicle.market, amount_minor=1_499)
    heated_seats_plan(vehicle, amount_minor=2_900, trial_days=14)
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    http = Http(live_server.url, owner)
    trial = http.post(
        f"/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": "heated_seats_premium_monthly", "trial": True}
    )
    paid = http.post(f"/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": "winter_bundle_monthly"})
    assert (trial[0], paid[0]) == (201, 201), (trial, paid)
    before = _pi_creates(stripe_proxy)

    status, body = http.post(
        f"/me/subscriptions/{paid[1]['subscription']['id']}/change/",
        {"offer": "heated_seats_premium_monthly"},
    )

    assert 400 <= status < 500, body
    assert body["code"] == "already_subscribed"
    assert _pi_creates(stripe_proxy) == before  # Stripe never heard of it


def test_late_3ds_after_cancel_cannot_charge(live_server, stripe_proxy, localstripe_url):
    owner, vehicle = catalog_world()
    payment_method_add(
        owner=owner, stripe_payment_method_id=localstripe_card(localstripe_url, CARD_3DS), make_default=True
    )
    http = Http(live_server.url, owner)
    status, started = http.post(
        f"/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": "heated_seats_monthly", "trial": False}
    )
    assert (status, started["status"]) == (202, "requires_action"), started
    attempt = PaymentAttempt.objects.get()

    status, canceled = http.post(f"/me/subscriptions/{started['subscription']['id']}/cancel/")

    assert status == 200, canceled
    with pytest.raises(urllib.error.HTTPError):
        _localstripe(
            localstripe_url,
            f"/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
            {"success": "true", "client_secret": started["payment"]["client_secret"]},
        )
    intent = _localstripe(localstripe_url, f"/v1/payment_intents/{attempt.stripe_payment_intent_id}")
    assert intent["status"] == "canceled"
    assert Subscription.objects.get().status == "canceled"


def test_ten_concurrent_upgrades_with_distinct_keys_make_one_charge(live_server, stripe_proxy):
    owner, vehicle = catalog_world()
    heated_seats_plan(vehicle, amount_minor=1_999)
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    subscription = subscription_start(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_monthly",
        payment_method_id=None,
        use_trial=False,
        at=timezone.now(),
    ).subscription
    http = Http(live_server.url, owner)
    before = _pi_creates(stripe_proxy)

    answers = run_concurrently(
        lambda _i: http.post(
            f"/me/subscriptions/{subscription.pk}/change/", {"offer": "heated_seats_premium_monthly"}
        ),
        threads=10,
    )

    statuses = sorted(status for status, _ in answers)
    assert [s for s in statuses if s < 300] == [200] or [s for s in statuses if s < 300] == [201], answers
    assert all(s in (200, 201, 409, 422) for s in statuses), answers
    assert _pi_creates(stripe_proxy) == before + 1
    assert subscription.invoices.filter(kind=InvoiceKind.PLAN_CHANGE).count() == 1
