"""The Stripe gateway against localstripe, through the fault-injecting proxy (R2, R4, R6 at the edge).

localstripe is read directly (bypassing the proxy) to count what really exists there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import urllib.parse
import urllib.request
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from billing.gateways import stripe as gateway
from core.errors import ErrorCode, ValidationError
from core.money import Money

pytestmark = pytest.mark.stripe

PI_PATH = "/v1/payment_intents"


# -- direct access to localstripe ----------------------------------------------------------------
AUTH = {"Authorization": f"Bearer {gateway.LOCALSTRIPE_API_KEY}"}


def ls_get(base: str, path: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(f"{base}{path}", headers=AUTH), timeout=5) as response:
        return json.load(response)


def ls_post(base: str, path: str, form: dict[str, str]) -> dict:
    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers=AUTH)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def ls_payment_intents(base: str) -> list[dict]:
    return ls_get(base, "/v1/payment_intents?limit=100")["data"]


def card_payment_method(base: str, number: str) -> str:
    form = {"type": "card", "card[number]": number, "card[exp_month]": "12", "card[exp_year]": "2030"}
    return ls_post(base, "/v1/payment_methods", {**form, "card[cvc]": "123"})["id"]


# -- setup through the gateway -------------------------------------------------------------------
def new_customer(key: str = "customer-1") -> str:
    return gateway.customer_create(
        email="driver@example.com", name="Dana Driver", metadata={"owner_id": "42"}, idempotency_key=key
    )


def customer_with_card(payment_method_id: str = "pm_card_visa") -> tuple[str, str]:
    customer_id = new_customer()
    method = gateway.payment_method_attach(customer_id=customer_id, payment_method_id=payment_method_id)
    return customer_id, method.id


def charge(customer_id: str, method_id: str, *, key: str = "charge-attempt-1", amount: Money | None = None):
    return gateway.payment_intent_create(
        amount=amount or Money(1234, "EUR"),
        customer_id=customer_id,
        payment_method_id=method_id,
        idempotency_key=key,
        metadata={"attempt_id": key.removeprefix("charge-attempt-")},
    )


# -- the happy path ------------------------------------------------------------------------------
def test_customer_card_default_and_off_session_charge(stripe_proxy, localstripe_url):
    customer_id = new_customer()
    method = gateway.payment_method_attach(customer_id=customer_id, payment_method_id="pm_card_visa")
    gateway.customer_set_default_payment_method(customer_id=customer_id, payment_method_id=method.id)

    result = charge(customer_id, method.id, key="charge-attempt-a1")

    assert customer_id.startswith("cus_")
    assert (method.brand, method.last4, method.exp_month, method.exp_year) == ("visa", "4242", 12, 2030)
    customer = ls_get(localstripe_url, f"/v1/customers/{customer_id}")
    assert customer["invoice_settings"]["default_payment_method"] == method.id
    assert result.status == "succeeded"
    assert result.payment_intent_id.startswith("pi_")
    assert result.amount == Money(1234, "EUR")
    assert result.metadata == {"attempt_id": "a1"}
    assert result.decline_code is None
    [sent] = stripe_proxy.calls(method="POST", path=PI_PATH)
    assert sent.idempotency_key == "charge-attempt-a1"
    assert sent.form["amount"] == "1234"
    assert sent.form["currency"] == "eur"
    assert (sent.form["confirm"], sent.form["off_session"]) == ("true", "true")
    assert sent.form["metadata[attempt_id]"] == "a1"
    assert [pi["status"] for pi in ls_payment_intents(localstripe_url)] == ["succeeded"]


def test_zero_decimal_currency_is_sent_in_whole_units(stripe_proxy):
    customer_id, method_id = customer_with_card()

    result = charge(customer_id, method_id, amount=Money(1200, "JPY"))

    [sent] = stripe_proxy.calls(method="POST", path=PI_PATH)
    assert (sent.form["amount"], sent.form["currency"]) == ("1200", "jpy")
    assert result.status == "succeeded"
    assert result.amount == Money(1200, "JPY")


def test_setup_intent_returns_a_client_secret(stripe_proxy):
    customer_id = new_customer()

    result = gateway.setup_intent_create(customer_id=customer_id, idempotency_key="setup-intent-1")

    assert result.id.startswith("seti_")
    assert result.client_secret.startswith(f"{result.id}_secret_")
    assert result.status == "requires_payment_method"
    [sent] = stripe_proxy.calls(method="POST", path="/v1/setup_intents")
    assert sent.idempotency_key == "setup-intent-1"
    assert (sent.form["customer"], sent.form["usage"]) == (customer_id, "off_session")


def test_partial_refund(stripe_proxy, localstripe_url):
    customer_id, method_id = customer_with_card()
    paid = charge(customer_id, method_id, amount=Money(2000, "EUR"))

    refund = gateway.refund_create(
        payment_intent_id=paid.payment_intent_id,
        amount=Money(500, "EUR"),
        idempotency_key="refund-1",
        metadata={"refund_id": "1"},
    )

    assert refund.id.startswith("re_")
    assert refund.status == "succeeded"
    [stored] = ls_get(localstripe_url, f"/v1/refunds?payment_intent={paid.payment_intent_id}")["data"]
    assert (stored["id"], stored["amount"], stored["metadata"]) == (refund.id, 500, {"refund_id": "1"})
    [sent] = stripe_proxy.calls(method="POST", path="/v1/refunds")
    assert sent.idempotency_key == "refund-1"


# -- declines and 3-D Secure are results, not exceptions -----------------------------------------
def test_declined_charge_is_a_result_with_the_payment_intent(stripe_proxy, localstripe_url):
    customer_id, method_id = customer_with_card("pm_card_chargeCustomerFail")

    result = charge(customer_id, method_id)

    assert result.status == "declined"
    assert result.decline_code == "card_declined"
    assert result.message
    [stored] = ls_payment_intents(localstripe_url)
    assert result.payment_intent_id == stored["id"]
    assert stored["status"] == "requires_payment_method"
    retrieved = gateway.payment_intent_retrieve(payment_intent_id=stored["id"])
    assert (retrieved.status, retrieved.decline_code) == ("declined", "card_declined")


def test_declined_charge_is_replayed_for_the_same_key(stripe_proxy, localstripe_url):
    customer_id, method_id = customer_with_card("pm_card_chargeCustomerFail")
    first = charge(customer_id, method_id)

    again = charge(customer_id, method_id)

    assert again.status == "declined"
    assert again.payment_intent_id == first.payment_intent_id
    assert [c.outcome for c in stripe_proxy.calls(path=PI_PATH)] == ["forwarded", "replayed"]
    assert len(ls_payment_intents(localstripe_url)) == 1


def test_card_refused_on_attach_raises_payment_method_declined(stripe_proxy):
    customer_id = new_customer()

    with pytest.raises(gateway.PaymentMethodDeclined) as caught:
        gateway.payment_method_attach(
            customer_id=customer_id, payment_method_id="pm_card_visa_chargeDeclined"
        )

    assert caught.value.code == ErrorCode.PAYMENT_DECLINED
    assert caught.value.status_code == 402
    assert caught.value.details["decline_code"] == "card_declined"
    assert caught.value.retryable is False


def test_three_d_secure_card_requires_action_then_succeeds(stripe_proxy, localstripe_url):
    customer_id = new_customer()
    method = gateway.payment_method_attach(
        customer_id=customer_id, payment_method_id=card_payment_method(localstripe_url, "4000002760003184")
    )

    result = charge(customer_id, method.id)

    assert result.status == "requires_action"
    assert result.client_secret.startswith(f"{result.payment_intent_id}_secret_")
    # The customer completes 3-D Secure (localstripe's stand-in for Stripe.js).
    ls_post(
        localstripe_url,
        f"/v1/payment_intents/{result.payment_intent_id}/_authenticate",
        {"client_secret": result.client_secret, "success": "true"},
    )
    assert gateway.payment_intent_retrieve(payment_intent_id=result.payment_intent_id).status == "succeeded"


# -- idempotency (R2, R5 at Stripe's edge) ---------------------------------------------------------
def test_same_key_twice_creates_one_payment_intent(stripe_proxy, localstripe_url):
    customer_id, method_id = customer_with_card()

    first = charge(customer_id, method_id, key="charge-attempt-same")
    second = charge(customer_id, method_id, key="charge-attempt-same")

    assert first == second
    calls = stripe_proxy.calls(path=PI_PATH)
    assert [c.outcome for c in calls] == ["forwarded", "replayed"]
    assert {c.idempotency_key for c in calls} == {"charge-attempt-same"}
    assert [pi["id"] for pi in ls_payment_intents(localstripe_url)] == [first.payment_intent_id]


def test_same_key_with_another_amount_is_an_idempotency_conflict(stripe_proxy, localstripe_url):
    customer_id, method_id = customer_with_card()
    charge(customer_id, method_id, key="charge-attempt-x")

    with pytest.raises(gateway.IdempotencyConflict) as caught:
        charge(customer_id, method_id, key="charge-attempt-x", amount=Money(9999, "EUR"))

    assert caught.value.code == ErrorCode.IDEMPOTENCY_KEY_REUSED
    assert caught.value.retryable is False
    assert not gateway.is_retryable(caught.value)
    assert len(ls_payment_intents(localstripe_url)) == 1


def test_a_write_without_an_idempotency_key_is_refused_before_any_call(stripe_proxy):
    customer_id, method_id = customer_with_card()

    with pytest.raises(ValueError, match="idempotency key"):
        charge(customer_id, method_id, key="  ")

    assert stripe_proxy.calls(path=PI_PATH) == []


# -- unknown outcomes (R4) -----------------------------------------------------------------------
def test_injected_500_is_an_unknown_outcome_and_the_same_key_then_charges_once(stripe_proxy, localstripe_url):
    customer_id, method_id = customer_with_card()
    stripe_proxy.inject("status_500", path=PI_PATH)

    with pytest.raises(gateway.UnknownOutcome) as caught:
        charge(customer_id, method_id)

    assert caught.value.code == ErrorCode.PAYMENT_OUTCOME_UNKNOWN
    assert caught.value.status_code == 202
    assert caught.value.retryable is True
    assert ls_payment_intents(localstripe_url) == []
    retried = charge(customer_id, method_id)
    assert retried.status == "succeeded"
    assert len(ls_payment_intents(localstripe_url)) == 1


def test_connection_dropped_after_forward_is_unknown_and_a_retry_replays_the_same_intent(
    stripe_proxy, localstripe_url
):
    customer_id, method_id = customer_with_card()
    stripe_proxy.inject("drop_after_forward", path=PI_PATH)

    with pytest.raises(gateway.UnknownOutcome):
        charge(customer_id, method_id)

    # The charge happened at Stripe although we never heard back.
    [created] = ls_payment_intents(localstripe_url)
    assert created["status"] == "succeeded"
    [dropped] = stripe_proxy.calls(path=PI_PATH)
    assert (dropped.outcome, dropped.reached_upstream, dropped.status) == (
        "fault:drop_after_forward",
        True,
        None,
    )

    retried = charge(customer_id, method_id)

    assert (retried.status, retried.payment_intent_id) == ("succeeded", created["id"])
    calls = stripe_proxy.calls(path=PI_PATH)
    assert [c.outcome for c in calls] == ["fault:drop_after_forward", "replayed"]
    assert {c.idempotency_key for c in calls} == {"charge-attempt-1"}
    assert sum(c.reached_upstream for c in calls) == 1
    assert len(ls_payment_intents(localstripe_url)) == 1


@pytest.mark.parametrize("forward", [False, True], ids=["lost-before-stripe", "executed-at-stripe"])
def test_a_hang_past_the_client_timeout_is_an_unknown_outcome(
    stripe_proxy, localstripe_url, settings, forward
):
    settings.STRIPE_TIMEOUT_SECONDS = 1
    customer_id, method_id = customer_with_card()
    stripe_proxy.inject("hang", path=PI_PATH, hang_seconds=30, forward=forward)

    started = time.monotonic()
    with pytest.raises(gateway.UnknownOutcome) as caught:
        charge(customer_id, method_id)

    assert time.monotonic() - started < 10
    assert caught.value.retryable is True
    assert len(ls_payment_intents(localstripe_url)) == (1 if forward else 0)
    retried = charge(customer_id, method_id)
    assert retried.status == "succeeded"
    [intent] = ls_payment_intents(localstripe_url)
    assert retried.payment_intent_id == intent["id"]


def test_sdk_network_retries_resend_the_same_key_and_charge_once(stripe_proxy, localstripe_url, settings):
    settings.STRIPE_MAX_NETWORK_RETRIES = 2
    customer_id, method_id = customer_with_card()
    stripe_proxy.inject("drop_after_forward", path=PI_PATH)

    result = charge(customer_id, method_id, key="charge-attempt-r2")

    assert result.status == "succeeded"
    calls = stripe_proxy.calls(path=PI_PATH)
    assert len(calls) >= 2
    assert {c.idempotency_key for c in calls} == {"charge-attempt-r2"}
    assert [pi["id"] for pi in ls_payment_intents(localstripe_url)] == [result.payment_intent_id]


def test_a_failed_read_is_provider_unavailable_not_unknown(stripe_proxy):
    customer_id, method_id = customer_with_card()
    paid = charge(customer_id, method_id)
    stripe_proxy.inject("status_500", method="GET", path=f"{PI_PATH}/{paid.payment_intent_id}")

    with pytest.raises(gateway.PaymentProviderUnavailable) as caught:
        gateway.payment_intent_retrieve(payment_intent_id=paid.payment_intent_id)

    assert not isinstance(caught.value, gateway.UnknownOutcome)
    assert caught.value.status_code == 503
    assert caught.value.retryable is True


def test_an_unknown_payment_intent_is_an_invalid_request(stripe_proxy):
    with pytest.raises(gateway.InvalidRequest) as caught:
        gateway.payment_intent_retrieve(payment_intent_id="pi_doesnotexist")

    assert caught.value.details["stripe_status"] == 404
    assert caught.value.retryable is False


# -- rate limits (R6, R7) ------------------------------------------------------------------------
@pytest.mark.parametrize(("should_retry", "retryable"), [(None, True), (True, True), (False, False)])
def test_429_is_rate_limited(stripe_proxy, localstripe_url, should_retry, retryable):
    customer_id, method_id = customer_with_card()
    stripe_proxy.inject("status_429", path=PI_PATH, should_retry=should_retry)

    with pytest.raises(gateway.RateLimited) as caught:
        charge(customer_id, method_id)

    assert caught.value.code == ErrorCode.PAYMENT_PROVIDER_UNAVAILABLE
    assert caught.value.details["stripe_status"] == 429
    assert gateway.is_retryable(caught.value) is retryable
    assert ls_payment_intents(localstripe_url) == []


def test_rate_budget_answers_429_above_the_limit(stripe_proxy):
    stripe_proxy.set_rate_limit(2)
    new_customer("c-1")
    new_customer("c-2")

    with pytest.raises(gateway.RateLimited):
        new_customer("c-3")

    assert [c.outcome for c in stripe_proxy.calls()] == ["forwarded", "forwarded", "rate_limited"]


def test_three_decimal_amount_not_ending_in_zero_is_refused_before_any_call(stripe_proxy):
    customer_id, method_id = customer_with_card()

    with pytest.raises(ValidationError) as caught:
        charge(customer_id, method_id, amount=Money(1235, "BHD"))

    assert caught.value.code == ErrorCode.INVALID_AMOUNT
    assert stripe_proxy.calls(path=PI_PATH) == []
    charge(customer_id, method_id, key="charge-attempt-bhd", amount=Money(1230, "BHD"))
    [sent] = stripe_proxy.calls(path=PI_PATH)
    assert (sent.form["amount"], sent.form["currency"]) == ("1230", "bhd")


def test_settings_changes_take_effect_and_an_unreachable_stripe_is_never_a_failure(stripe_proxy, settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        settings.STRIPE_API_BASE = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there

        # A write: we cannot tell whether it left (the SDK may have retried), so it is unknown.
        with pytest.raises(gateway.UnknownOutcome):
            new_customer()
        # A read: nothing can have happened.
        with pytest.raises(gateway.PaymentProviderUnavailable) as caught:
            gateway.payment_intent_retrieve(payment_intent_id="pi_1")

    assert not isinstance(caught.value, gateway.UnknownOutcome)
    assert stripe_proxy.calls() == []


# -- reconciliation look-up (R4, after 24 h) -------------------------------------------------------
def test_find_by_metadata_finds_the_payment_intent_of_an_attempt(stripe_proxy):
    customer_id, method_id = customer_with_card()
    before = timezone.now()
    wanted = charge(customer_id, method_id, key="charge-attempt-wanted")
    charge(customer_id, method_id, key="charge-attempt-other")

    found = gateway.payment_intent_find_by_metadata(key="attempt_id", value="wanted", created_after=before)

    assert found == wanted
    assert (
        gateway.payment_intent_find_by_metadata(key="attempt_id", value="absent", created_after=before)
        is None
    )
    later = timezone.now() + timedelta(hours=1)
    assert (
        gateway.payment_intent_find_by_metadata(key="attempt_id", value="wanted", created_after=later) is None
    )
    assert stripe_proxy.calls(method="POST", path=PI_PATH)[-1].idempotency_key == "charge-attempt-other"


def test_find_by_metadata_refuses_naive_datetimes_and_odd_keys(stripe_proxy):
    with pytest.raises(ValueError, match="timezone-aware"):
        gateway.payment_intent_find_by_metadata(
            key="attempt_id", value="x", created_after=timezone.now().replace(tzinfo=None)
        )
    with pytest.raises(ValueError, match="metadata key"):
        gateway.payment_intent_find_by_metadata(key="a'] OR x:'", value="x", created_after=timezone.now())


# -- webhook signatures (the SDK's verifier, behind the gateway) ---------------------------------
WEBHOOK_SECRET = "whsec_test_gateway"
EVENT = json.dumps(
    {"id": "evt_1", "object": "event", "type": "payment_intent.succeeded", "data": {}}
).encode()


def signed(payload: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    timestamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def test_webhook_with_a_valid_signature_returns_the_event():
    event = gateway.webhook_event_verify(payload=EVENT, signature_header=signed(EVENT), secret=WEBHOOK_SECRET)

    assert (event["id"], event["type"]) == ("evt_1", "payment_intent.succeeded")


@pytest.mark.parametrize(
    ("payload", "header"),
    [
        (EVENT.replace(b"evt_1", b"evt_2"), signed(EVENT)),  # body changed after signing
        (EVENT, signed(EVENT, secret="whsec_other")),
        (EVENT, signed(EVENT, at=int(time.time()) - 3600)),  # replayed an hour later
        (EVENT, None),
        (EVENT, "t=1,v1=garbage"),
        (b'{"object": "list"}', signed(b'{"object": "list"}')),  # signed, but not an event
    ],
    ids=["body-changed", "wrong-secret", "too-old", "no-header", "garbage", "not-an-event"],
)
def test_webhook_that_does_not_verify_is_refused(payload, header):
    with pytest.raises(gateway.WebhookSignatureInvalid) as caught:
        gateway.webhook_event_verify(payload=payload, signature_header=header, secret=WEBHOOK_SECRET)

    assert caught.value.status_code == 400


def test_webhook_verification_refuses_an_empty_secret():
    forged = signed(EVENT, secret="")

    with pytest.raises(ImproperlyConfigured):
        gateway.webhook_event_verify(payload=EVENT, signature_header=forged, secret="")
