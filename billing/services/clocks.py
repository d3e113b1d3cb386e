"""One clock for every billing decision, and test clocks to move it forward (outside production).

`clock_now(owner_id=...)` is the instant a decision about that owner is taken at: the real time,
or the frozen time of the test clock the owner is attached to. The scheduled sweeps leave owners
on test clocks alone; `test_clock_advance` runs their boundaries instead, one after the other in
time order (renewals and trial conversions, dunning retries, unpaid cancellations, trial
reminders), each at its own instant, until the target time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing.models import Subscription, SubscriptionStatus, TestClock, TestClockOwner
from core.errors import BusinessRuleViolation, ErrorCode, ValidationError
from vehicles.models import Owner

MAX_STEPS = 10_000  # boundaries run by one advance (two years of daily retries stay well below)
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d|w|mo)\s*$")
_UNITS = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "min": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def clock_now(*, owner_id: int | None = None) -> datetime:
    """The instant billing decisions about `owner_id` are taken at."""
    if owner_id is not None:
        frozen = (
            TestClockOwner.objects.filter(owner_id=owner_id)
            .values_list("clock__frozen_time", flat=True)
            .first()
        )
        if frozen is not None:
            return frozen
    return timezone.now()


def owners_on_test_clocks() -> QuerySet[TestClockOwner, Any]:
    """Owner ids the real-time sweeps must leave to their test clock (a subquery)."""
    return TestClockOwner.objects.values("owner_id")


def _refuse_in_production() -> None:
    if getattr(settings, "PRODUCTION", False):
        raise BusinessRuleViolation(
            "Test clocks exist only outside production.", code=ErrorCode.INVALID_STATE
        )


def test_clock_create(*, name: str, at: datetime | None = None, created_by: Any = None) -> TestClock:
    _refuse_in_production()
    return TestClock.objects.create(name=name, frozen_time=at or timezone.now(), created_by=created_by)


def test_clock_attach(*, clock: TestClock, owner: Owner) -> TestClockOwner:
    """Attach an owner (moved from any other clock). Their decisions read the clock from now on."""
    _refuse_in_production()
    membership, _ = TestClockOwner.objects.update_or_create(owner=owner, defaults={"clock": clock})
    return membership


def test_clock_for_owner(*, owner: Owner, created_by: Any = None) -> TestClock:
    """The owner's clock, created at the real time (and attached) if they have none."""
    membership = TestClockOwner.objects.select_related("clock").filter(owner=owner).first()
    if membership is not None:
        return membership.clock
    clock = test_clock_create(name=f"clock-{owner.email or owner.pk}", created_by=created_by)
    test_clock_attach(clock=clock, owner=owner)
    return clock


