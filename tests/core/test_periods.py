"""Billing periods laid out from an anchor: contiguous, non-overlapping, day clamped to the month."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, timezone
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.periods import Interval, Period, add_interval, next_period, period_at, periods

any_anchor = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 12, 31, 23, 59, 59), timezones=st.just(UTC)
)


@st.composite
def month_end_anchors(draw) -> datetime:
    """Days 28..31, where clamping happens; the plain strategy rarely lands there."""
    year, month = draw(st.integers(1990, 2100)), draw(st.integers(1, 12))
    day = draw(st.integers(28, calendar.monthrange(year, month)[1]))
    return draw(any_anchor).replace(year=year, month=month, day=day)


anchors = st.one_of(any_anchor, month_end_anchors())
intervals = st.sampled_from(list(Interval))
TEN_YEARS = {Interval.MONTH: 120, Interval.YEAR: 10}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@given(anchor=anchors, interval=intervals)
def test_ten_years_of_periods_are_contiguous_and_keep_the_anchor_day(anchor, interval):
    schedule = list(islice(periods(anchor, interval), TEN_YEARS[interval]))
    assert schedule[0].start == anchor
    for current, following in pairwise(schedule):
        assert current.end == following.start  # contiguous
        assert not current.overlaps(following)  # never overlap
        assert current.start < following.start  # strictly increasing
        assert next_period(anchor, interval, current) == following
    for n, period in enumerate(schedule):
        days_in_month = calendar.monthrange(period.start.year, period.start.month)[1]
        assert period.start.day == min(anchor.day, days_in_month)
        assert period.start.time() == anchor.time()
        assert period.start == add_interval(anchor, interval=interval, count=n)
        months = (period.start.year - anchor.year) * 12 + period.start.month - anchor.month
        assert months == n * (12 if interval is Interval.YEAR else 1)
    assert not schedule[0].overlaps(schedule[-1]) or len(schedule) == 1


@given(anchor=anchors, interval=intervals, offset=st.integers(min_value=0, max_value=10 * 366 * 24 * 3600))
def test_period_at_contains_the_instant(anchor, interval, offset):
    at = anchor + timedelta(seconds=offset, microseconds=offset % 1000)
    period = period_at(anchor, interval, at)
    assert period.contains(at)
    assert at in period
    assert period in islice(periods(anchor, interval), TEN_YEARS[interval] + 1)


@given(anchor=anchors, interval=intervals, offset=st.integers(min_value=1, max_value=10**9))
def test_period_at_refuses_instants_before_the_anchor(anchor, interval, offset):
    with pytest.raises(ValueError):
        period_at(anchor, interval, anchor - timedelta(microseconds=offset))


def test_month_end_anchor_clamps_and_returns_to_the_31st():
    anchor = utc(2023, 1, 31, 10, 30)
    starts = [p.start for p in islice(periods(anchor, Interval.MONTH), 5)]
    assert starts == [
        utc(2023, 1, 31, 10, 30),
        utc(2023, 2, 28, 10, 30),
        utc(2023, 3, 31, 10, 30),
        utc(2023, 4, 30, 10, 30),
        utc(2023, 5, 31, 10, 30),
    ]


def test_leap_year_february_has_29():
    anchor = utc(2024, 1, 31)
    assert add_interval(anchor, interval=Interval.MONTH, count=1) == utc(2024, 2, 29)
    assert add_interval(anchor, interval=Interval.MONTH, count=2) == utc(2024, 3, 31)
    assert add_interval(utc(2024, 1, 30), interval=Interval.MONTH, count=1) == utc(2024, 2, 29)
    assert add_interval(utc(2024, 1, 29), interval=Interval.MONTH, count=1) == utc(2024, 2, 29)
    assert add_interval(utc(2024, 1, 28), interval=Interval.MONTH, count=1) == utc(2024, 2, 28)


def test_yearly_feb_29_anchor_returns_to_the_29th_in_leap_years():
    anchor = utc(2024, 2, 29, 12)
    starts = [p.start for p in islice(periods(anchor, Interval.YEAR), 9)]
    assert starts == [
        utc(2024, 2, 29, 12),
        utc(2025, 2, 28, 12),
        utc(2026, 2, 28, 12),
        utc(2027, 2, 28, 12),
        utc(2028, 2, 29, 12),
        utc(2029, 2, 28, 12),
        utc(2030, 2, 28, 12),
        utc(2031, 2, 28, 12),
        utc(2032, 2, 29, 12),
    ]
    assert add_interval(utc(2096, 2, 29), interval=Interval.YEAR, count=4) == utc(
        2100, 2, 28
    )  # 2100 not leap


def test_add_interval_is_computed_from_the_anchor_not_chained():
    anchor = utc(2023, 1, 31)
    chained = add_interval(
        add_interval(anchor, interval=Interval.MONTH, count=1), interval=Interval.MONTH, count=1
    )
    assert chained == utc(2023, 3, 28)  # what chaining from Feb 28 would give
    assert add_interval(anchor, interval=Interval.MONTH, count=2) == utc(2023, 3, 31)


def test_add_interval_negative_and_zero_counts():
    anchor = utc(2024, 3, 31, 8)
    assert add_interval(anchor, interval=Interval.MONTH, count=0) == anchor
    assert add_interval(anchor, interval=Interval.MONTH, count=-1) == utc(2024, 2, 29, 8)
    assert add_interval(anchor, interval=Interval.YEAR, count=-1) == utc(2023, 3, 31, 8)
    assert add_interval(anchor, interval=Interval.MONTH, count=-14) == utc(2023, 1, 31, 8)


def test_interval_accepts_its_string_value():
    assert Interval("month") is Interval.MONTH
    assert add_interval(utc(2024, 1, 15), interval="year", count=1) == utc(2025, 1, 15)


def test_period_at_examples():
    anchor = utc(2024, 1, 31, 9)
    assert period_at(anchor, Interval.MONTH, anchor) == Period(anchor, utc(2024, 2, 29, 9))
    assert period_at(anchor, Interval.MONTH, utc(2024, 2, 29, 8, 59, 59)) == Period(
        anchor, utc(2024, 2, 29, 9)
    )
    assert period_at(anchor, Interval.MONTH, utc(2024, 2, 29, 9)) == Period(
        utc(2024, 2, 29, 9), utc(2024, 3, 31, 9)
    )
    assert period_at(anchor, Interval.YEAR, utc(2030, 6, 1)) == Period(
        utc(2030, 1, 31, 9), utc(2031, 1, 31, 9)
    )


def test_period_is_half_open():
    period = Period(utc(2024, 1, 1), utc(2024, 2, 1))
    assert period.contains(utc(2024, 1, 1))
    assert not period.contains(utc(2024, 2, 1))
    assert period.contains(utc(2024, 1, 31, 23, 59, 59, 999999))
    assert not period.contains(utc(2023, 12, 31, 23, 59, 59, 999999))
    assert period.seconds == 31 * 24 * 3600
    assert period.duration == timedelta(days=31)


def test_overlaps():
    jan = Period(utc(2024, 1, 1), utc(2024, 2, 1))
    feb = Period(utc(2024, 2, 1), utc(2024, 3, 1))
    mid = Period(utc(2024, 1, 15), utc(2024, 2, 15))
    assert not jan.overlaps(feb) and not feb.overlaps(jan)
    assert jan.overlaps(mid) and mid.overlaps(feb) and mid.overlaps(jan)
    assert jan.overlaps(jan)


def test_period_requires_start_before_end():
    with pytest.raises(ValueError):
        Period(utc(2024, 1, 1), utc(2024, 1, 1))
    with pytest.raises(ValueError):
        Period(utc(2024, 2, 1), utc(2024, 1, 1))


def test_naive_datetimes_are_refused():
    naive = datetime(2024, 1, 1)
    aware = utc(2024, 1, 1)
    with pytest.raises(ValueError):
        Period(naive, utc(2024, 2, 1))
    with pytest.raises(ValueError):
        Period(aware, datetime(2024, 2, 1))
    with pytest.raises(ValueError):
        add_interval(naive, interval=Interval.MONTH, count=1)
    with pytest.raises(ValueError):
        period_at(naive, Interval.MONTH, aware)
    with pytest.raises(ValueError):
        period_at(aware, Interval.MONTH, naive)
    with pytest.raises(ValueError):
        next(periods(naive, Interval.MONTH))
    with pytest.raises(ValueError):
        Period(aware, utc(2024, 2, 1)).contains(naive)


def test_non_utc_boundaries_are_refused_but_other_utc_tzinfos_are_normalized():
    with pytest.raises(ValueError):
        Period(datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2))), utc(2024, 2, 1))
    period = Period(datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC")), utc(2024, 2, 1))
    assert period.start.tzinfo is UTC
    # an aware instant in another zone is still comparable for `contains` / `period_at`
    berlin = datetime(2024, 1, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))  # 2023-12-31 23:30 UTC
    assert not period.contains(berlin)
    assert period_at(utc(2023, 12, 1), Interval.MONTH, berlin).start == utc(2023, 12, 1)


def test_next_period_refuses_a_period_off_the_schedule():
    anchor = utc(2024, 1, 15)
    with pytest.raises(ValueError):
        next_period(anchor, Interval.MONTH, Period(utc(2024, 1, 16), utc(2024, 2, 15)))
    with pytest.raises(ValueError):
        next_period(anchor, Interval.MONTH, Period(utc(2023, 12, 15), utc(2024, 1, 15)))
    assert next_period(anchor, Interval.MONTH, Period(anchor, utc(2024, 2, 15))) == Period(
        utc(2024, 2, 15), utc(2024, 3, 15)
    )
