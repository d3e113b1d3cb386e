"""Reconciliation with Stripe: find what the webhooks never told us, repair it, report each repair.

`stripe_reconcile` (daily, and "Reconcile with Stripe now" in admin) works in one run:

1. **Events.** Pages Stripe's events created since the cursor (the newest event the last
   successful run saw, less an hour of overlap; never more than 30 days back, Stripe's own
   limit). An event of a type we handle that is not in our inbox was never delivered: it is put
   in the inbox and processed as if delivered (the same idempotent processing re-reads its object).
2. **Payments.** Compares every PaymentIntent of ours created in the window, and every payment
   of ours still pending, unknown or waiting for 3-D Secure, with our attempt: a payment whose
   state differs is re-read and recorded through `payment_attempt_record` (fulfilment included).
3. **Refunds.** Compares Stripe's refunds with ours: a refund we hold pending or unknown that
   Stripe has settled is settled (with its credit note when it succeeded). A refund of one of our
   payments that we did not make, or a state that cannot follow ours, is reported for an operator.
4. **Invoices.** A succeeded payment whose invoice is not paid is reported.

Each difference is a line of the run's report (`ReconciliationRun.differences`): what was found,
what was done, whether it was repaired. Each object is isolated: one that raises is reported and
the others go on. Only one run at a time (a database constraint); a run left `running` by a
dead worker for two hours is marked failed by the next one. Running it twice repairs nothing the
second time: the inbox is keyed by the Stripe event id and the comparisons find parity. A run cut
short (Stripe down, the task's time limit on a long backlog) ends `failed` without moving the
cursor; what it put in the inbox stays there, so the next run goes on from where it stopped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models import (
    AttemptStatus,
    InvoiceStatus,
    PaymentAttempt,
    ReconciliationRun,
    ReconciliationRunStatus,
    Refund,
    RefundStatus,
    StripeEvent,
    StripeEventStatus,
)
from billing.models.payments import REFUND_TRANSITIONS
from billing.services.refunds import refund_settle
from billing.services.transitions import reconciliation_run_transition
from billing.services.webhooks import (
    CUSTOMER_EVENTS,
    DISPUTE_EVENTS,
    PAYMENT_INTENT_EVENTS,
    PAYMENT_METHOD_EVENTS,
    REFUND_EVENTS,
    stripe_event_process_isolated,
    stripe_event_store,
)
from core.errors import Conflict, ErrorCode
from core.money import Money, format_money

log = structlog.get_logger(__name__)

MAX_LOOKBACK = timedelta(days=30)  # Stripe lists events of the last 30 days
CURSOR_OVERLAP = timedelta(hours=1)  # events may become listable a little after their `created`
ABANDONED_AFTER = timedelta(hours=2)  # a run still `running` after this lost its worker
SETTLING = timedelta(minutes=5)  # younger rows may still be in flight: left to their own flow
HANDLED_EVENT_TYPES = frozenset(
    PAYMENT_INTENT_EVENTS | REFUND_EVENTS | PAYMENT_METHOD_EVENTS | CUSTOMER_EVENTS | DISPUTE_EVENTS
)
# Our attempt statuses that agree with what Stripe's PaymentIntent says.
_SAME_PAYMENT = {
    "succeeded": {AttemptStatus.SUCCEEDED},
    "requires_action": {AttemptStatus.REQUIRES_ACTION},
    "processing": {AttemptStatus.PENDING, AttemptStatus.UNKNOWN},
    "declined": {AttemptStatus.DECLINED, AttemptStatus.CANCELED},
}
_REFUND_STATUS = {
    "succeeded": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
}


class ReconciliationAlreadyRunning(Conflict):
    """Another reconciliation run is in progress."""


@dataclass
class _Report:
    events_seen: int = 0
    events_missing: int = 0
    payments_checked: int = 0
    refunds_checked: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)

    def add(self, *, kind: str, obj: str, found: str, action: str, repaired: bool) -> None:
        self.differences.append(
            {"kind": kind, "object": obj, "found": found, "action": action, "repaired": repaired}
        )
        log.info("stripe_reconcile_difference", kind=kind, object=obj, found=found, action=action)


def stripe_reconcile(
    *,
    trigger: str = ReconciliationRun.Trigger.MANUAL,
    at: datetime | None = None,
    settling: timedelta = SETTLING,
) -> ReconciliationRun:
    """One reconciliation run (see the module docstring). Raises `ReconciliationAlreadyRunning`
    when another one is in progress; an error of Stripe or ours ends the run `failed` with what it
    found so far (the cursor does not move), and is not raised. Payments and refunds changed less
    than `settling` ago may still be in flight: they are left to their own flow."""
    now = at or timezone.now()
    run = _run_start(trigger=trigger, now=now)
    report = _Report()
    try:
        cursor_after = _events(since=run.cursor_before, report=report)
        _payments(since=run.cursor_before, settled_before=now - settling, report=report)
        _refunds(since=run.cursor_before, settled_before=now - settling, report=report)
        _invoices(since=run.cursor_before, report=report)
    except Exception as exc:  # the run records it; the next run starts from the same cursor
        log.exception("stripe_reconcile_failed", run=run.pk)
        return _run_finish(run=run, report=report, to=ReconciliationRunStatus.FAILED, error=exc)
    return _run_finish(
        run=run, report=report, to=ReconciliationRunStatus.SUCCEEDED, cursor_after=cursor_after
    )


# -- the run ------------------------------------------------------------------------------------------
def _run_start(*, trigger: str, now: datetime) -> ReconciliationRun:
    with transaction.atomic():
        abandoned = ReconciliationRun.objects.select_for_update(skip_locked=True).filter(
            status=ReconciliationRunStatus.RUNNING, started_at__lt=now - ABANDONED_AFTER
        )
        for stale in abandoned:
            reconciliation_run_transition(
                run=stale,
                to=ReconciliationRunStatus.FAILED,
                finished_at=now,
                error="abandoned: its worker stopped",
            )
    last = (
        ReconciliationRun.objects.filter(status=ReconciliationRunStatus.SUCCEEDED, cursor_after__isnull=False)
        .order_by("-cursor_after")
        .first()
    )
    floor = now - MAX_LOOKBACK
    cursor = floor
    if last is not None and last.cursor_after is not None:  # filtered on it
        cursor = max(last.cursor_after - CURSOR_OVERLAP, floor)
    try:
        with transaction.atomic():
            return ReconciliationRun.objects.create(trigger=trigger, started_at=now, cursor_before=cursor)
    except IntegrityError as exc:  # one_running_reconciliation
        raise ReconciliationAlreadyRunning(
            "A reconciliation with Stripe is already running; its report appears when it finishes.",
            code=ErrorCode.CONFLICT,
        ) from exc


def _run_finish(
    *,
    run: ReconciliationRun,
    report: _Report,
    to: str,
    cursor_after: datetime | None = None,
    error: BaseException | None = None,
) -> ReconciliationRun:
    repaired = sum(1 for d in report.differences if d["repaired"])
    with transaction.atomic():
        locked = ReconciliationRun.objects.select_for_update().get(pk=run.pk)
        reconciliation_run_transition(
            run=locked,
            to=to,
            finished_at=timezone.now(),
            cursor_after=cursor_after,
            events_seen=report.events_seen,
            events_missing=report.events_missing,
            payments_checked=report.payments_checked,
            refunds_checked=report.refunds_checked,
            differences_found=len(report.differences),
            differences_repaired=repaired,
            differences=report.differences,
            error=f"{type(error).__name__}: {error}"[:500] if error is not None else "",
        )
    log.info(
        "stripe_reconcile_finished",
        run=locked.pk,
        status=to,
        found=len(report.differences),
        repaired=repaired,
        events_missing=report.events_missing,
    )
    return locked


# -- 1. events never delivered ------------------------------------------------------------------------
def _events(*, since: datetime, report: _Report) -> datetime:
    """Put handled events missing from the inbox in it and process them. Returns the newest
    event's time (the next cursor), or `since` when there was none."""
    newest = since
    for event in gateway.events_list(created_after=since):
        report.events_seen += 1
        created = event.get("created")
        if isinstance(created, int):
            newest = max(newest, datetime.fromtimestamp(created, tz=UTC))
        event_id, event_type = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or event_type not in HANDLED_EVENT_TYPES:
            continue
        if StripeEvent.objects.filter(stripe_event_id=event_id).exists():
            continue
        _event_deliver(event=event, report=report)
    return newest


