"""Read-only figures for operators: MRR and its movements, revenue, attach rate, trials, refunds.

Every figure is aggregated in SQL: the number of queries does not grow with the data (one query
per figure, one per month for the movements). Money stays in integer minor units per currency:
currencies are never mixed, nothing is converted.

Definitions (also on the dashboard):
- **MRR** of a subscription: its price per month, for every instant it is live and paid for —
  from its start (or the end of its trial) to its end; an `incomplete` subscription (first
  payment never made) counts for nothing. A yearly price counts as a twelfth: sums are kept in
  twelfths of a minor unit (exact integers) and rounded once per currency, half away from zero.
- **Movements** are counted per car (the car holds the rights, so it is the account): between the
  start and the end of a month a car whose MRR went from 0 to more is *new*, or *reactivation*
  when one of its paid subscriptions had ended before; from more to 0 is *churn*; up or down is
  *expansion* / *contraction*. MRR(end) - MRR(start) = new + reactivation + expansion +
  contraction - churn, exactly. An in-place plan change counts at the subscription's current price
  for its whole life (the price history lives in the audit trail, not in the subscription row).
- **Revenue**: paid invoices, net of VAT, before refunds (shown apart); a bundle's line is split
  evenly over its features (largest remainder, so the parts add up to the line).
- **Attach rate**: of the cars of a model, the share that may use a feature now (any source).
- **Trial conversion**: of the trials that are over, the share whose subscription went on paid.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce

from billing.models import (
    Entitlement,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Offer,
    Refund,
    RefundStatus,
    Subscription,
    SubscriptionStatus,
)
from core.rounding import round_minor
from vehicles.models import Vehicle

MOVEMENTS = ("new", "expansion", "contraction", "churn", "reactivation")


def month_start(at: datetime) -> datetime:
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def add_months(at: datetime, months: int) -> datetime:
    index = at.year * 12 + at.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _twelfths() -> Case:
    """A subscription's price per month, in twelfths of a minor unit (exact for yearly prices)."""
    return Case(
        When(offer__interval=Offer.Interval.YEAR, then=F("price__amount_minor")),
        default=F("price__amount_minor") * 12,
        output_field=IntegerField(),
    )


def _paying_at(at: datetime) -> Q:
    """A subscription that counts for MRR at instant `at`."""
    return (
        Q(created_at__lte=at)
        & ~Q(status=SubscriptionStatus.INCOMPLETE)
        & (Q(trial_end__isnull=True) | Q(trial_end__lte=at))
        & (Q(ended_at__isnull=True) | Q(ended_at__gt=at))
    )


def twelfths_to_minor(twelfths: int) -> int:
    return round_minor(Fraction(twelfths, 12))


def mrr_at(*, at: datetime) -> dict[str, int]:
    """MRR per currency at an instant, in minor units. One query."""
    rows = (
        Subscription.objects.filter(_paying_at(at))
        .values("price__currency")
        .annotate(twelfths=Sum(_twelfths()))
        .order_by("price__currency")
    )
    return {row["price__currency"]: twelfths_to_minor(row["twelfths"]) for row in rows}


@dataclass
class MonthMovements:
    month: datetime
    currency: str
    start_minor: int = 0
    end_minor: int = 0
    moves: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MOVEMENTS, 0))


def _vehicle_mrr_twelfths(at: datetime) -> Coalesce:
    subscriptions = (
        Subscription.objects.filter(_paying_at(at), vehicle=OuterRef("pk"))
        .order_by()
        .values("vehicle")
        .annotate(total=Sum(_twelfths()))
        .values("total")
    )
    return Coalesce(Subquery(subscriptions, output_field=IntegerField()), Value(0))


def mrr_movements(*, start: datetime, end: datetime, months: int) -> list[MonthMovements]:
    """MRR at the start and end of each of the `months` months from `start` (a month start), and
    its movements, per currency. One query per month; `end` caps the last month (now)."""
    result = []
    for index in range(months):
        m0 = add_months(start, index)
        m1 = min(add_months(start, index + 1), end)
        if m0 >= end:
            break
        ended_before = Subscription.objects.filter(
            vehicle=OuterRef("pk"), ended_at__lte=m0, created_at__lt=F("ended_at")
        ).filter(Q(trial_end__isnull=True) | Q(trial_end__lt=F("ended_at")))
        s, e = F("s"), F("e")
        rows = (
            Vehicle.objects.annotate(
                s=_vehicle_mrr_twelfths(m0), e=_vehicle_mrr_twelfths(m1), paid_before=Exists(ended_before)
            )
            .filter(Q(s__gt=0) | Q(e__gt=0))
            .values("market__currency")
            .annotate(
                start=Sum("s"),
                finish=Sum("e"),
                new=Sum(Case(When(s=0, paid_before=False, then=e), default=0)),
                reactivation=Sum(Case(When(s=0, paid_before=True, then=e), default=0)),
                churn=Sum(Case(When(e=0, then=s), default=0)),
                expansion=Sum(Case(When(s__gt=0, e__gt=s, then=e - s), default=0)),
                contraction=Sum(Case(When(e__gt=0, s__gt=e, then=s - e), default=0)),
            )
            .order_by("market__currency")
        )
        for row in rows:
            values: dict[str, Any] = dict(row)
            moves = {name: twelfths_to_minor(values[name] or 0) for name in MOVEMENTS}
            result.append(
                MonthMovements(
                    month=m0,
                    currency=row["market__currency"],
                    start_minor=twelfths_to_minor(row["start"] or 0),
                    end_minor=twelfths_to_minor(row["finish"] or 0),
                    moves=moves,
                )
            )
    return result


