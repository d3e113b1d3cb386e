"""Money and rights always agree: a model-based test over the services (issue 7, deliverable 2).

A Hypothesis `RuleBasedStateMachine` drives the billing services (billing/services/*, the way the
owner API, the admin and the scheduled jobs call them) against localstripe behind our fault proxy,
with two owners (a consumer with the EU withdrawal right, a fleet without) and three cars.

Rules: add a card (good, declined at charge, refused when saved, 3-D Secure); buy a one-time
unlock; subscribe (trial when eligible, trial or refuse, pay now); upgrade; downgrade; cancel;
resume; withdraw; start a transfer and claim it (resale); the customer completes or fails 3-D
Secure at Stripe, with or without the app confirming; the next Stripe call (or the next POST)
fails: 500, 429, a hang past the client timeout, a hang or a dropped connection after Stripe
executed it; the reconcilers run (five minutes later, as scheduled); the renewal sweep; the dunning
sweep; the owner pays an open invoice; time passes (a minute to two months); an operator's goodwill
refund; an operator's comp grant. A 4xx `BillingError` is an allowed outcome of a rule; a gateway
error only when an injected fault was consumed by that call; anything else fails.

Invariants after every step (they only observe; a settling step inside an invariant would hide
exactly the bugs where money waits for a job that never comes):
- ledger: per charge and per refund, localstripe and our rows agree (no Stripe charge or refund
  without a local row, none recorded as declined/canceled/failed, no local success without its
  Stripe object of the same amount, no attempt charged twice), and per owner Stripe's captured and
  refunded sums equal ours, minus what is legitimately still settling. "Still settling" is allowed
  only until the reconciler was due: after a reconciler run that started with no fault pending,
  the strict form holds;
- rights: every feature a car may use now (`features_active_at`, what the vehicle API serves) is
  backed by a paid, trial, grace, included or granted period of its current owner, or by a paid
  purchase whose policy stays with the car; and conversely every paid unrefunded, trial or
  in-grace current period of a live subscription grants its features (a feature is on iff such a
  period covers now); no live subscription belongs to a previous owner;
- progress (after a fault-free reconciler run): no attempt or refund the reconciler was due to
  settle is left pending/unknown, no 3-D Secure attempt whose PaymentIntent moved on (or whose
  cancel window passed) is left waiting, no row failed in the reconciler.

Time: one model clock. Every service gets `at=self.now`, and `time_machine` freezes
`timezone.now()` at the same instant, because several services read the clock themselves
(`payment_attempt_record`'s `paid_at`, the reconcilers' cutoffs and 23 h key window, `auto_now`
fields such as `created_at` that the withdrawal deadline of a subscription counts from). The clock
starts years before the real one and never passes it, so localstripe's real `created` timestamps
are never "in the future" of our rows (the reconciler's metadata look-up filters on them). Each
step takes one second of model time.

Budget: 25 examples x up to 40 steps in `make test` (about a minute); `HYPOTHESIS_PROFILE=long`
runs 500 examples. `MODEL_EXAMPLES`/`MODEL_STEPS` override both, `MODEL_VERBOSE=1` prints every
step, `pytest -s` prints how often each service answered what.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter, defaultdict

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db.models import Q
from hypothesis import HealthCheck, Phase, Verbosity, event, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from billing.gateways import stripe as gateway
from billing.models import (
    AttemptStatus,
    Entitlement,
    EntitlementSource,
    Feature,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    Offer,
    PaymentAttempt,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
    Subscription,
    SubscriptionStatus,
    TrialUsage,
)
from billing.selectors import features_active_at
from billing.services import payments as payments_service
from billing.services.customers import payment_method_add
from billing.services.dunning import dunning_sweep
from billing.services.entitlements import entitlement_grant_admin
from billing.services.invoice_payments import invoice_pay
from billing.services.payments import payment_attempt_refresh, payment_attempts_reconcile
from billing.services.purchases import purchase_create, purchase_withdraw
from billing.services.refunds import refund_in_full_or_raise, refunds_reconcile
from billing.services.renewals import subscriptions_renew_due
from billing.services.subscriptions import (
    subscription_cancel,
    subscription_change_apply,
    subscription_resume,
    subscription_start,
)
from billing.services.transfers import transfer_claim, transfer_start
from core.errors import BillingError
from tests.billing.model_helpers import (
    CARD_3DS,
    FEATURES,
    OFFER_FEATURES,
    ONE_TIME_OFFERS,
    PLANS,
    PRICE,
    database_clear,
    localstripe_authenticate,
    localstripe_card,
    localstripe_list,
    localstripe_request,
    stripe_ledger,
    world_create,
)
from vehicles.models import Owner, Ownership, Vehicle
from vehicles.selectors import vehicle_of_owner

pytestmark = [pytest.mark.stripe]

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
MAX_EXAMPLES = int(os.environ.get("MODEL_EXAMPLES") or (500 if PROFILE == "long" else 25))
STEPS = int(os.environ.get("MODEL_STEPS") or 40)

START = dt.datetime(2022, 1, 31, 9, 0, tzinfo=dt.UTC)  # a month end: Jan 31 -> Feb 28 -> Mar 31
# The model clock never passes the real one (see the module docstring).
LATEST = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
STEP_TAKES = dt.timedelta(seconds=1)
RECONCILER_EVERY = dt.timedelta(minutes=5)  # billing.tasks.reconcile_payments' schedule
# The reconciler's own timings (billing/services/payments.py), read from there so the checks
# follow its configuration: unknown rows older than this are due; `requires_action` rows are
# looked up at Stripe after the check interval and canceled there after the cancel window.
RECONCILE_OLDER_THAN = dt.timedelta(minutes=2)


def _requires_action_check_after() -> dt.timedelta:
    return getattr(payments_service, "_requires_action_check_after", lambda: dt.timedelta(minutes=15))()


# The client timeout is short only while a hang is pending, so a hang costs half a second and
# a slow but healthy localstripe never times out by accident.
STRIPE_TIMEOUT_SECONDS = 5
HANG_TIMEOUT_SECONDS = 0.4
HANG_SECONDS = 0.6  # past the short client timeout
# Defects the machine finds that are still open: their check notes them instead of failing, so
# the machine can look for others meanwhile. Remove an entry once its fix is in.
TOLERATED: dict[str, str] = {
    # Open defects the machine met, noted here until fixed (none today). Fixed after this test
    # found them, each with a regression test in tests/billing/test_money_rights_holes.py:
    # "orphan_plan_change_invoice" (an upgrade of a subscription due for renewal left an open
    # plan-change invoice of 0 that blocked every later change) and "stuck_after_key_window"
    # (an attempt that never reached Stripe, first reconciled after the 23 h key window, was
    # never settled).
}

CARDS = {
    "good": "pm_card_visa",
    "declines_at_charge": "pm_card_chargeCustomerFail",  # 4000000000000341: attaches, then declines
    "declines_at_attach": "pm_card_visa_chargeDeclined",  # 4000000000000002: refused when attached
    "three_d_secure": None,  # 4000002760003184, made from raw card details like the app's SDK
}
FAULTS = ("status_500", "drop_after_forward", "hang", "hang_after_forward", "status_429")
ADVANCES = (
    dt.timedelta(minutes=1),
    dt.timedelta(minutes=10),
    dt.timedelta(hours=1),
    dt.timedelta(days=1),
    dt.timedelta(days=3),
    dt.timedelta(days=8),
    dt.timedelta(days=15),
    dt.timedelta(days=31),
    dt.timedelta(days=62),
)
IN_FLIGHT = (AttemptStatus.PENDING, AttemptStatus.UNKNOWN, AttemptStatus.REQUIRES_ACTION)
LIVE = (
    SubscriptionStatus.INCOMPLETE,
    SubscriptionStatus.TRIALING,
    SubscriptionStatus.ACTIVE,
    SubscriptionStatus.PAST_DUE,
)

owners = st.integers(0, 1)
cars = st.integers(0, 2)
picks = st.integers(0, 20)  # an index into a list the machine keeps, modulo its length


class UnexpectedOutcome(AssertionError):
    """A service answered with something no client may ever see (a 5xx, a crash)."""


class BillingModel(RuleBasedStateMachine):
    proxy = None  # the session's StripeProxy, set by the test
    localstripe = ""  # localstripe's own URL (read directly by the invariants)

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.traveller = time_machine.travel(START, tick=False)
        self.clock = self.traveller.start()
        self.proxy.reset()
        localstripe_request(self.localstripe, "DELETE", "/_config/data")
        database_clear()
        self.world = world_create(now=self.now)
        self.owner_ids = [owner.pk for owner in self.world.owners]
        self.vehicle_ids = [vehicle.pk for vehicle in self.world.vehicles]
        self.subscription_ids: list = []  # in creation order: picks stay stable across runs
        self.purchase_ids: list = []
        self.transfer_codes: dict[int, str] = {}
        self.three_ds_cards = False
        self.faults_injected = 0
        self.hangs_injected = 0
        django_settings.STRIPE_TIMEOUT_SECONDS = STRIPE_TIMEOUT_SECONDS
        self.strict = False  # the last step was a reconciler run with no fault pending

    def teardown(self) -> None:
        self.traveller.stop()
        self.proxy.reset()  # releases requests still hanging on an injected fault

    # -- plumbing ---------------------------------------------------------------------------------
    def _owner(self, index: int) -> Owner:
        return Owner.objects.get(pk=self.owner_ids[index])

    def _vehicle(self, index: int) -> Vehicle:
        return Vehicle.objects.select_related("market").get(pk=self.vehicle_ids[index])

    def _current_owner_id(self, vehicle_id) -> int | None:
        return (
            Ownership.objects.filter(vehicle_id=vehicle_id, ends_at__isnull=True)
            .values_list("owner_id", flat=True)
            .first()
        )

    def _faults_consumed(self) -> int:
        return sum(1 for call in self.proxy.calls() if call.outcome.startswith("fault:"))

    def _faults_pending(self) -> int:
        return self.faults_injected - self._faults_consumed()

    def _hangs_pending(self) -> int:
        return self.hangs_injected - sum(1 for call in self.proxy.calls() if call.outcome == "fault:hang")

    def _step(self, label: str) -> None:
        """Every step takes a second of model time: two steps never share an instant (a frozen
        clock would make empty periods no real request sequence can produce)."""
        self._move_clock(STEP_TAKES)
        self.strict = False
        if not self._hangs_pending():
            django_settings.STRIPE_TIMEOUT_SECONDS = STRIPE_TIMEOUT_SECONDS
        note(f"[{self.now:%Y-%m-%d %H:%M}] {label}")

    def _service(self, label: str, call):
        """Run one service call. Business refusals (4xx BillingError) are allowed outcomes;
        a gateway error only when a fault we injected was consumed by this call; anything
        else (5xx, IntegrityError, any other exception) fails the test."""
        consumed_before = self._faults_consumed()
        try:
            result = call()
        except gateway.IdempotencyConflict as exc:  # our key derivation is wrong: never allowed
            raise UnexpectedOutcome(f"{label}: {exc.code} {exc.message}") from exc
        except gateway.PaymentMethodDeclined as exc:  # the card was refused when saved: a 402
            note(f"  -> refused {exc.status_code} {exc.code}: {exc.message}")
            self._outcome(label, exc.code)
            return None
        except gateway.PaymentGatewayError as exc:
            if self._faults_consumed() > consumed_before:
                note(f"  -> {type(exc).__name__} ({exc.code}) after an injected fault")
                self._outcome(label, f"{type(exc).__name__} after a fault")
                return None
            raise UnexpectedOutcome(f"{label}: {type(exc).__name__} {exc.status_code} {exc.code}") from exc
        except BillingError as exc:
            if exc.status_code < 500:
                note(f"  -> refused {exc.status_code} {exc.code}: {exc.message}")
                detail = f" ({exc.message[:70]})" if exc.code in DETAILED_CODES else ""
                self._outcome(label, f"{exc.code}{detail}")
                return None
            raise UnexpectedOutcome(f"{label}: {exc.status_code} {exc.code} {exc.message}") from exc
        self._track_new_rows()
        self._outcome(label, str(getattr(result, "status", "ok")))
        return result

    @staticmethod
    def _outcome(label: str, outcome: str) -> None:
        event(f"{label}: {outcome}")
        OUTCOMES[f"{label}: {outcome}"] += 1

    def _track_new_rows(self) -> None:
        for model, known in ((Subscription, self.subscription_ids), (Purchase, self.purchase_ids)):
            new = set(model.objects.values_list("pk", flat=True)) - set(known)
            known.extend(sorted(new, key=str))  # at most one new row per step: the order is stable

    def _move_clock(self, delta: dt.timedelta) -> None:
        self.now += delta
        self.clock.move_to(self.now)

    # -- owners and cards -------------------------------------------------------------------------
    @initialize(
        cards=st.tuples(*[st.sampled_from(["good", "good", "three_d_secure", "declines_at_charge"])] * 2)
    )
    def first_cards(self, cards):
        """Each owner starts with a default card: without one nothing can be bought."""
        for owner, card in enumerate(cards):
            self._add_card(owner, card, make_default=True)

    def _add_card(self, owner: int, card: str, *, make_default: bool) -> None:
        self._step(f"owner {owner} adds card {card} (default={make_default})")
        if card == "three_d_secure":
            self.three_ds_cards = True
        payment_method = CARDS[card] or localstripe_card(self.localstripe, CARD_3DS)
        self._service(
            "add_card",
            lambda: payment_method_add(
                owner=self._owner(owner), stripe_payment_method_id=payment_method, make_default=make_default
            ),
        )

    @rule(owner=owners, card=st.sampled_from(sorted(CARDS)), make_default=st.booleans())
    def add_card(self, owner, card, make_default):
        self._add_card(owner, card, make_default=make_default)

    # -- buying -----------------------------------------------------------------------------------
    def _owner_of_car(self, car: int) -> tuple[int, Owner]:
        owner = Owner.objects.get(pk=self._current_owner_id(self.vehicle_ids[car]))
        return self.owner_ids.index(owner.pk), owner

    @rule(car=cars, offer=st.sampled_from(ONE_TIME_OFFERS))
    def buy(self, car, offer):
        index, buyer = self._owner_of_car(car)
        self._step(f"owner {index} buys {offer} for car {car}")

        def call():
            vehicle = vehicle_of_owner(owner=buyer, vehicle_id=self.vehicle_ids[car])
            return purchase_create(
                owner=buyer, vehicle=vehicle, offer_code=offer, payment_method_id=None, at=self.now
            )

        outcome = self._service("buy", call)
        if outcome is not None:
            note(f"  -> {outcome.status}")

    @rule(car=cars, plan=st.sampled_from(PLANS), trial=st.sampled_from([None, True, False]))
    def subscribe(self, car, plan, trial):
        index, subscriber = self._owner_of_car(car)
        self._step(f"owner {index} subscribes car {car} to {plan} (trial={trial})")

        def call():
            vehicle = vehicle_of_owner(owner=subscriber, vehicle_id=self.vehicle_ids[car])
            return subscription_start(
                owner=subscriber,
                vehicle=vehicle,
                offer_code=plan,
                payment_method_id=None,
                use_trial=trial,
                at=self.now,
            )

        covered = features_covered_now(self.vehicle_ids[car], now=self.now)
        outcome = self._service("subscribe", call)
        if outcome is not None:
            note(f"  -> {outcome.status}")
            assert not OFFER_FEATURES[plan] <= covered, (
                f"sold {plan} to car {car}, which already had all of {sorted(OFFER_FEATURES[plan])} "
                f"(covered: {sorted(covered)}): the owner pays twice (issue 7, hole 9)"
            )

    def _subscription(self, pick: int) -> Subscription | None:
        if not self.subscription_ids:
            return None
        return Subscription.objects.select_related("price", "offer").get(
            pk=self.subscription_ids[pick % len(self.subscription_ids)]
        )

    def _change_plan(self, pick: int, target: int, *, up: bool) -> None:
        subscription = self._subscription(pick)
        if subscription is None:
            self._step("change plan: no subscription yet")
            return
        current = subscription.price.amount_minor
        targets = sorted(p for p in PLANS if (PRICE[p] > current if up else PRICE[p] < current))
        if not targets:
            self._step(f"change plan of {subscription.offer.code}: nothing {'above' if up else 'below'}")
            return
        plan = targets[target % len(targets)]
        kind = "upgrades" if up else "downgrades"
        self._step(
            f"owner {self.owner_ids.index(subscription.owner_id)} {kind} subscription "
            f"#{self.subscription_ids.index(subscription.pk)} ({subscription.offer.code}, "
            f"{subscription.status}) to {plan}"
        )
        covered = features_covered_now(subscription.vehicle_id, now=self.now, excluding=subscription.pk)
        outcome = self._service(
            "change_plan",
            lambda: subscription_change_apply(
                owner=subscription.owner, subscription_id=subscription.pk, offer_code=plan, at=self.now
            ),
        )
        if outcome is not None:
            note(f"  -> {outcome.status}")
            assert outcome.status == "scheduled" or not OFFER_FEATURES[plan] <= covered, (
                f"upgraded to {plan}, whose features {sorted(OFFER_FEATURES[plan])} the car already "
                f"had from elsewhere (covered: {sorted(covered)}): the owner pays twice"
            )

    @precondition(lambda self: self.subscription_ids)
    @rule(pick=picks, to=picks)
    def upgrade(self, pick, to):
        self._change_plan(pick, to, up=True)

    @precondition(lambda self: self.subscription_ids)
    @rule(pick=picks, to=picks)
    def downgrade(self, pick, to):
        self._change_plan(pick, to, up=False)

    def _describe(self, subscription: Subscription) -> str:
        return (
            f"subscription #{self.subscription_ids.index(subscription.pk)} "
            f"({subscription.offer.code}, {subscription.status})"
        )

    @precondition(lambda self: self.subscription_ids)
    @rule(pick=picks)
    def cancel(self, pick):
        subscription = self._subscription(pick)
        if subscription is None:
            self._step("cancel: no subscription yet")
            return
        self._step(f"cancel {self._describe(subscription)}")
        self._service(
            "cancel",
            lambda: subscription_cancel(
                owner=subscription.owner, subscription_id=subscription.pk, at=self.now
            ),
        )

    @precondition(lambda self: self.subscription_ids)
    @rule(pick=picks)
    def resume(self, pick):
        subscription = self._subscription(pick)
        if subscription is None:
            self._step("resume: no subscription yet")
            return
        self._step(f"resume {self._describe(subscription)}")
        self._service(
            "resume",
            lambda: subscription_resume(
                owner=subscription.owner, subscription_id=subscription.pk, at=self.now
            ),
        )

    @precondition(lambda self: self.purchase_ids)
    @rule(pick=picks)
    def withdraw(self, pick):
        if not self.purchase_ids:
            self._step("withdraw: no purchase yet")
            return
        purchase = Purchase.objects.select_related("offer", "owner").get(
            pk=self.purchase_ids[pick % len(self.purchase_ids)]
        )
        self._step(
            f"withdraw purchase #{self.purchase_ids.index(purchase.pk)} ({purchase.offer.code}, "
            f"{purchase.status})"
        )
        self._service(
            "withdraw",
            lambda: purchase_withdraw(owner=purchase.owner, purchase_id=purchase.pk, at=self.now),
        )

    # -- resale -----------------------------------------------------------------------------------
    @rule(car=cars)
    def start_transfer(self, car):
        seller_id = self._current_owner_id(self.vehicle_ids[car])
        self._step(f"owner {self.owner_ids.index(seller_id)} starts the transfer of car {car}")
        started = self._service(
            "start_transfer",
            lambda: transfer_start(
                owner=Owner.objects.get(pk=seller_id), vehicle_id=self.vehicle_ids[car], at=self.now
            ),
        )
        if started is not None:
            self.transfer_codes[car] = started.code

    @precondition(lambda self: self.transfer_codes)
    @rule(car=cars, buyer=owners)
    def claim(self, car, buyer):
        if car not in self.transfer_codes:
            car = sorted(self.transfer_codes)[car % len(self.transfer_codes)]
        self._step(f"owner {buyer} claims car {car}")
        vin = Vehicle.objects.get(pk=self.vehicle_ids[car]).vin
        claimed = self._service(
            "claim",
            lambda: transfer_claim(
                new_owner=self._owner(buyer), vin=vin, code=self.transfer_codes[car], at=self.now
            ),
        )
        if claimed is not None:
            del self.transfer_codes[car]

    # -- 3-D Secure, at Stripe (the customer's bank) ----------------------------------------------
    @precondition(lambda self: self.three_ds_cards)
    @rule(pick=picks, success=st.booleans(), app_confirms=st.booleans())
    def customer_answers_3ds(self, pick, success, app_confirms):
        intents = localstripe_list(self.localstripe, "payment_intents")
        waiting = [intent for intent in intents if intent["status"] == "requires_action"]
        if not waiting:
            self._step("3-D Secure: no PaymentIntent waits for it")
            return
        intent = waiting[pick % len(waiting)]
        attempt = PaymentAttempt.objects.filter(pk=intent["metadata"].get("payment_attempt_id")).first()
        self._step(
            f"the customer {'completes' if success else 'fails'} 3-D Secure of {intent['amount']} "
            f"(local attempt: {attempt.status if attempt else 'none'}); app confirms: {app_confirms}"
        )
        localstripe_authenticate(self.localstripe, intent, success=success)
        if app_confirms and attempt is not None:  # POST /me/payments/{id}/confirm/
            self._service("confirm", lambda: payment_attempt_refresh(attempt_id=attempt.pk))

    # -- the network ------------------------------------------------------------------------------
    @precondition(lambda self: self._faults_pending() < 2)
    @rule(kind=st.sampled_from(FAULTS), any_method=st.booleans())
    def inject_fault(self, kind, any_method):
        self._step(f"the next {'Stripe' if any_method else 'Stripe POST'} call fails: {kind}")
        forward = kind == "hang_after_forward"
        self.proxy.inject(
            "hang" if forward else kind,
            method=None if any_method else "POST",
            hang_seconds=HANG_SECONDS,
            forward=forward,
        )
        self.faults_injected += 1
        if kind.startswith("hang"):
            self.hangs_injected += 1
            django_settings.STRIPE_TIMEOUT_SECONDS = HANG_TIMEOUT_SECONDS

    # -- scheduled jobs and time ------------------------------------------------------------------
    @rule()
    def reconcile(self):
        """The reconcilers' periodic run: five minutes later, both of them."""
        pending_faults = self._faults_pending()
        self._move_clock(RECONCILER_EVERY)
        self._step(f"reconcilers run ({pending_faults} fault(s) pending)")
        payments = self._service("payment_attempts_reconcile", payment_attempts_reconcile)
        refunds = self._service("refunds_reconcile", refunds_reconcile)
        note(f"  -> payments {payments}, refunds {refunds}")
        self.strict = pending_faults == 0 and self._faults_pending() == 0

    @rule()
    def renew(self):
        self._step("renewal sweep")
        report = self._service("subscriptions_renew_due", lambda: subscriptions_renew_due(at=self.now))
        if report is None:
            return
        note(f"  -> {report}")
        for error in report.errors:
            code = error.rsplit(": ", 1)[-1]
            if code in {"payment_provider_error", "validation_error", "invalid_state"}:
                raise UnexpectedOutcome(f"renewal sweep: {error}")

    @rule()
    def dunning(self):
        """The dunning sweep: retries of declined renewals, unpaid cancellations, trial reminders."""
        self._step("dunning sweep")
        report = self._service("dunning_sweep", lambda: dunning_sweep(at=self.now))
        if report is not None:
            note(f"  -> {report}")

    @precondition(lambda self: self.subscription_ids)
    @rule(pick=picks)
    def pay_open_invoice(self, pick):
        """The owner pays a declined renewal with their (new) default card: POST /me/invoices/{id}/pay/."""
        invoices = list(
            Invoice.objects.filter(kind=InvoiceKind.SUBSCRIPTION_PERIOD, status=InvoiceStatus.OPEN)
            .select_related("owner", "subscription__offer")
            .order_by("number")
        )
        if not invoices:
            self._step("pay an open invoice: none is open")
            return
        invoice = invoices[pick % len(invoices)]
        self._step(
            f"owner {self.owner_ids.index(invoice.owner_id)} pays open invoice {invoice.number} "
            f"({invoice.subscription.offer.code}, {invoice.subscription.status})"
        )
        outcome = self._service(
            "pay_open_invoice",
            lambda: invoice_pay(
                owner=invoice.owner, invoice_id=invoice.pk, payment_method_id=None, at=self.now
            ),
        )
        if outcome is not None:
            note(f"  -> {outcome.status}")

    @rule(delta=st.sampled_from(ADVANCES))
    def advance_clock(self, delta):
        delta = min(delta, max(dt.timedelta(0), LATEST - self.now))
        self._move_clock(delta)
        self._step(f"time passes: {delta}")

    # -- operators --------------------------------------------------------------------------------
    @precondition(lambda self: self.subscription_ids or self.purchase_ids)
    @rule(pick=picks)
    def goodwill_refund(self, pick):
        attempts = list(
            PaymentAttempt.objects.filter(status=AttemptStatus.SUCCEEDED).order_by(
                "invoice__number", "created_at"
            )
        )
        if not attempts:
            self._step("goodwill refund: no payment yet")
            return
        attempt = attempts[pick % len(attempts)]
        self._step(f"operator refunds payment of {attempt.amount_minor} (invoice {attempt.invoice.number})")
        self._service(
            "goodwill_refund",
            lambda: refund_in_full_or_raise(payment_attempt=attempt, reason="admin refund by ops"),
        )

    @rule(car=cars, feature=st.sampled_from(FEATURES), days=st.sampled_from([None, 1, 30]))
    def admin_grant(self, car, feature, days):
        self._step(f"operator grants {feature} to car {car} for {days or 'ever'} days")
        self._service(
            "admin_grant",
            lambda: entitlement_grant_admin(
                vehicle=self._vehicle(car),
                feature=Feature.objects.get(code=feature),
                granted_by=self.world.admin,
                starts_at=self.now,
                ends_at=self.now + dt.timedelta(days=days) if days else None,
                reason="goodwill",
            ),
        )

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def ledger_agrees_with_stripe(self):
        problems = ledger_problems(self.localstripe, now=self.now, strict=self.strict)
        assert not problems, "ledger:\n  " + "\n  ".join(problems)

    @invariant()
    def rights_agree_with_money(self):
        problems = rights_problems(self.vehicle_ids, now=self.now)
        assert not problems, "rights:\n  " + "\n  ".join(problems)

    @invariant()
    def no_invoice_left_open_for_nobody(self):
        """An open purchase or plan-change invoice has a payment in flight; one without blocks
        that purchase or every later plan change of the subscription (409) for good."""
        problems = []
        for invoice in Invoice.objects.filter(
            status=InvoiceStatus.OPEN, kind__in=[InvoiceKind.PURCHASE, InvoiceKind.PLAN_CHANGE]
        ).exclude(attempts__status__in=IN_FLIGHT):
            detail = (
                f"{invoice.kind} invoice {invoice.number} ({invoice.total_minor}) open, nothing in flight"
            )
            if invoice.kind == InvoiceKind.PLAN_CHANGE and _tolerated("orphan_plan_change_invoice", detail):
                continue
            problems.append(detail)
        assert not problems, "invoices:\n  " + "\n  ".join(problems)

    @invariant()
    def reconciler_settles_what_it_can(self):
        if not self.strict:
            return
        problems = progress_problems(self.localstripe, now=self.now)
        assert not problems, "progress:\n  " + "\n  ".join(problems)