def _event_deliver(*, event: dict[str, Any], report: _Report) -> None:
    obj = (event.get("data") or {}).get("object") or {}
    found = f"{event['type']} of {obj.get('id', '?')} was never delivered"
    try:
        row, created = stripe_event_store(event=event, enqueue=False)
        if not created:
            return  # delivered meanwhile
        processed = stripe_event_process_isolated(event_pk=row.pk)
    except Exception as exc:  # noqa: BLE001 - one event never stalls the others
        report.add(kind="event", obj=event["id"], found=found, action=f"failed: {exc}"[:300], repaired=False)
        return
    report.events_missing += 1
    if processed is None:
        row.refresh_from_db()
        action, repaired = f"put in the inbox; processing failed, retried: {row.reconcile_error}", False
    elif processed.status == StripeEventStatus.REFUSED:
        action, repaired = f"put in the inbox; refused: {processed.outcome}", False
    else:
        action, repaired = f"put in the inbox and processed: {processed.outcome}", True
    report.add(kind="event", obj=event["id"], found=found, action=action[:300], repaired=repaired)


# -- 2. payments --------------------------------------------------------------------------------------
def _payments(*, since: datetime, settled_before: datetime, report: _Report) -> None:
    compared: set[uuid.UUID] = set()
    for intent in gateway.payment_intents_list(created_after=since):
        attempt = _ours(PaymentAttempt, intent.metadata.get("payment_attempt_id"))
        if attempt is None:
            continue  # not a payment of ours (another system on the account)
        compared.add(attempt.pk)
        report.payments_checked += 1
        _payment_compare(attempt=attempt, intent=intent, settled_before=settled_before, report=report)
    unsettled = (
        PaymentAttempt.objects.filter(
            status__in=[AttemptStatus.PENDING, AttemptStatus.UNKNOWN, AttemptStatus.REQUIRES_ACTION],
            updated_at__lt=settled_before,
        )
        .exclude(stripe_payment_intent_id="")
        .exclude(pk__in=compared)
    )
    for attempt in unsettled.iterator():
        report.payments_checked += 1
        try:
            intent = gateway.payment_intent_retrieve(payment_intent_id=attempt.stripe_payment_intent_id)
        except gateway.PaymentGatewayError as exc:
            report.add(
                kind="payment",
                obj=str(attempt.pk),
                found=f"ours {attempt.status}",
                action=f"failed: {exc}",
                repaired=False,
            )
            continue
        _payment_compare(attempt=attempt, intent=intent, settled_before=settled_before, report=report)


