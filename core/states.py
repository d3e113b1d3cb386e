"""Status changes through a transition table: the one mechanism behind every `*_transition`.

Each stateful model keeps its table (`{status: frozenset of allowed next statuses}`) beside it
and one `<model>_transition` function in its app's services that calls `transition_apply`.
Nothing else writes a `status` (a static test, tests/test_static_transitions.py, keeps it so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import models
from django.utils import timezone

from core.db import rows_update
from core.errors import BusinessRuleViolation, ErrorCode


def transition_allowed(table: Mapping[str, frozenset[str]], current: str, to: str) -> bool:
    return to in table[current]


def _refuse_unless_allowed(obj: models.Model, *, table: Mapping[Any, frozenset[Any]], to: str) -> None:
    """Raise `invalid_state` when the table does not allow `obj`'s move to `to`."""
    current = obj.status  # type: ignore[attr-defined]
    if not transition_allowed(table, current, to):
        raise BusinessRuleViolation(
            f"A {obj._meta.verbose_name} cannot go from {current} to {to}.",
            code=ErrorCode.INVALID_STATE,
            details={"from": current, "to": to},
        )


def transition_apply(
    obj: models.Model,
    *,
    table: Mapping[Any, frozenset[Any]],  # a TextChoices -> frozenset[TextChoices] table too
    to: str,
    changes: Mapping[str, Any] | None = None,
    save: bool = True,
) -> bool:
    """Move `obj` (a row the caller holds locked) to `to` and save it with `changes`.

    Staying in the same status is a no-op that returns False (so a retried step is harmless);
    a move the table does not allow raises `invalid_state` and changes nothing.
    """
    if to == obj.status:  # type: ignore[attr-defined]
        return False
    _refuse_unless_allowed(obj, table=table, to=to)
    fields = ["status"]
    for name, value in (changes or {}).items():
        setattr(obj, name, value)
        fields.append(name)
    obj.status = to  # type: ignore[attr-defined]
    if save:
        if any(f.name == "updated_at" for f in obj._meta.concrete_fields):
            fields.append("updated_at")
        obj.save(update_fields=fields)
    return True


def transition_apply_many(
    objs: Sequence[models.Model],
    *,
    table: Mapping[Any, frozenset[Any]],
    to: str,
    changes: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
) -> list[models.Model]:
    """`transition_apply` for many rows of one model, saved in one statement (a batch).

    `changes`: the same for every row, or one mapping per row. Every move is checked before any
    row is touched: one the table does not allow raises `invalid_state` and changes nothing.
    Rows already in `to` are left alone (as `transition_apply` does). Returns the rows moved.
    """
    per_row = (
        [changes or {}] * len(objs) if changes is None or isinstance(changes, Mapping) else list(changes)
    )
    if len(per_row) != len(objs):
        raise ValueError("one mapping of changes per row")
    moving = [(obj, row_changes) for obj, row_changes in zip(objs, per_row, strict=True) if obj.status != to]  # type: ignore[attr-defined]
    for obj, _ in moving:
        _refuse_unless_allowed(obj, table=table, to=to)
    if not moving:
        return []
    model = type(moving[0][0])
    fields = {"status"}
    stamp = any(f.name == "updated_at" for f in model._meta.concrete_fields)
    now = timezone.now()
    for obj, row_changes in moving:
        for name, value in row_changes.items():
            setattr(obj, name, value)
            fields.add(name)
        obj.status = to  # type: ignore[attr-defined]
        if stamp:
            obj.updated_at = now  # type: ignore[attr-defined]
    if stamp:
        fields.add("updated_at")
    rows_update([obj for obj, _ in moving], sorted(fields))
    return [obj for obj, _ in moving]
