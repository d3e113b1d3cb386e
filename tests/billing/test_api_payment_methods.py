"""Saved payment methods: SetupIntent, add, list, default (exactly one), other owners' methods."""

from __future__ import annotations

import pytest

from billing.models import PaymentMethod
from tests.billing.api_helpers import add_card, localstripe_card, owner_client, post, results
from tests.factories import OwnerFactory

pytestmark = [pytest.mark.django_db, pytest.mark.stripe]

URL = "/api/v1/me/payment-methods/"
MASTERCARD = "5555555555554444"


def test_setup_intent_returns_a_client_secret_and_a_replay_calls_stripe_once(stripe_proxy):
    owner = OwnerFactory()
    client = owner_client(owner)

    first = post(client, f"{URL}setup-intent/", key="setup-1")
    replay = post(client, f"{URL}setup-intent/", key="setup-1")

    body = first.json()
    assert first.status_code == 201, body
    assert body["id"].startswith("seti_")
    assert body["client_secret"]
    assert replay.status_code == 201
    assert replay.json() == body
    assert replay["Idempotent-Replayed"] == "true"
    calls = stripe_proxy.calls(method="POST", path="/v1/setup_intents")
    assert len(calls) == 1
    assert calls[0].idempotency_key == f"setup-{owner.pk}-setup-1"
    assert calls[0].form["customer"] == OwnerFactory._meta.model.objects.get(pk=owner.pk).stripe_customer_id
    assert len(stripe_proxy.calls(method="POST", path="/v1/customers")) == 1


def test_a_new_setup_intent_key_makes_a_new_intent_on_the_same_customer(stripe_proxy):
    client = owner_client(OwnerFactory())

    first = post(client, f"{URL}setup-intent/").json()
    second = post(client, f"{URL}setup-intent/").json()

    assert first["id"] != second["id"]
    assert len(stripe_proxy.calls(method="POST", path="/v1/setup_intents")) == 2
    assert len(stripe_proxy.calls(method="POST", path="/v1/customers")) == 1


def test_the_first_card_is_listed_and_becomes_the_default(stripe_proxy):
    owner = OwnerFactory()
    client = owner_client(owner)

    added = client.post(URL, {"payment_method": "pm_card_visa"}, format="json")

    assert added.status_code == 201, added.json()
    assert added.json()["is_default"] is True
    assert (added.json()["brand"], added.json()["last4"]) == ("visa", "4242")
    listed = results(client.get(URL))
    assert [(m["id"], m["is_default"]) for m in listed] == [(added.json()["id"], True)]
    method = PaymentMethod.objects.get(owner=owner)
    assert method.stripe_payment_method_id.startswith("pm_")
    assert len(stripe_proxy.calls(method="POST", path="/v1/payment_methods/pm_card_visa/attach")) == 1


def test_a_second_card_made_default_leaves_exactly_one_default(stripe_proxy, localstripe_url):
    owner = OwnerFactory()
    client = owner_client(owner)
    visa = add_card(client)
    mastercard = client.post(
        URL,
        {"payment_method": localstripe_card(localstripe_url, MASTERCARD), "make_default": False},
        format="json",
    ).json()
    assert mastercard["is_default"] is False

    response = client.post(f"{URL}{mastercard['id']}/default/")

    assert response.status_code == 200, response.json()
    assert response.json()["is_default"] is True
    assert list(PaymentMethod.objects.filter(owner=owner, is_default=True).values_list("pk", flat=True)) == [
        mastercard["id"]
    ]
    listed = {m["id"]: m["is_default"] for m in results(client.get(URL))}
    assert listed == {visa["id"]: False, mastercard["id"]: True}
    customer = owner.__class__.objects.get(pk=owner.pk).stripe_customer_id
    updates = stripe_proxy.calls(method="POST", path=f"/v1/customers/{customer}")
    stripe_id = PaymentMethod.objects.get(pk=mastercard["id"]).stripe_payment_method_id
    assert updates[-1].form["invoice_settings[default_payment_method]"] == stripe_id


def test_default_on_another_owners_method_is_not_found(stripe_proxy):
    other = add_card(owner_client(OwnerFactory()))
    owner = OwnerFactory()
    client = owner_client(owner)
    mine = add_card(client)

    response = client.post(f"{URL}{other['id']}/default/")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert PaymentMethod.objects.get(pk=other["id"]).is_default is True
    assert PaymentMethod.objects.get(pk=mine["id"]).is_default is True


def test_adding_another_owners_stripe_method_is_not_found(stripe_proxy):
    other_owner = OwnerFactory()
    add_card(owner_client(other_owner))
    taken = PaymentMethod.objects.get(owner=other_owner).stripe_payment_method_id

    response = owner_client(OwnerFactory()).post(URL, {"payment_method": taken}, format="json")

    assert response.status_code == 404
    assert PaymentMethod.objects.get(stripe_payment_method_id=taken).owner == other_owner


def test_a_payment_method_id_that_is_not_a_stripe_id_is_a_validation_error(stripe_proxy):
    owner = OwnerFactory()
    client = owner_client(owner)

    bad = client.post(URL, {"payment_method": "foo"}, format="json")
    missing = client.post(URL, {}, format="json")

    assert (bad.status_code, bad.json()["code"]) == (400, "validation_error")
    assert (missing.status_code, list(missing.json()["details"])) == (400, ["payment_method"])
    assert not PaymentMethod.objects.exists()
    assert not stripe_proxy.calls(method="POST")


def test_default_with_a_non_numeric_id_is_not_found(stripe_proxy):
    client = owner_client(OwnerFactory())

    response = client.post(f"{URL}foo/default/")

    assert response.status_code == 404


def test_the_list_needs_an_owner_login(stripe_proxy):
    from rest_framework.test import APIClient

    assert APIClient().get(URL).status_code == 401