def _payment_compare(
    *, attempt: PaymentAttempt, intent: gateway.ChargeResult, settled_before: datetime, report: _Report
) -> None:
    from billing.services.payments import PaymentResultMismatch, payment_attempt_record

    if attempt.status in _SAME_PAYMENT[intent.status] or attempt.updated_at >= settled_before:
        return
    obj = f"{attempt.pk} ({intent.payment_intent_id})"
    found = f"ours {attempt.status}, Stripe's {intent.status}"
    try:
        assert intent.payment_intent_id is not None  # listed from Stripe: it has an id
        fresh = gateway.payment_intent_retrieve(payment_intent_id=intent.payment_intent_id)
        if attempt.status in _SAME_PAYMENT[fresh.status]:
            return  # the listing was behind
        recorded = payment_attempt_record(attempt_id=attempt.pk, result=fresh)
    except PaymentResultMismatch as exc:
        report.add(kind="payment", obj=obj, found=found, action=f"refused: {exc.message}", repaired=False)
        return
    except Exception as exc:  # noqa: BLE001 - one payment never stalls the others
        report.add(kind="payment", obj=obj, found=found, action=f"failed: {exc}"[:300], repaired=False)
        return
    if recorded.status in _SAME_PAYMENT[fresh.status]:
        report.add(kind="payment", obj=obj, found=found, action=f"recorded {recorded.status}", repaired=True)
    else:
        action = f"Stripe's {fresh.status} cannot follow our {recorded.status}: needs an operator"
        report.add(kind="payment", obj=obj, found=found, action=action, repaired=False)


