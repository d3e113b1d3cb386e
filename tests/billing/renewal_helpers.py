"""Shared by the renewal tests at fleet scale (`test_renewals_fleet.py`, `test_renewals_batch.py`):
a fleet of subscriptions due a minute ago, and the invoices of their next period.
The `local_stripe` fixture they use is in `tests/billing/conftest.py`."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from benchmarks.renewals import SeededFleet, renewal_fleet_seed
from billing.models import Invoice


def due_fleet(count: int, *, per_owner: int = 20) -> SeededFleet:
    return renewal_fleet_seed(
        subscriptions=count, period_end=timezone.now() - dt.timedelta(minutes=1), per_owner=per_owner
    )


def renewal_invoices(fleet: SeededFleet):
    return Invoice.objects.filter(subscription_id__in=fleet.subscription_ids, period_start=fleet.period_end)