# What the rules' service calls answered over a whole run (printed with `pytest -s`): shows
# which paths the machine reaches, next to Hypothesis' own `event`s.
OUTCOMES: Counter[str] = Counter()
DETAILED_CODES = {"validation_error", "not_found", "conflict", "invalid_state"}


KEY_WINDOW_MISS = "Not found at Stripe after the idempotency window"


def _tolerated(defect: str, detail: str) -> bool:
    if defect not in TOLERATED:
        return False
    note(f"  (open defect {defect}: {detail})")
    event(f"open defect seen: {defect}")
    return True


def features_covered_now(vehicle_id, *, now: dt.datetime, excluding=None) -> set[str]:
    """What the car keeps without buying anything (our model of "already entitled", issue 7
    hole 9): perpetual rights, and the features of live plans that are not ending (set to cancel
    or past due). Selling an offer all of whose features are in here makes the owner pay twice."""
    covered = set(
        Entitlement.objects.filter(
            vehicle_id=vehicle_id, starts_at__lte=now, ends_at__isnull=True
        ).values_list("feature__code", flat=True)
    )
    live = (
        Subscription.objects.filter(vehicle_id=vehicle_id, status__in=LIVE, cancel_at_period_end=False)
        .exclude(status__in=[SubscriptionStatus.PAST_DUE, SubscriptionStatus.INCOMPLETE])  # not paid
        .exclude(pk=excluding)
        .select_related("offer")
    )
    for subscription in live:
        covered |= OFFER_FEATURES[subscription.offer.code]
    return covered


