"""Edge cases of checkout: free plans, a plan change awaiting 3-D Secure, a refused refund."""

import datetime as dt

import pytest
import time_machine

from billing.models import Entitlement, PaymentAttempt, Purchase, Refund, Subscription
from billing.services.renewals import subscriptions_renew_due
from tests.billing.api_helpers import (
    CARD_3DS,
    add_card,
    catalog_world,
    localstripe_card,
    owner_client,
    post,
)
from tests.factories import OfferFactory, PriceFactory

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]
PI_CREATE = "/v1/payment_intents"


def test_a_free_plan_starts_and_renews_without_calling_stripe(stripe_proxy):
    owner, vehicle = catalog_world()
    plan = OfferFactory(code="basic_connectivity_free", subscription=True)
    PriceFactory(offer=plan, market=vehicle.market, amount_minor=0)
    client = owner_client(owner)
    add_card(client)

    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/", {"offer": plan.code})

    assert response.status_code == 201, response.json()
    assert response.json()["subscription"]["status"] == "active"
    subscription = Subscription.objects.get(offer=plan)
    with time_machine.travel(subscription.current_period_end + dt.timedelta(minutes=1), tick=False):
        report = subscriptions_renew_due(at=subscription.current_period_end + dt.timedelta(minutes=1))
    assert report.renewed == 1
    assert subscription.invoices.filter(status="paid").count() == 2
    assert Entitlement.objects.filter(subscription=subscription).count() == 2
    assert not stripe_proxy.calls(method="POST", path=PI_CREATE)


def test_a_second_upgrade_waits_for_the_first_one_awaiting_3ds(stripe_proxy, localstripe_url):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    started = post(
        client,
        f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/",
        {"offer": "heated_seats_monthly", "trial": False},
    )
    subscription_id = started.json()["subscription"]["id"]
    premium = OfferFactory(
        code="heated_seats_premium_monthly",
        subscription=True,
        features=list(Subscription.objects.get().offer.features.all()),
    )
    PriceFactory(offer=premium, market=vehicle.market, amount_minor=2_999)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))

    first = post(client, f"/api/v1/me/subscriptions/{subscription_id}/change/", {"offer": premium.code})
    second = post(client, f"/api/v1/me/subscriptions/{subscription_id}/change/", {"offer": premium.code})

    assert first.status_code == 202 and first.json()["status"] == "requires_action", first.json()
    assert second.status_code == 409, second.json()
    assert PaymentAttempt.objects.filter(invoice__kind="plan_change").count() == 1


def test_a_refused_refund_keeps_the_purchase_and_its_feature(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    bought = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})
    purchase_id = bought.json()["purchase"]["id"]
    PaymentAttempt.objects.update(stripe_payment_intent_id="pi_unknown_to_stripe")  # Stripe answers 404

    response = post(client, f"/api/v1/me/purchases/{purchase_id}/withdraw/")

    assert response.status_code == 502, response.json()
    assert response.json()["code"] == "payment_provider_error"
    assert Purchase.objects.get(pk=purchase_id).status == "paid"
    assert Refund.objects.get().status == "failed"
    assert Entitlement.objects.filter(purchase_id=purchase_id, ends_at__isnull=True).exists()


def test_an_abandoned_3ds_checkout_does_not_block_buying_again(stripe_proxy, localstripe_url):
    from billing.gateways import stripe as gateway

    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))
    url = f"/api/v1/me/vehicles/{vehicle.pk}/purchases/"
    abandoned = post(client, url, {"offer": "heated_seats_unlock"})
    assert abandoned.json()["status"] == "requires_action"  # ...and the customer walks away
    add_card(client)  # a card without 3-D Secure

    again = post(client, url, {"offer": "heated_seats_unlock"})

    assert again.status_code == 201, again.json()
    assert again.json()["status"] == "succeeded"
    first = Purchase.objects.get(pk=abandoned.json()["purchase"]["id"])
    assert first.status == "failed"
    old_attempt = PaymentAttempt.objects.get(invoice__purchase=first)
    assert old_attempt.error_code == "authentication_abandoned"
    stripe_side = gateway.payment_intent_retrieve(payment_intent_id=old_attempt.stripe_payment_intent_id)
    assert stripe_side.status == "declined"  # canceled at Stripe: a late authentication cannot charge
    assert Entitlement.objects.filter(vehicle=vehicle, purchase__status="paid").count() == 1


def test_an_abandoned_3ds_subscription_start_does_not_block_subscribing(stripe_proxy, localstripe_url):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))
    url = f"/api/v1/me/vehicles/{vehicle.pk}/subscriptions/"
    first = post(client, url, {"offer": "heated_seats_monthly", "trial": False})
    assert first.json()["status"] == "requires_action"
    add_card(client)

    again = post(client, url, {"offer": "heated_seats_monthly", "trial": False})

    assert again.status_code == 201, again.json()
    assert again.json()["subscription"]["status"] == "active"
    assert Subscription.objects.get(pk=first.json()["subscription"]["id"]).status == "canceled"
