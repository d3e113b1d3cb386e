"""Billing periods: half-open `[start, end)` UTC intervals laid out from an anchor.

Every boundary is computed from the ANCHOR (`anchor + n intervals`), never from the previous
period's end, so a Jan 31 anchor gives Feb 28 (29) -> Mar 31 -> Apr 30 -> May 31: the day is
clamped to the month's length and returns to the anchor day as soon as the month allows.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import count as counter

_ONE_SECOND = timedelta(seconds=1)


class Interval(StrEnum):
    MONTH = "month"
    YEAR = "year"

    @property
    def months(self) -> int:
        return 12 if self is Interval.YEAR else 1


def require_utc(value: datetime, name: str = "datetime") -> datetime:
    """`value` as a UTC datetime; naive or non-UTC datetimes raise ValueError."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}.")
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}.")
    if offset:
        raise ValueError(f"{name} must be in UTC, got offset {offset} ({value.isoformat()}).")
    return value.replace(tzinfo=UTC)


def _require_aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}.")
    if value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}.")
    return value


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open UTC interval `[start, end)` with start < end."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", require_utc(self.start, "start"))
        object.__setattr__(self, "end", require_utc(self.end, "end"))
        if not self.start < self.end:
            raise ValueError(
                f"Period start {self.start.isoformat()} must be before end {self.end.isoformat()}."
            )

    def contains(self, t: datetime) -> bool:
        return self.start <= _require_aware(t, "t") < self.end

    def __contains__(self, t: datetime) -> bool:
        return self.contains(t)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def seconds(self) -> int:
        """Length in whole seconds (what proration counts)."""
        return self.duration // _ONE_SECOND

    def overlaps(self, other: Period) -> bool:
        return self.start < other.end and other.start < self.end


def add_interval(anchor: datetime, *, interval: Interval, count: int) -> datetime:
    """`anchor` moved by `count` intervals; the day is min(anchor day, days in target month).

    Time of day is kept. `count` may be negative. Raises ValueError outside years 1..9999.
    """
    anchor = require_utc(anchor, "anchor")
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, not {type(count).__name__}.")
    year, month0 = divmod(anchor.year * 12 + anchor.month - 1 + count * Interval(interval).months, 12)
    if not 1 <= year <= 9999:
        raise ValueError(f"{anchor.isoformat()} + {count} {interval} is out of range.")
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def _period(anchor: datetime, interval: Interval, n: int) -> Period:
    return Period(
        add_interval(anchor, interval=interval, count=n), add_interval(anchor, interval=interval, count=n + 1)
    )


def _index_at(anchor: datetime, interval: Interval, at: datetime) -> int:
    """n such that anchor + n intervals <= at < anchor + (n + 1) intervals (at >= anchor)."""
    months = (at.year - anchor.year) * 12 + at.month - anchor.month
    n = months // Interval(interval).months
    # The month arithmetic is off by at most one period (day/time within the month); fix it up.
    while n > 0 and add_interval(anchor, interval=interval, count=n) > at:
        n -= 1
    while add_interval(anchor, interval=interval, count=n + 1) <= at:
        n += 1
    return n


def period_at(anchor: datetime, interval: Interval, at: datetime) -> Period:
    """The period of the `anchor`/`interval` schedule that contains `at`; ValueError before `anchor`."""
    anchor = require_utc(anchor, "anchor")
    at = _require_aware(at, "at").astimezone(UTC)
    if at < anchor:
        raise ValueError(f"{at.isoformat()} is before the anchor {anchor.isoformat()}.")
    return _period(anchor, interval, _index_at(anchor, interval, at))


def periods(anchor: datetime, interval: Interval) -> Iterator[Period]:
    """The infinite schedule from `anchor` (use `itertools.islice`)."""
    anchor = require_utc(anchor, "anchor")
    interval = Interval(interval)
    for n in counter():
        yield _period(anchor, interval, n)


def next_period(anchor: datetime, interval: Interval, period: Period) -> Period:
    """The period following `period`, which must be one of the schedule's periods."""
    anchor = require_utc(anchor, "anchor")
    if period.start < anchor:
        raise ValueError(f"{period} starts before the anchor {anchor.isoformat()}.")
    n = _index_at(anchor, interval, period.start)
    if _period(anchor, interval, n) != period:
        raise ValueError(
            f"{period} is not a period of the {interval} schedule anchored at {anchor.isoformat()}."
        )
    return _period(anchor, interval, n + 1)