# -- the invariants, as plain functions over the database and localstripe ---------------------------
def ledger_problems(localstripe: str, *, now: dt.datetime, strict: bool) -> list[str]:
    """Per charge and per refund, then per owner: Stripe and our records agree.

    Always: every local `succeeded` attempt/refund is a succeeded Stripe object of the same
    amount; every Stripe charge/refund has a local row that is not `declined`/`canceled`/`failed`;
    no attempt is charged twice. Strict (after a fault-free reconciler run): no charge or refund
    still waits for the reconciler, and per owner Stripe's net equals ours exactly.
    """
    ledger = stripe_ledger(localstripe)
    problems: list[str] = []
    attempts = {str(a.pk): a for a in PaymentAttempt.objects.select_related("invoice")}
    refunds = {str(r.pk): r for r in Refund.objects.select_related("payment_attempt")}
    excused: dict[str, int] = defaultdict(int)  # captured at Stripe, legitimately not recorded yet

    for attempt in attempts.values():
        if attempt.status != AttemptStatus.SUCCEEDED:
            continue
        intent = ledger.intent_by_id.get(attempt.stripe_payment_intent_id)
        if intent is None or intent["status"] != "succeeded" or intent["amount"] != attempt.amount_minor:
            problems.append(
                f"attempt {attempt.pk} ({attempt.invoice.kind}, {attempt.amount_minor}) is succeeded "
                f"locally but Stripe says {intent and (intent['status'], intent['amount'])}"
            )
    charged: dict[str, list[str]] = defaultdict(list)
    for intent in ledger.intents:
        if intent["status"] != "succeeded":
            continue
        attempt_id = intent["metadata"].get("payment_attempt_id", "")
        charged[attempt_id].append(intent["id"])
        attempt = attempts.get(attempt_id)
        what = f"Stripe charged {intent['amount']} ({intent['id']})"
        if attempt is None:
            problems.append(f"{what} with no local attempt")
        elif attempt.status == AttemptStatus.SUCCEEDED:
            if attempt.stripe_payment_intent_id != intent["id"]:
                problems.append(f"{what} for attempt {attempt.pk} recorded with another PaymentIntent")
        elif attempt.status in (AttemptStatus.DECLINED, AttemptStatus.CANCELED):
            problems.append(
                f"{what} for attempt {attempt.pk} ({attempt.invoice.kind}) recorded as {attempt.status}"
            )
        elif strict and _reconciler_was_due(attempt, now):
            problems.append(
                f"{what} for attempt {attempt.pk} ({attempt.invoice.kind}) still {attempt.status} "
                "after the reconciler ran"
            )
        else:
            excused[intent["customer"]] += intent["amount"]
    for attempt_id, intent_ids in charged.items():
        if len(intent_ids) > 1:
            problems.append(f"attempt {attempt_id} charged {len(intent_ids)} times: {intent_ids}")

    stripe_refunds = {refund["id"]: refund for refund in ledger.refunds}
    excused_refunds: dict[str, int] = defaultdict(int)
    for refund in refunds.values():
        if refund.status != RefundStatus.SUCCEEDED:
            continue
        seen = stripe_refunds.get(refund.stripe_refund_id)
        if seen is None or seen["status"] != "succeeded" or seen["amount"] != refund.amount_minor:
            problems.append(f"refund {refund.pk} ({refund.reason}) is succeeded locally, Stripe: {seen}")
    for seen in ledger.refunds:
        refund = refunds.get(seen["metadata"].get("refund_id", ""))
        what = f"Stripe refunded {seen['amount']} ({seen['id']})"
        intent = ledger.intent_by_id.get(seen.get("payment_intent") or "")
        customer = intent["customer"] if intent else "?"
        if refund is None:
            problems.append(f"{what} with no local refund")
        elif refund.status == RefundStatus.FAILED:
            problems.append(f"{what} recorded as failed ({refund.reason})")
        elif refund.status != RefundStatus.SUCCEEDED:
            if strict:
                problems.append(f"{what} still {refund.status} after the reconciler ran ({refund.reason})")
            excused_refunds[customer] += seen["amount"]

    local_captured: dict[int, int] = defaultdict(int)
    local_refunded: dict[int, int] = defaultdict(int)
    for attempt in attempts.values():
        if attempt.status == AttemptStatus.SUCCEEDED:
            local_captured[attempt.owner_id] += attempt.amount_minor
    for refund in refunds.values():
        if refund.status == RefundStatus.SUCCEEDED:
            local_refunded[refund.payment_attempt.owner_id] += refund.amount_minor
    owners = list(Owner.objects.all())
    for owner in owners:
        customer = owner.stripe_customer_id
        stripe_captured = ledger.captured_by_customer.get(customer, 0) if customer else 0
        stripe_refunded = ledger.refunded_by_customer.get(customer, 0) if customer else 0
        captured, refunded = local_captured[owner.pk], local_refunded[owner.pk]
        if captured != stripe_captured - excused.get(customer, 0) or (
            refunded != stripe_refunded - excused_refunds.get(customer, 0)
        ):
            problems.append(
                f"owner {owner.display_name}: Stripe captured {stripe_captured} refunded {stripe_refunded} "
                f"(still settling: {excused.get(customer, 0)} / {excused_refunds.get(customer, 0)}); "
                f"we say captured {captured} refunded {refunded}"
            )
    known = {owner.stripe_customer_id for owner in owners if owner.stripe_customer_id}
    for intent in ledger.intents:
        if intent["status"] == "succeeded" and intent["customer"] not in known:
            problems.append(f"Stripe charged {intent['amount']} to unknown customer {intent['customer']}")
    return problems


