"""The only functions that change the status of a billing object, each through its model's table.

Callers hold the row locked (`select_for_update`) and pass the other fields that change with the
status, so the status and its timestamps are saved together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from billing.models import (
    Dispute,
    Invoice,
    PaymentAttempt,
    Purchase,
    ReconciliationRun,
    Refund,
    StripeEvent,
    Subscription,
)
from billing.models.disputes import DISPUTE_TRANSITIONS
from billing.models.invoices import INVOICE_TRANSITIONS, InvoiceStatus
from billing.models.payments import ATTEMPT_TRANSITIONS, REFUND_TRANSITIONS
from billing.models.reconciliation import RECONCILIATION_RUN_TRANSITIONS
from billing.models.subscriptions import PURCHASE_TRANSITIONS, SUBSCRIPTION_TRANSITIONS
from billing.models.webhooks import STRIPE_EVENT_TRANSITIONS
from core.metrics import payment_attempt_moved
from core.states import transition_apply, transition_apply_many


def subscription_transition(
    *, subscription: Subscription, to: str, save: bool = True, **changes: Any
) -> bool:
    return transition_apply(subscription, table=SUBSCRIPTION_TRANSITIONS, to=to, changes=changes, save=save)


def invoice_transition(*, invoice: Invoice, to: str, at: datetime, **changes: Any) -> bool:
    if to == InvoiceStatus.PAID:
        changes["paid_at"] = at
    return transition_apply(invoice, table=INVOICE_TRANSITIONS, to=to, changes=changes)


def payment_attempt_transition(*, attempt: PaymentAttempt, to: str, **changes: Any) -> bool:
    applied = transition_apply(attempt, table=ATTEMPT_TRANSITIONS, to=to, changes=changes)
    return payment_attempt_moved(to, applied)  # metrics: declines, unknown outcomes


def subscriptions_transition(
    *, subscriptions: Sequence[Subscription], to: str, changes: Mapping[str, Any] | None = None
) -> list[Subscription]:
    """A batch of `subscription_transition`s in one statement (the renewal sweep's)."""
    return transition_apply_many(subscriptions, table=SUBSCRIPTION_TRANSITIONS, to=to, changes=changes)  # type: ignore[return-value]


def invoices_transition(*, invoices: Sequence[Invoice], to: str, at: datetime) -> list[Invoice]:
    """A batch of `invoice_transition`s in one statement (the renewal sweep's)."""
    changes = {"paid_at": at} if to == InvoiceStatus.PAID else {}
    return transition_apply_many(invoices, table=INVOICE_TRANSITIONS, to=to, changes=changes)  # type: ignore[return-value]


def payment_attempts_transition(
    *, attempts: Sequence[PaymentAttempt], to: str, changes: Sequence[Mapping[str, Any]]
) -> list[PaymentAttempt]:
    """A batch of `payment_attempt_transition`s in one statement, `changes` one per attempt."""
    moved = transition_apply_many(attempts, table=ATTEMPT_TRANSITIONS, to=to, changes=changes)
    for _ in moved:
        payment_attempt_moved(to, True)
    return moved  # type: ignore[return-value]


def refund_transition(*, refund: Refund, to: str, **changes: Any) -> bool:
    return transition_apply(refund, table=REFUND_TRANSITIONS, to=to, changes=changes)


def purchase_transition(*, purchase: Purchase, to: str, **changes: Any) -> bool:
    return transition_apply(purchase, table=PURCHASE_TRANSITIONS, to=to, changes=changes)


def stripe_event_transition(*, event: StripeEvent, to: str, **changes: Any) -> bool:
    return transition_apply(event, table=STRIPE_EVENT_TRANSITIONS, to=to, changes=changes)


def dispute_transition(*, dispute: Dispute, to: str, **changes: Any) -> bool:
    return transition_apply(dispute, table=DISPUTE_TRANSITIONS, to=to, changes=changes)


def reconciliation_run_transition(*, run: ReconciliationRun, to: str, **changes: Any) -> bool:
    return transition_apply(run, table=RECONCILIATION_RUN_TRANSITIONS, to=to, changes=changes)
