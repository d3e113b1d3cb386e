"""Read-only queries of the billing app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet

from billing.models import Entitlement


@dataclass(frozen=True)
class ActiveFeature:
    """A feature a vehicle may use at an instant, with how long it stays valid (None: perpetual)."""

    code: str
    valid_until: datetime | None
    sources: tuple[str, ...]


def entitlements_active_at(*, vehicle_id, at: datetime) -> QuerySet[Entitlement]:
    """Rows whose half-open `[starts_at, ends_at)` contains `at`."""
    return Entitlement.objects.filter(vehicle_id=vehicle_id, starts_at__lte=at).filter(
        Q(ends_at__isnull=True) | Q(ends_at__gt=at)
    )


def features_active_at(*, vehicle_id, at: datetime) -> list[ActiveFeature]:
    """Which features may this vehicle use at instant `at` — one query.

    A feature covered by several rows (a purchase and a grant, say) is valid until the latest
    of their ends. Back-to-back subscription periods are merged: a period starting exactly
    at the current period's end extends the validity, so the car sees no gap at renewal.
    """
    rows = (
        Entitlement.objects.filter(vehicle_id=vehicle_id)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=at))
        .values_list("feature__code", "source", "starts_at", "ends_at")
        .order_by("feature__code", "starts_at")
    )
    by_code: dict[str, list[tuple[str, datetime, datetime | None]]] = {}
    for code, source, starts_at, ends_at in rows:
        by_code.setdefault(code, []).append((source, starts_at, ends_at))
    active = []
    for code, spans in by_code.items():
        covering = [s for s in spans if s[1] <= at]
        if not covering:
            continue
        until: datetime | None = at
        perpetual = any(end is None for _, _, end in covering)
        if not perpetual:
            until = max(end for _, _, end in covering)  # type: ignore[type-var]
            for _, starts_at, ends_at in spans:  # chain contiguous later spans
                if starts_at <= until and (ends_at is None or ends_at > until):
                    until = ends_at
                    if until is None:
                        break
        active.append(
            ActiveFeature(
                code=code,
                valid_until=None if perpetual else until,
                sources=tuple(sorted({source for source, _, _ in covering})),
            )
        )
    return active