def _paid_features_now(now: dt.datetime) -> dict:
    """subscription id -> feature codes that a paid invoice (a period, or a plan change) of that
    subscription pays for at `now`. Three queries."""
    invoices = list(
        Invoice.objects.filter(
            subscription__isnull=False, status=InvoiceStatus.PAID, period_start__lte=now, period_end__gt=now
        ).values_list("pk", "subscription_id", "kind", "change_to_price__offer_id")
    )
    line_offer = dict(
        InvoiceLine.objects.filter(invoice_id__in=[pk for pk, *_ in invoices], offer__isnull=False)
        .order_by("invoice_id", "id")
        .values_list("invoice_id", "offer_id")
    )
    offer_features = defaultdict(set)
    for offer_id, code in Offer.features.through.objects.values_list("offer_id", "feature__code"):
        offer_features[offer_id].add(code)
    paid = defaultdict(set)
    for pk, subscription_id, kind, change_offer_id in invoices:
        offer_id = change_offer_id if kind == InvoiceKind.PLAN_CHANGE else line_offer.get(pk)
        paid[subscription_id] |= offer_features.get(offer_id, set())
    return paid


def _backing(row: Entitlement, *, current_owner_id, paid: dict, trials: set) -> str | None:
    """None when the entitlement row is legitimately in force now; else why not."""
    if row.source in (EntitlementSource.GRANT, EntitlementSource.INCLUDED):
        return None
    if row.source == EntitlementSource.PURCHASE:
        purchase = row.purchase
        if purchase.status != PurchaseStatus.PAID:
            return f"purchase {purchase.offer.code} is {purchase.status}"
        if purchase.owner_id != current_owner_id and purchase.offer.transfer_policy != "stays_with_vehicle":
            return f"purchase {purchase.offer.code} of a previous owner ends on transfer"
        return None
    subscription = row.subscription
    if subscription.owner_id != current_owner_id:
        return f"subscription {subscription.offer.code} of a previous owner ({subscription.status})"
    if subscription.status not in LIVE:
        return f"subscription {subscription.offer.code} is {subscription.status}"
    if row.source == EntitlementSource.GRACE:  # dunning: the declined period is being retried
        if subscription.status == SubscriptionStatus.PAST_DUE and row.ends_at is not None:
            return None
        return f"grace of {subscription.offer.code} while {subscription.status}"
    in_trial = subscription.trial_end and row.ends_at is not None and row.ends_at <= subscription.trial_end
    if in_trial and subscription.pk in trials:
        return None
    if row.feature.code in paid.get(subscription.pk, ()):
        return None
    return f"subscription {subscription.offer.code} ({subscription.status}) has no paid period for it now"


