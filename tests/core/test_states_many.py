"""`transition_apply_many` (a batch of status changes through the table, one statement) and
`rows_update` (`UPDATE ... FROM (VALUES ...)` on PostgreSQL) behind it."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from benchmarks.renewals import renewal_fleet_seed
from billing.models import Subscription, SubscriptionStatus
from billing.models.subscriptions import SUBSCRIPTION_TRANSITIONS
from core.db import rows_update
from core.errors import BusinessRuleViolation
from core.states import transition_apply_many

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)


def subscriptions(count: int) -> list[Subscription]:
    fleet = renewal_fleet_seed(subscriptions=count, period_end=NOW, per_owner=count)
    return list(Subscription.objects.filter(pk__in=fleet.subscription_ids).order_by("pk"))


def test_many_rows_move_in_one_statement_with_their_changes():
    rows = subscriptions(3)
    before = timezone.now()

    with CaptureQueriesContext(connection) as queries:
        moved = transition_apply_many(
            rows,
            table=SUBSCRIPTION_TRANSITIONS,
            to=SubscriptionStatus.PAST_DUE,
            changes=[{"dunning_retries": n} for n in range(3)],
        )

    assert len(queries) == 1 and len(moved) == 3
    saved = dict(Subscription.objects.values_list("pk", "dunning_retries"))
    assert [saved[row.pk] for row in rows] == [0, 1, 2]
    assert set(Subscription.objects.values_list("status", flat=True)) == {SubscriptionStatus.PAST_DUE}
    assert all(row.updated_at >= before for row in Subscription.objects.all())


def test_one_move_the_table_refuses_changes_no_row():
    rows = subscriptions(3)
    Subscription.objects.filter(pk=rows[1].pk).update(status=SubscriptionStatus.CANCELED)
    rows = list(Subscription.objects.order_by("pk"))

    with pytest.raises(BusinessRuleViolation):
        transition_apply_many(rows, table=SUBSCRIPTION_TRANSITIONS, to=SubscriptionStatus.PAST_DUE)

    statuses = sorted(Subscription.objects.values_list("status", flat=True))
    assert statuses == ["active", "active", "canceled"]


def test_rows_already_there_are_left_alone():
    rows = subscriptions(2)

    assert transition_apply_many(rows, table=SUBSCRIPTION_TRANSITIONS, to=SubscriptionStatus.ACTIVE) == []


def test_rows_update_saves_each_rows_own_values():
    rows = subscriptions(4)
    for n, row in enumerate(rows):
        row.current_period_end = NOW + dt.timedelta(days=n)

    assert rows_update(rows, ["current_period_end"]) == 4

    ends = dict(Subscription.objects.values_list("pk", "current_period_end"))
    assert [ends[row.pk] for row in rows] == [NOW + dt.timedelta(days=n) for n in range(4)]
