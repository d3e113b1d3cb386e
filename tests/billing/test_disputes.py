"""Disputes: a case opens and suspends what the disputed payment paid for; won restores it, lost
keeps it revoked and books the amount; any order of events ends in one state; a dispute that is
not provably about one of our payments is refused. localstripe has no disputes: the events are
signed here, as Stripe would sign them; the disputed PaymentIntents are real localstripe ones."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import (
    Dispute,
    DisputeStatus,
    Entitlement,
    Offer,
    PaymentAttempt,
    StripeEvent,
    StripeEventStatus,
)
from billing.services.webhooks import stripe_events_process_pending
from tests.billing.api_helpers import (
    add_card,
    buy,
    catalog_world,
    owner_client,
    subscribe_paid,
    vehicle_feature_codes,
)
from tests.billing.test_webhooks_stripe import SECRET, deliver, event_body, sign

pytestmark = [pytest.mark.stripe, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET


@pytest.fixture
def paid_unlock(stripe_proxy):
    """A heated-seats unlock paid at localstripe: (vehicle, its payment)."""
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    buy(client, vehicle)
    return vehicle, PaymentAttempt.objects.get()


def dispute(
    attempt: PaymentAttempt, *, status: str = "needs_response", dispute_id: str = "dp_1Test", **overrides
) -> dict:
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": attempt.amount_minor,
        "currency": attempt.currency.lower(),
        "charge": "ch_1Test",
        "payment_intent": attempt.stripe_payment_intent_id,
        "reason": "fraudulent",
        "status": status,
        **overrides,
    }


def send(event_type: str, obj: dict) -> StripeEvent:
    """Deliver one signed event and process the inbox; returns its row."""
    body = event_body(event_type, obj)
    assert deliver(body, sign(body)).status_code == 200
    stripe_events_process_pending(older_than=dt.timedelta(0))
    return StripeEvent.objects.order_by("-received_at").first()


def seats(vehicle) -> Entitlement:
    return Entitlement.objects.get(vehicle=vehicle, feature__code="heated_seats")


def test_a_dispute_opened_suspends_the_payments_entitlements_and_opens_a_case(paid_unlock):
    vehicle, attempt = paid_unlock
    assert "heated_seats" in vehicle_feature_codes(vehicle)

    row = send("charge.dispute.created", dispute(attempt))

    assert row.status == StripeEventStatus.PROCESSED, row.outcome
    case = Dispute.objects.get()
    assert (case.status, case.stripe_status, case.reason, case.policy) == (
        DisputeStatus.OPEN,
        "needs_response",
        "fraudulent",
        "suspend",
    )
    assert (case.payment_attempt, case.amount_minor, case.currency) == (attempt, 19_900, "EUR")
    suspension = case.suspensions.get()
    assert suspension.entitlement == seats(vehicle)
    assert suspension.original_ends_at is None  # a perpetual unlock
    assert seats(vehicle).ends_at <= timezone.now()
    assert "heated_seats" not in vehicle_feature_codes(vehicle)


def test_a_won_dispute_restores_the_original_ends(paid_unlock):
    vehicle, attempt = paid_unlock
    send("charge.dispute.created", dispute(attempt))
    send("charge.dispute.updated", dispute(attempt, status="under_review"))

    row = send("charge.dispute.closed", dispute(attempt, status="won"))

    assert row.status == StripeEventStatus.PROCESSED, row.outcome
    case = Dispute.objects.get()
    assert (case.status, case.stripe_status, case.lost_minor) == (DisputeStatus.WON, "won", 0)
    assert case.closed_at is not None
    assert seats(vehicle).ends_at is None
    assert case.suspensions.get().restored_at is not None
    assert "heated_seats" in vehicle_feature_codes(vehicle)


def test_a_lost_dispute_keeps_the_features_revoked_and_books_the_amount_as_lost(paid_unlock):
    vehicle, attempt = paid_unlock
    send("charge.dispute.created", dispute(attempt, amount=5_000))

    send("charge.dispute.closed", dispute(attempt, amount=5_000, status="lost"))

    case = Dispute.objects.get()
    assert (case.status, case.lost_minor, case.currency) == (DisputeStatus.LOST, 5_000, "EUR")
    assert seats(vehicle).ends_at is not None
    assert case.suspensions.get().restored_at is None
    assert "heated_seats" not in vehicle_feature_codes(vehicle)


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_closed_before_created_ends_in_the_same_state_and_never_reopens(paid_unlock, outcome):
    vehicle, attempt = paid_unlock

    closed = send("charge.dispute.closed", dispute(attempt, status=outcome))
    late_created = send("charge.dispute.created", dispute(attempt))
    stale_update = send("charge.dispute.updated", dispute(attempt, status="under_review"))

    assert {closed.status, late_created.status, stale_update.status} == {StripeEventStatus.PROCESSED}
    case = Dispute.objects.get()
    assert (case.status, case.stripe_status) == (outcome, outcome)  # the stale events changed nothing
    assert case.lost_minor == (attempt.amount_minor if outcome == "lost" else 0)
    assert (seats(vehicle).ends_at is None) is (outcome == "won")
    assert ("heated_seats" in vehicle_feature_codes(vehicle)) is (outcome == "won")


@pytest.mark.parametrize(
    "order",
    [
        [*order, outcome]
        for outcome in ("won", "lost")
        for order in itertools.permutations(["needs_response", "under_review", outcome])
    ],
    ids=lambda order: ">".join(order),
)
def test_any_order_of_a_disputes_events_ends_in_the_state_of_its_outcome(paid_unlock, order):
    """R10 for disputes: whatever order created/updated/closed come in (and a repeat of the last)."""
    vehicle, attempt = paid_unlock
    types = {"needs_response": "created", "under_review": "updated"}

    for status in order:
        send(f"charge.dispute.{types.get(status, 'closed')}", dispute(attempt, status=status))

    outcome = order[-1]
    case = Dispute.objects.get()
    assert (case.status, case.stripe_status) == (outcome, outcome)
    assert case.lost_minor == (attempt.amount_minor if outcome == "lost" else 0)
    assert (seats(vehicle).ends_at is None) is (outcome == "won")


def test_a_closed_dispute_never_reopens_nor_changes_its_outcome(paid_unlock):
    vehicle, attempt = paid_unlock
    send("charge.dispute.created", dispute(attempt))
    send("charge.dispute.closed", dispute(attempt, status="lost"))
    ended_at = seats(vehicle).ends_at

    send("charge.dispute.closed", dispute(attempt, status="won"))
    send("charge.dispute.created", dispute(attempt))

    case = Dispute.objects.get()
    assert case.status == DisputeStatus.LOST
    assert seats(vehicle).ends_at == ended_at


@pytest.mark.parametrize(
    "overrides",
    [
        {"payment_intent": "pi_someone_elses_payment"},
        {"payment_intent": None},
        {"currency": "usd"},
        {"amount": 19_901},
        {"amount": 0},
        {"id": "not_a_dispute"},
    ],
    ids=[
        "unknown-payment-intent",
        "no-payment-intent",
        "other-currency",
        "above-the-payment",
        "zero",
        "bad-id",
    ],
)
def test_a_dispute_that_is_not_about_one_of_our_payments_is_refused_and_changes_nothing(
    paid_unlock, overrides
):
    vehicle, attempt = paid_unlock

    row = send("charge.dispute.created", dispute(attempt, **overrides))

    assert row.status == StripeEventStatus.REFUSED, row.outcome
    assert not Dispute.objects.exists()
    assert seats(vehicle).ends_at is None


def test_a_dispute_naming_our_payment_intent_for_another_payment_is_refused(paid_unlock, stripe_proxy):
    """The PaymentIntent id is ours but Stripe's copy belongs to another attempt: refused."""
    _vehicle, attempt = paid_unlock
    other = PaymentAttempt.objects.create(
        invoice=attempt.invoice,
        owner=attempt.owner,
        amount_minor=attempt.amount_minor,
        currency=attempt.currency,
        status="declined",
        stripe_payment_intent_id="pi_forged",
    )
    row = send("charge.dispute.created", dispute(other, payment_intent=attempt.stripe_payment_intent_id))
    assert row.status == StripeEventStatus.PROCESSED  # the PaymentIntent is really `attempt`'s

    forged = send("charge.dispute.created", dispute(other, dispute_id="dp_2Test", payment_intent="pi_forged"))
    assert forged.status == StripeEventStatus.REFUSED, forged.outcome
    assert Dispute.objects.count() == 1


