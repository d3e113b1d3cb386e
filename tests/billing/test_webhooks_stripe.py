"""Stripe webhooks in: the signature matrix (refused requests leave no row), the raw body, one
effect per event however often it comes, order independence, untrusted data refused, and a
3-D Secure payment granted through the webhook alone (localstripe's real delivery)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
import urllib.request
import uuid

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import (
    AttemptStatus,
    Entitlement,
    PaymentAttempt,
    PaymentMethod,
    RefundStatus,
    StripeEvent,
)
from billing.services.webhooks import (
    stripe_event_process,
    stripe_event_process_isolated,
    stripe_events_process_pending,
)
from tests.billing.api_helpers import CARD_3DS, add_card, catalog_world, localstripe_card, owner_client, post
from tests.concurrency import run_concurrently

pytestmark = [pytest.mark.stripe]
SECRET = "whsec_test_inbound"
URL = "/webhooks/stripe/"


@pytest.fixture(autouse=True)
def _secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = f"{SECRET},whsec_next_in_rotation"


def sign(payload: bytes, *, secret: str = SECRET, at: int | None = None, scheme: str = "v1") -> str:
    timestamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},{scheme}={digest}"


def event_body(
    event_type: str = "customer.created", obj: dict | None = None, event_id: str | None = None
) -> bytes:
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex[:20]}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj or {"id": "cus_x", "object": "customer"}},
    }
    return json.dumps(event, indent=2).encode()


def deliver(body: bytes, header: str | None):
    extra = {"HTTP_STRIPE_SIGNATURE": header} if header is not None else {}
    return Client().post(URL, data=body, content_type="application/json", **extra)


BODY = event_body()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "header", "status"),
    [
        (BODY, lambda: sign(BODY), 200),
        (BODY[:-2] + b"x}", lambda: sign(BODY), 400),  # one byte changed after signing
        (BODY, lambda: sign(BODY, secret="whsec_wrong"), 400),
        (BODY, lambda: None, 400),
        (BODY, lambda: "garbage", 400),
        (BODY, lambda: sign(BODY, scheme="v0"), 400),  # no v1
        (BODY, lambda: sign(BODY, at=int(time.time()) - 301), 400),
        (BODY, lambda: sign(BODY, at=int(time.time()) + 301), 400),  # stripe-python would accept it
        (BODY, lambda: sign(BODY, secret="whsec_wrong") + "," + sign(BODY).split(",")[1], 200),  # 2 v1
        (BODY, lambda: sign(BODY, secret="whsec_next_in_rotation"), 200),  # the next secret of a rotation
    ],
    ids=[
        "valid",
        "one-byte-changed",
        "wrong-secret",
        "missing-header",
        "garbled-header",
        "no-v1",
        "301-s-old",
        "301-s-in-the-future",
        "two-v1-one-valid",
        "rotated-secret",
    ],
)
def test_signature_matrix_refused_requests_leave_zero_rows(body, header, status):
    response = deliver(body, header())

    assert response.status_code == status, response.content
    assert StripeEvent.objects.count() == (1 if status == 200 else 0)
    if status == 400:
        assert response.json()["code"] == "signature_invalid"


@pytest.mark.django_db
def test_the_signature_is_checked_over_the_raw_body_not_a_reserialisation():
    reserialised = json.dumps(json.loads(BODY)).encode()  # same JSON, other bytes
    assert reserialised != BODY

    assert deliver(reserialised, sign(BODY)).status_code == 400
    assert StripeEvent.objects.count() == 0


@pytest.mark.django_db
def test_an_unhandled_type_is_acknowledged_and_ignored():
    body = event_body("radar.early_fraud_warning.created")

    assert deliver(body, sign(body)).status_code == 200
    row = stripe_event_process(event_pk=StripeEvent.objects.get().pk)

    assert row.status == "ignored"


def _three_ds_purchase(localstripe_url):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client, localstripe_card(localstripe_url, CARD_3DS))
    response = post(client, f"/api/v1/me/vehicles/{vehicle.pk}/purchases/", {"offer": "heated_seats_unlock"})
    assert response.json()["status"] == "requires_action", response.json()
    owner.refresh_from_db()  # its Stripe customer was created by the checkout
    return owner, vehicle, PaymentAttempt.objects.get()


def _authenticate(localstripe_url: str, attempt: PaymentAttempt) -> None:
    request = urllib.request.Request(
        f"{localstripe_url}/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
        data=urllib.parse.urlencode({"success": "true", "client_secret": attempt.client_secret}).encode(),
        headers={"Authorization": "Bearer sk_test_localstripe"},
    )
    urllib.request.urlopen(request, timeout=5).close()


def _pi_event(attempt: PaymentAttempt, owner, *, event_id: str | None = None, **overrides) -> bytes:
    obj = {
        "id": attempt.stripe_payment_intent_id,
        "object": "payment_intent",
        "amount": attempt.amount_minor,
        "currency": attempt.currency.lower(),
        "customer": owner.stripe_customer_id,
        "metadata": {"payment_attempt_id": str(attempt.pk)},
        "status": "succeeded",
        **overrides,
    }
    return event_body("payment_intent.succeeded", obj, event_id=event_id)


@pytest.mark.django_db(transaction=True)
def test_the_same_event_1_5_and_20_times_concurrently_has_one_effect(stripe_proxy, localstripe_url):
    owner, vehicle, attempt = _three_ds_purchase(localstripe_url)
    _authenticate(localstripe_url, attempt)
    body = _pi_event(attempt, owner, event_id="evt_once")
    header = sign(body)

    first = deliver(body, header)
    sequential = [deliver(body, header) for _ in range(5)]
    concurrent = run_concurrently(lambda _i: deliver(body, header).status_code, threads=20)
    processed = run_concurrently(
        lambda _i: stripe_event_process(event_pk=StripeEvent.objects.get().pk).status, threads=5
    )

    assert first.json()["duplicate"] is False
    assert all(r.json()["duplicate"] for r in sequential)
    assert concurrent == [200] * 20
    assert StripeEvent.objects.count() == 1
    assert "processed" in processed  # the others skipped the locked row (or found it done)
    assert StripeEvent.objects.get().status == "processed"
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.SUCCEEDED
    assert Entitlement.objects.filter(vehicle=vehicle, feature__code="heated_seats").count() == 1


@pytest.mark.django_db
def test_events_in_any_order_end_in_the_state_stripe_holds(stripe_proxy, localstripe_url):
    """A stale `payment_failed` after the success changes nothing: the object is re-read from Stripe."""
    owner, vehicle, attempt = _three_ds_purchase(localstripe_url)
    _authenticate(localstripe_url, attempt)
    stream = [
        ("payment_intent.requires_action", "requires_action"),
        ("payment_intent.succeeded", "succeeded"),
        ("payment_intent.payment_failed", "requires_payment_method"),
    ]
    for order in itertools.permutations(stream):
        for event_type, status in order:
            body = _pi_event(attempt, owner, status=status)
            body = body.replace(b'"payment_intent.succeeded"', json.dumps(event_type).encode())
            deliver(body, sign(body))
        stripe_events_process_pending(older_than=__import__("datetime").timedelta(0))
        attempt.refresh_from_db()
        assert attempt.status == AttemptStatus.SUCCEEDED, order
    assert Entitlement.objects.filter(vehicle=vehicle).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides",
    [{"livemode": True}, {"customer": "cus_someone_else"}, {"amount": 1}, {"currency": "usd"}],
    ids=["livemode", "customer", "amount", "currency"],
)
def test_an_event_that_does_not_match_our_records_is_refused_and_changes_nothing(
    stripe_proxy, localstripe_url, overrides
):
    owner, vehicle, attempt = _three_ds_purchase(localstripe_url)
    _authenticate(localstripe_url, attempt)
    livemode = overrides.pop("livemode", False)
    body = _pi_event(attempt, owner, **overrides)
    if livemode:
        body = body.replace(b'"livemode": false', b'"livemode": true')
    deliver(body, sign(body))

    row = stripe_event_process(event_pk=StripeEvent.objects.get().pk)

    assert row.status == "refused", row.outcome
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.REQUIRES_ACTION
    assert not Entitlement.objects.filter(vehicle=vehicle).exists()


@pytest.mark.django_db(transaction=True)
def test_a_3ds_payment_completed_at_stripe_grants_the_feature_through_the_webhook_alone(
    stripe_proxy, localstripe_url, live_server, settings
):
    _owner, vehicle, attempt = _three_ds_purchase(localstripe_url)
    hook_id = f"test_{uuid.uuid4().hex[:8]}"
    register = urllib.request.Request(
        f"{localstripe_url}/_config/webhooks/{hook_id}",
        data=urllib.parse.urlencode({"url": f"{live_server.url}{URL}", "secret": SECRET}).encode(),
    )
    urllib.request.urlopen(register, timeout=5).close()
    try:
        _authenticate(localstripe_url, attempt)  # the customer passes 3-D Secure; the app is closed
        deadline = time.monotonic() + 20
        ours = StripeEvent.objects.filter(  # (earlier tests' events may arrive too: not ours)
            type="payment_intent.succeeded", object_id=attempt.stripe_payment_intent_id
        )
        while not ours.exists():
            assert time.monotonic() < deadline, "localstripe delivered no webhook"
            time.sleep(0.2)
        # what the processing task does (a worker woken by the delivery may hold the row a moment)
        row = ours.get()
        while True:
            stripe_event_process_isolated(event_pk=row.pk)  # an error is recorded and retried later
            attempt.refresh_from_db()
            if attempt.status == AttemptStatus.SUCCEEDED:
                break
            row.refresh_from_db()
            assert time.monotonic() < deadline, (row.status, row.outcome, row.reconcile_error)
            time.sleep(0.2)
    finally:  # silence the registration for the next tests
        silence = urllib.request.Request(
            f"{localstripe_url}/_config/webhooks/{hook_id}",
            data=urllib.parse.urlencode(
                {"url": "http://127.0.0.1:9/", "secret": SECRET, "events[]": "none"}
            ).encode(),
        )
        urllib.request.urlopen(silence, timeout=5).close()

    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.SUCCEEDED
    assert Entitlement.objects.filter(vehicle=vehicle, feature__code="heated_seats").exists()
    assert StripeEvent.objects.get(object_id=attempt.stripe_payment_intent_id).status == "processed"


@pytest.mark.django_db
def test_payment_method_events_follow_what_stripe_holds_now(stripe_proxy, localstripe_url):
    owner, _vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)  # creates the Stripe customer
    owner.refresh_from_db()
    pm = localstripe_card(localstripe_url, "4242424242424242")
    attach = urllib.request.Request(
        f"{localstripe_url}/v1/payment_methods/{pm}/attach",
        data=urllib.parse.urlencode({"customer": owner.stripe_customer_id}).encode(),
        headers={"Authorization": "Bearer sk_test_localstripe"},
    )
    urllib.request.urlopen(attach, timeout=5).close()
    detached_first = event_body("payment_method.detached", {"id": pm, "object": "payment_method"})
    attached = event_body("payment_method.attached", {"id": pm, "object": "payment_method"})

    for body in (detached_first, attached):  # out of order: the stale detach must not win
        deliver(body, sign(body))
    stripe_events_process_pending(older_than=__import__("datetime").timedelta(0))

    assert PaymentMethod.objects.filter(owner=owner, stripe_payment_method_id=pm).exists()


@pytest.mark.django_db
def test_a_refund_settled_by_webhook_gets_its_credit_note(stripe_proxy):
    from billing.gateways import stripe as gateway
    from billing.models import CreditNote
    from billing.services.customers import payment_method_add
    from billing.services.purchases import purchase_create
    from billing.services.refunds import refund_prepare
    from core.money import Money

    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    attempt = purchase_create(
        owner=owner,
        vehicle=vehicle,
        offer_code="heated_seats_unlock",
        payment_method_id=None,
        at=timezone.now(),
    ).attempt
    refund = refund_prepare(payment_attempt=attempt, amount_minor=2_000, reason="goodwill")
    at_stripe = gateway.refund_create(  # Stripe refunded; our process died before recording it
        payment_intent_id=attempt.stripe_payment_intent_id,
        amount=Money(2_000, "EUR"),
        idempotency_key=refund.idempotency_key,
        metadata={"refund_id": str(refund.pk)},
    )
    body = event_body(
        "refund.updated", {"id": at_stripe.id, "object": "refund", "metadata": {"refund_id": str(refund.pk)}}
    )

    deliver(body, sign(body))
    row = stripe_event_process(event_pk=StripeEvent.objects.get().pk)

    refund.refresh_from_db()
    assert (row.status, refund.status, refund.stripe_refund_id) == (
        "processed",
        RefundStatus.SUCCEEDED,
        at_stripe.id,
    )
    assert CreditNote.objects.filter(refund=refund).count() == 1