# -- 3. refunds ---------------------------------------------------------------------------------------
def _refunds(*, since: datetime, settled_before: datetime, report: _Report) -> None:
    compared: set[uuid.UUID] = set()
    for record in gateway.refunds_list(created_after=since):
        refund = _ours(Refund, record.metadata.get("refund_id"))
        if refund is None:
            _refund_not_ours(record=record, report=report)
            continue
        compared.add(refund.pk)
        report.refunds_checked += 1
        _refund_compare(refund=refund, record=record, report=report)
    unsettled = Refund.objects.filter(
        status__in=[RefundStatus.PENDING, RefundStatus.UNKNOWN], created_at__lt=settled_before
    ).exclude(pk__in=compared)
    for refund in unsettled.iterator():
        report.refunds_checked += 1
        obj = f"{refund.pk} ({refund.stripe_refund_id or 'no Stripe id'})"
        if not refund.stripe_refund_id:
            found = f"ours {refund.status}, not at Stripe"
            action = "left to the refund reconciler (it sends it with the same key)"
            report.add(kind="refund", obj=obj, found=found, action=action, repaired=False)
            continue
        try:
            result, amount, metadata = gateway.refund_retrieve(refund_id=refund.stripe_refund_id)
        except gateway.PaymentGatewayError as exc:
            report.add(
                kind="refund", obj=obj, found=f"ours {refund.status}", action=f"failed: {exc}", repaired=False
            )
            continue
        record = gateway.RefundRecord(
            id=result.id, status=result.status, amount=amount, payment_intent_id=None, metadata=metadata
        )
        _refund_compare(refund=refund, record=record, report=report)


def _refund_not_ours(*, record: gateway.RefundRecord, report: _Report) -> None:
    """A refund at Stripe that we did not make: reported when it is on one of our payments."""
    attempt = (
        PaymentAttempt.objects.filter(stripe_payment_intent_id=record.payment_intent_id).first()
        if record.payment_intent_id
        else None
    )
    if attempt is None:
        return
    amount = format_money(record.amount.amount_minor, record.amount.currency) if record.amount else "?"
    report.add(
        kind="refund",
        obj=record.id,
        found=f"a refund of {amount} ({record.status}) on our payment {attempt.pk} that we did not make",
        action="reported: an operator records it (refund and credit note) if it stands",
        repaired=False,
    )


def _refund_compare(*, refund: Refund, record: gateway.RefundRecord, report: _Report) -> None:
    target = _REFUND_STATUS.get(record.status or "")
    if target == refund.status:
        return
    obj = f"{refund.pk} ({record.id})"
    found = f"ours {refund.status}, Stripe's {record.status}"
    if record.amount != Money(refund.amount_minor, refund.currency) or record.metadata.get(
        "refund_id"
    ) != str(refund.pk):
        report.add(
            kind="refund", obj=obj, found=found, action="refused: amount or refund id differ", repaired=False
        )
        return
    if target is None or target not in REFUND_TRANSITIONS[refund.status]:
        action = f"Stripe's {record.status} cannot follow our {refund.status}: needs an operator"
        report.add(kind="refund", obj=obj, found=found, action=action, repaired=False)
        return
    try:
        settled = _refund_settle(refund_id=refund.pk, to=target, stripe_refund_id=record.id)
    except Exception as exc:  # noqa: BLE001 - one refund never stalls the others
        report.add(kind="refund", obj=obj, found=found, action=f"failed: {exc}"[:300], repaired=False)
        return
    report.add(kind="refund", obj=obj, found=found, action=f"settled {settled.status}", repaired=True)


def _refund_settle(*, refund_id: uuid.UUID, to: str, stripe_refund_id: str) -> Refund:
    """Record the state Stripe holds, with the credit note of a success (`refunds.refund_settle`)."""
    if to not in REFUND_TRANSITIONS[Refund.objects.get(pk=refund_id).status]:
        return Refund.objects.get(pk=refund_id)
    return refund_settle(refund_id=refund_id, to=to, stripe_refund_id=stripe_refund_id)


# -- 4. invoices --------------------------------------------------------------------------------------
def _invoices(*, since: datetime, report: _Report) -> None:
    unpaid = PaymentAttempt.objects.filter(
        status=AttemptStatus.SUCCEEDED, updated_at__gte=since, invoice__status=InvoiceStatus.OPEN
    ).select_related("invoice")
    for attempt in unpaid:
        report.add(
            kind="invoice",
            obj=str(attempt.invoice),
            found=f"open although its payment {attempt.pk} succeeded",
            action="reported: an operator checks the fulfilment",
            repaired=False,
        )


def _ours(model: Any, value: Any) -> Any:
    try:
        pk = uuid.UUID(str(value))
    except ValueError:
        return None
    return model.objects.filter(pk=pk).first()