def test_an_offer_whose_policy_is_keep_opens_the_case_without_suspending(paid_unlock):
    vehicle, attempt = paid_unlock
    Offer.objects.filter(code="heated_seats_unlock").update(dispute_policy=Offer.DisputePolicy.KEEP)

    send("charge.dispute.created", dispute(attempt))

    case = Dispute.objects.get()
    assert (case.status, case.policy) == (DisputeStatus.OPEN, "keep")
    assert not case.suspensions.exists()
    assert seats(vehicle).ends_at is None


def test_a_disputed_subscription_period_is_suspended_then_restored_to_its_period_end(stripe_proxy):
    owner, vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    subscribe_paid(client, vehicle)
    attempt = PaymentAttempt.objects.get()
    period_end = seats(vehicle).ends_at

    send("charge.dispute.created", dispute(attempt))
    assert seats(vehicle).ends_at <= timezone.now()
    send("charge.dispute.closed", dispute(attempt, status="won"))

    assert seats(vehicle).ends_at == period_end


def test_the_disputes_admin_lists_cases_with_filters_and_links_to_the_payment(paid_unlock, admin_client):
    _vehicle, attempt = paid_unlock
    send("charge.dispute.created", dispute(attempt))
    case = Dispute.objects.get()

    changelist = admin_client.get(reverse("admin:billing_dispute_changelist"), {"status": "open"})
    page = admin_client.get(reverse("admin:billing_dispute_change", args=[case.pk]))

    assert changelist.status_code == 200 and page.status_code == 200
    content = changelist.content.decode()
    assert "dp_1Test" in content and "EUR 199.00" in content
    assert reverse("admin:billing_paymentattempt_change", args=[attempt.pk]) in content
    assert (
        admin_client.get(reverse("admin:billing_dispute_changelist"), {"status": "won"})
        .context["cl"]
        .result_count
        == 0
    )
    assert "Entitlements suspended" in page.content.decode()
