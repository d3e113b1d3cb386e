"""Small database helpers shared by the apps' models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from django.db import connections, models, router

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


def rows_update(objs: Sequence[models.Model], fields: Sequence[str]) -> int:
    """Save `fields` of many rows of one model in one statement: `bulk_update` without its
    per-row CASE expressions, which cost more in Python than the update in PostgreSQL
    (`UPDATE ... FROM (VALUES ...)`). Other databases (the SQLite demo): `bulk_update`.
    Like `bulk_update`, it calls no `save()` and sets no `auto_now` field."""
    if not objs:
        return 0
    model = type(objs[0])
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        return model._default_manager.bulk_update(objs, list(fields))
    pk = model._meta.pk
    assert pk is not None  # every model has one
    columns: list[models.Field] = [pk, *(cast(models.Field, model._meta.get_field(name)) for name in fields)]
    casts = ", ".join(f"%s::{field.db_type(connection)}" for field in columns)
    values = ", ".join([f"({casts})"] * len(objs))
    quote = connection.ops.quote_name
    names = ", ".join(quote(str(field.column)) for field in columns)
    table = quote(model._meta.db_table)
    assignments = ", ".join(f"{quote(str(f.column))} = v.{quote(str(f.column))}" for f in columns[1:])
    params = [
        field.get_db_prep_save(getattr(obj, field.attname), connection) for obj in objs for field in columns
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {assignments} FROM (VALUES {values}) AS v({names}) "
            f"WHERE {table}.{quote(str(pk.column))} = v.{quote(str(pk.column))}",
            params,
        )
        return cursor.rowcount
