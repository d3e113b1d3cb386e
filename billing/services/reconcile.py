"""What a reconciler does with a row it could not settle: record, back off, dead-letter.

Rows are isolated: one that raises never stops the others. A payment provider that is down is
nobody's fault: the row is retried a minute later without counting towards the dead letter.
Any other error counts; the wait doubles (1, 2, 4... minutes, capped at a day) and after
`settings.RECONCILE_MAX_FAILURES` (default 5) the row is dead-lettered: admin lists it with the
reason and a "retry now" action, and the reconciler leaves it alone until then.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.gateways import stripe as gateway
from billing.models.payments import ReconcileState

log = structlog.get_logger(__name__)
MAX_BACKOFF = timedelta(days=1)
T = TypeVar("T")


def reconcile_max_failures() -> int:
    return getattr(settings, "RECONCILE_MAX_FAILURES", 5)


def reconcile_failure_record(
    *, model: type[ReconcileState], pk: Any, error: BaseException, at: datetime
) -> None:
    message = f"{type(error).__name__}: {error}"[:500]
    with transaction.atomic():
        row = model._default_manager.select_for_update().filter(pk=pk).first()
        if row is None:
            return
        if isinstance(error, gateway.PaymentGatewayError) and not isinstance(error, gateway.InvalidRequest):
            row.next_reconcile_at = at + timedelta(minutes=1)
            row.reconcile_error = message
            row.save(update_fields=["next_reconcile_at", "reconcile_error"])
            log.warning("reconcile_provider_unavailable", model=model.__name__, row=str(pk), error=message)
            return
        row.reconcile_failures += 1
        row.reconcile_error = message
        row.next_reconcile_at = at + min(MAX_BACKOFF, timedelta(minutes=2 ** (row.reconcile_failures - 1)))
        fields = ["reconcile_failures", "reconcile_error", "next_reconcile_at"]
        if row.reconcile_failures >= reconcile_max_failures():
            row.dead_lettered_at = at
            fields.append("dead_lettered_at")
        row.save(update_fields=fields)
    log.error(
        "reconcile_row_failed",
        model=model.__name__,
        row=str(pk),
        error=message,
        failures=row.reconcile_failures,
        dead_lettered=row.dead_lettered_at is not None,
    )


def reconcile_retry_now(*, model: type[ReconcileState], pk: Any, work: Callable[[], T]) -> T:
    """An operator's "retry now": clear the row's back-off and dead letter, then `work()`; an error
    is recorded on the row again (and re-raised for the operator to see)."""
    model._default_manager.filter(pk=pk).update(
        dead_lettered_at=None, reconcile_failures=0, next_reconcile_at=None, reconcile_error=""
    )
    try:
        return work()
    except Exception as exc:
        reconcile_failure_record(model=model, pk=pk, error=exc, at=timezone.now())
        raise