def active_subscriptions(*, at: datetime) -> dict[str, int]:
    """Live subscriptions by status (trialing counted apart from paying). One query."""
    live = [SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE]
    rows = (
        Subscription.objects.filter(status__in=live)
        .annotate(
            state=Case(
                When(trial_end__gt=at, then=Value("trialing")),
                default=F("status"),
            )
        )
        .values("state")
        .annotate(n=Count("id"))
        .order_by("state")
    )
    return {row["state"]: row["n"] for row in rows}


def _largest_remainder(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def _paid_lines():
    return InvoiceLine.objects.filter(invoice__status=InvoiceStatus.PAID).annotate(
        net=Coalesce("net_minor", "amount_minor")
    )


def revenue_by_feature_and_category() -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Paid revenue (net of VAT) per (currency, feature code) and (currency, category). Two queries:
    the sums per offer, and the catalog's offer -> features."""
    per_offer = (
        _paid_lines()
        .filter(offer__isnull=False)
        .values("invoice__currency", "offer_id")
        .annotate(total=Sum("net"))
        .order_by()
    )
    features_of: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for offer_id, code, category in Offer.features.through.objects.order_by(
        "offer_id", "feature__code"
    ).values_list("offer_id", "feature__code", "feature__category"):
        features_of[offer_id].append((code, category))
    by_feature: dict[tuple[str, str], int] = defaultdict(int)
    by_category: dict[tuple[str, str], int] = defaultdict(int)
    for row in per_offer:
        features = features_of.get(row["offer_id"]) or [("(no feature)", "(none)")]
        for (code, category), share in zip(
            features, _largest_remainder(row["total"], len(features)), strict=True
        ):
            by_feature[(row["invoice__currency"], code)] += share
            by_category[(row["invoice__currency"], category)] += share
    return dict(sorted(by_feature.items())), dict(sorted(by_category.items()))


def revenue_by(dimension: str) -> dict[tuple[str, str], int]:
    """Paid revenue (net of VAT) per (currency, value of `dimension`): `market` or `model`. One query."""
    path = {"market": "invoice__vehicle__market__code", "model": "invoice__vehicle__model"}[dimension]
    rows = _paid_lines().values("invoice__currency", path).annotate(total=Sum("net")).order_by()
    return dict(sorted(((r["invoice__currency"], r[path] or "(no car)"), r["total"]) for r in rows))


@dataclass(frozen=True)
class AttachRate:
    model: str
    feature: str
    cars_using: int
    cars: int

    @property
    def per_mille(self) -> int:
        return round_minor(Fraction(1000 * self.cars_using, self.cars)) if self.cars else 0

    @property
    def percent(self) -> str:
        whole, tenth = divmod(self.per_mille, 10)
        return f"{whole}.{tenth} %"


def attach_rates(*, at: datetime) -> list[AttachRate]:
    """Per car model and feature: how many of the model's cars may use the feature at `at`. Two queries."""
    cars = dict(Vehicle.objects.values("model").annotate(n=Count("id")).values_list("model", "n"))
    using = (
        Entitlement.objects.filter(starts_at__lte=at)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=at))
        .values("vehicle__model", "feature__code")
        .annotate(n=Count("vehicle", distinct=True))
        .order_by("vehicle__model", "feature__code")
    )
    return [
        AttachRate(
            model=r["vehicle__model"],
            feature=r["feature__code"],
            cars_using=r["n"],
            cars=cars[r["vehicle__model"]],
        )
        for r in using
    ]


@dataclass(frozen=True)
class TrialConversion:
    ended: int
    converted: int

    @property
    def percent(self) -> str:
        if not self.ended:
            return "—"
        whole, tenth = divmod(round_minor(Fraction(1000 * self.converted, self.ended)), 10)
        return f"{whole}.{tenth} %"


def trial_conversion(*, at: datetime) -> TrialConversion:
    """Trials over by `at`; converted: the subscription was not canceled by the trial's end. One query."""
    over = Subscription.objects.filter(trial_end__isnull=False, trial_end__lte=at)
    figures = over.aggregate(
        ended=Count("id"),
        converted=Count(
            "id",
            filter=~Q(status=SubscriptionStatus.INCOMPLETE)
            & (Q(ended_at__isnull=True) | Q(ended_at__gt=F("trial_end"))),
        ),
    )
    return TrialConversion(ended=figures["ended"], converted=figures["converted"])


@dataclass(frozen=True)
class RefundFigures:
    currency: str
    count: int
    refunded_minor: int
    paid_minor: int


def refunds() -> list[RefundFigures]:
    """Per currency: succeeded refunds (count, sum) beside what paid invoices brought in. Two queries."""
    refunded: dict[str, Any] = {
        r["currency"]: r
        for r in Refund.objects.filter(status=RefundStatus.SUCCEEDED)
        .values("currency")
        .annotate(n=Count("id"), total=Sum("amount_minor"))
        .order_by()
    }
    paid = dict(
        Invoice.objects.filter(status=InvoiceStatus.PAID)
        .values("currency")
        .annotate(total=Sum("total_minor"))
        .order_by()
        .values_list("currency", "total")
    )
    return [
        RefundFigures(
            currency=currency,
            count=refunded.get(currency, {}).get("n", 0),
            refunded_minor=refunded.get(currency, {}).get("total") or 0,
            paid_minor=paid.get(currency) or 0,
        )
        for currency in sorted(set(refunded) | set(paid))
    ]