def parse_duration(text: str) -> timedelta | int:
    """`30d`, `12h`, `90m`/`90min`, `2w`, `45s`; `3mo` returns the int 3 (calendar months)."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValidationError(
            f"Not a duration: {text!r}. Use e.g. 30d, 12h, 90min, 2w or 3mo.", code=ErrorCode.VALIDATION_ERROR
        )
    count, unit = int(match.group(1)), match.group(2)
    return count if unit == "mo" else count * _UNITS[unit]


def advance_target(*, clock: TestClock, by: str | None = None, to: datetime | None = None) -> datetime:
    from core.periods import Interval, add_interval

    if (by is None) == (to is None):
        raise ValidationError("Give exactly one of `by` and `to`.")
    if to is not None:
        if to.tzinfo is None:
            raise ValidationError("`to` must carry a timezone (e.g. 2027-03-01T00:00:00Z).")
        return to
    assert by is not None  # exactly one of `by` and `to`
    step = parse_duration(by)
    if isinstance(step, int):
        return add_interval(clock.frozen_time, interval=Interval.MONTH, count=step)
    return clock.frozen_time + step


@dataclass
class AdvanceReport:
    start: datetime
    end: datetime
    steps: int = 0
    renewed: int = 0
    canceled: int = 0
    declined: int = 0
    retried: int = 0
    recovered: int = 0
    unpaid_canceled: int = 0
    reminded: int = 0
    errors: list[str] = field(default_factory=list)


def _next_boundary(*, owner_ids: list[int], after: datetime, until: datetime) -> datetime | None:
    """The earliest instant in (after, until] at which something is due for these owners."""
    from billing.services.dunning import trial_reminder_lead

    subscriptions = Subscription.objects.filter(owner_id__in=owner_ids)
    candidates = []
    renewal = (
        subscriptions.filter(
            status__in=[SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE],
            current_period_end__gt=after,
            current_period_end__lte=until,
        )
        .order_by("current_period_end")
        .values_list("current_period_end", flat=True)
        .first()
    )
    retry = (
        subscriptions.filter(
            status=SubscriptionStatus.PAST_DUE, next_retry_at__gt=after, next_retry_at__lte=until
        )
        .order_by("next_retry_at")
        .values_list("next_retry_at", flat=True)
        .first()
    )
    candidates += [t for t in (renewal, retry) if t is not None]
    for since, days in subscriptions.filter(
        status=SubscriptionStatus.UNPAID, unpaid_since__isnull=False
    ).values_list("unpaid_since", "offer__unpaid_cancel_days"):
        assert since is not None  # filtered on it
        due = since + timedelta(days=days)
        if after < due <= until:
            candidates.append(due)
    lead = trial_reminder_lead()
    for trial_end in subscriptions.filter(
        status=SubscriptionStatus.TRIALING, trial_end__isnull=False, trial_reminder_sent_at__isnull=True
    ).values_list("trial_end", flat=True):
        assert trial_end is not None  # filtered on it
        due = trial_end - lead
        if after < due <= until:
            candidates.append(due)
    return min(candidates) if candidates else None


def test_clock_advance(
    *, clock: TestClock, to: datetime, progress: Callable[[str], None] | None = None
) -> AdvanceReport:
    """Move `clock` to `to`, running every boundary in between in time order."""
    from billing.services.dunning import dunning_sweep
    from billing.services.renewals import subscriptions_renew_due

    _refuse_in_production()
    clock = TestClock.objects.get(pk=clock.pk)
    if to < clock.frozen_time:
        raise BusinessRuleViolation(
            "A test clock only moves forward; create a new clock to start over.", code=ErrorCode.INVALID_STATE
        )
    owner_ids = list(clock.members.values_list("owner_id", flat=True))
    report = AdvanceReport(start=clock.frozen_time, end=to)
    after = clock.frozen_time - timedelta(microseconds=1)  # what is due at the current instant runs too
    while report.steps < MAX_STEPS:
        boundary = _next_boundary(owner_ids=owner_ids, after=after, until=to)
        if boundary is None:
            break
        _set(clock, boundary)
        renewals = subscriptions_renew_due(at=boundary, owner_ids=owner_ids)
        dunning = dunning_sweep(at=boundary, owner_ids=owner_ids)
        report.steps += 1
        report.renewed += renewals.renewed
        report.canceled += renewals.canceled
        report.declined += renewals.declined + dunning.declined
        report.retried += dunning.retried
        report.recovered += dunning.recovered
        report.unpaid_canceled += dunning.canceled
        report.reminded += dunning.reminded
        report.errors += renewals.errors + dunning.errors
        if progress is not None:
            progress(
                f"{boundary:%Y-%m-%d %H:%M:%S} renewed {renewals.renewed}, ended {renewals.canceled}, "
                f"declined {renewals.declined + dunning.declined}, retried {dunning.retried} "
                f"(recovered {dunning.recovered}), unpaid canceled {dunning.canceled}, "
                f"reminders {dunning.reminded}"
            )
        after = boundary
    _set(clock, to)
    return report


def _set(clock: TestClock, at: datetime) -> None:
    with transaction.atomic():
        TestClock.objects.filter(pk=clock.pk).update(frozen_time=at)
    clock.frozen_time = at
