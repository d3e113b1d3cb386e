"""Small database helpers shared by the apps' models."""

from __future__ import annotations

from typing import Any

from django.db import models

from core.money import CURRENCY_CODES


def currency_field(**kwargs: Any) -> models.CharField:
    return models.CharField(max_length=3, help_text="ISO 4217 code, e.g. EUR", **kwargs)


def valid_currency_constraint(field: str, name: str) -> models.CheckConstraint:
    """The database refuses any currency that is not in the ISO 4217 table."""
    return models.CheckConstraint(condition=models.Q(**{f"{field}__in": CURRENCY_CODES}), name=name)


def non_negative_constraint(field: str, name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=models.Q(**{f"{field}__gte": 0}), name=name)


def half_open_constraint(
    start: str, end: str, name: str, *, allow_empty: bool = False
) -> models.CheckConstraint:
    """`[start, end)` must not be empty (or, with `allow_empty`, not negative: `[t, t)` is a
    period that never covers any instant); a NULL end means open-ended."""
    bound = f"{end}__gte" if allow_empty else f"{end}__gt"
    return models.CheckConstraint(
        condition=models.Q(**{f"{end}__isnull": True}) | models.Q(**{bound: models.F(start)}),
        name=name,
    )