def rights_problems(vehicle_ids, *, now: dt.datetime) -> list[str]:
    """A feature is on iff a period covers now: every feature a car may use now (the selector the
    vehicle API serves) is backed by its current owner's paid, trial, grace, included or granted
    period, or by a purchase that stays with the car; and every paid unrefunded, trial or in-grace
    current period of a live subscription grants its features. No live subscription outlives its
    owner's ownership of the car."""
    problems: list[str] = []
    owner_of = dict(
        Ownership.objects.filter(vehicle_id__in=vehicle_ids, ends_at__isnull=True).values_list(
            "vehicle_id", "owner_id"
        )
    )
    paid = _paid_features_now(now)
    trials = set(TrialUsage.objects.values_list("subscription_id", flat=True))
    rows = defaultdict(list)
    for row in (
        Entitlement.objects.filter(vehicle_id__in=vehicle_ids, starts_at__lte=now)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        .select_related("feature", "purchase__offer", "subscription__offer")
    ):
        rows[row.vehicle_id].append(row)
    live = defaultdict(list)
    for subscription in Subscription.objects.filter(status__in=LIVE).select_related("offer"):
        live[subscription.vehicle_id].append(subscription)
    refunded_subscriptions = set(
        Refund.objects.filter(payment_attempt__invoice__period_end__gt=now).values_list(
            "payment_attempt__invoice__subscription_id", flat=True
        )
    )
    offer_features = defaultdict(set)
    for offer_id, code in Offer.features.through.objects.values_list("offer_id", "feature__code"):
        offer_features[offer_id].add(code)

    for index, vehicle_id in enumerate(vehicle_ids):
        owner_id = owner_of.get(vehicle_id)
        active = {feature.code for feature in features_active_at(vehicle_id=vehicle_id, at=now)}
        backed: dict[str, list[str]] = defaultdict(list)
        for row in rows[vehicle_id]:
            why_not = _backing(row, current_owner_id=owner_id, paid=paid, trials=trials)
            backed[row.feature.code].append(why_not or "")
        for code in sorted(active):
            reasons = backed.get(code, ["no entitlement row"])
            if all(reasons):
                problems.append(f"car {index} may use {code}, but: {'; '.join(reasons)}")

        for subscription in live[vehicle_id]:
            if subscription.owner_id != owner_id:
                problems.append(
                    f"car {index}: {subscription.offer.code} ({subscription.status}) of a previous owner "
                    "is live"
                )
                continue
            if not (subscription.current_period_start <= now < subscription.current_period_end):
                continue
            missing = offer_features[subscription.offer_id] - active
            if subscription.status == SubscriptionStatus.TRIALING:
                # After its trial a subscription stays `trialing` until the first renewal is paid.
                if missing and subscription.trial_end and now < subscription.trial_end:
                    problems.append(
                        f"car {index}: trial of {subscription.offer.code} without {sorted(missing)}"
                    )
                continue
            if subscription.status == SubscriptionStatus.PAST_DUE:
                # A declined renewal being retried: the car keeps the plan until its grace ends.
                if missing and subscription.grace_until and now < subscription.grace_until:
                    problems.append(
                        f"car {index}: in grace of {subscription.offer.code} without {sorted(missing)}"
                    )
                continue
            if subscription.status != SubscriptionStatus.ACTIVE or subscription.pk in refunded_subscriptions:
                continue
            if missing and offer_features[subscription.offer_id] <= paid.get(subscription.pk, set()):
                problems.append(
                    f"car {index}: paid, unrefunded period of {subscription.offer.code} "
                    f"without {sorted(missing)}"
                )
    return problems


def _reconciler_was_due(row, now: dt.datetime) -> bool:
    """Should the reconciler run that has just finished (at `now`) have settled this attempt or
    refund? Rows it gave up on (dead letter) or backed off after a real error count as due: the
    error is what the check reports."""
    if row.dead_lettered_at is not None:
        return True
    if row.next_reconcile_at is not None and row.next_reconcile_at > now:
        return row.reconcile_failures > 0
    if isinstance(row, PaymentAttempt) and row.status == AttemptStatus.REQUIRES_ACTION:
        return row.updated_at < now - _requires_action_check_after()
    waited_since = row.updated_at if isinstance(row, PaymentAttempt) else row.created_at
    return waited_since < now - RECONCILE_OLDER_THAN


def progress_problems(localstripe: str, *, now: dt.datetime) -> list[str]:
    """After a reconciler run with no fault pending: nothing is left it could settle."""
    problems: list[str] = []
    for attempt in PaymentAttempt.objects.filter(
        status__in=[AttemptStatus.PENDING, AttemptStatus.UNKNOWN]
    ).select_related("invoice"):
        if not _reconciler_was_due(attempt, now):
            continue
        stuck = KEY_WINDOW_MISS in attempt.reconcile_error
        if stuck and _tolerated("stuck_after_key_window", f"attempt {attempt.pk} {attempt.reconcile_error}"):
            continue
        problems.append(
            f"attempt {attempt.pk} ({attempt.invoice.kind}, {attempt.amount_minor}, created "
            f"{attempt.created_at:%Y-%m-%d %H:%M}) still {attempt.status}: {attempt.error_message[:80]} "
            f"{attempt.reconcile_error[:120]}"
        )
    for refund in Refund.objects.filter(status__in=[RefundStatus.PENDING, RefundStatus.UNKNOWN]):
        if _reconciler_was_due(refund, now):
            problems.append(
                f"refund {refund.pk} ({refund.reason}) still {refund.status} {refund.reconcile_error[:120]}"
            )
    waiting = [
        attempt
        for attempt in PaymentAttempt.objects.filter(status=AttemptStatus.REQUIRES_ACTION)
        .exclude(stripe_payment_intent_id="")
        .select_related("invoice")
        if _reconciler_was_due(attempt, now)
    ]
    if waiting:
        intents = {i["id"]: i for i in localstripe_list(localstripe, "payment_intents")}
        cancel_after = payments_service.requires_action_cancel_after()
        for attempt in waiting:
            intent = intents.get(attempt.stripe_payment_intent_id)
            if intent is None:
                continue
            if intent["status"] != "requires_action":
                problems.append(
                    f"attempt {attempt.pk} ({attempt.invoice.kind}) still requires_action, Stripe says "
                    f"{intent['status']} (since {attempt.updated_at:%Y-%m-%d %H:%M})"
                )
            elif attempt.created_at < now - cancel_after:
                problems.append(
                    f"attempt {attempt.pk} ({attempt.invoice.kind}) waits for 3-D Secure since "
                    f"{attempt.created_at:%Y-%m-%d %H:%M}: past the {cancel_after} window, not canceled"
                )
    for model in (PaymentAttempt, Refund):
        for row in model.objects.filter(reconcile_failures__gt=0):
            if KEY_WINDOW_MISS in row.reconcile_error and "stuck_after_key_window" in TOLERATED:
                continue  # noted above
            problems.append(
                f"{model.__name__} {row.pk} ({row.status}) failed {row.reconcile_failures}x in the "
                f"reconciler: {row.reconcile_error[:160]}"
            )
    return problems


@pytest.mark.django_db(transaction=True)
def test_money_and_rights_always_agree(stripe_proxy, localstripe_url, settings):
    OUTCOMES.clear()
    # One override by the fixture (undone after the test); the machine then changes the
    # timeout inside it (setting it through the fixture each time would nest overrides).
    settings.STRIPE_TIMEOUT_SECONDS = STRIPE_TIMEOUT_SECONDS
    BillingModel.proxy = stripe_proxy
    BillingModel.localstripe = localstripe_url
    run_state_machine_as_test(
        BillingModel,
        settings=hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            report_multiple_bugs=False,  # shrink one failure at a time: examples are slow
            verbosity=Verbosity.verbose if os.environ.get("MODEL_VERBOSE") else Verbosity.normal,
            # no "explain" phase: it replays a failure many times for little
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print("\nmodel-based test, service outcomes:")  # noqa: T201 - shown with pytest -s
    for outcome, count in sorted(OUTCOMES.items()):
        print(f"  {count:6d}  {outcome}")  # noqa: T201
