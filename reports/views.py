"""The revenue dashboard (`/admin/revenue/`) and its CSV export: thin, read-only views over
`reports.selectors`, behind the admin login (staff with the billing view permissions)."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from core.money import format_money
from reports import charts, selectors

MONTHS = 12
REQUIRED_PERMISSIONS = ("billing.view_subscription", "billing.view_invoice")


@dataclass
class Dashboard:
    at: datetime
    mrr: dict[str, int]
    movements: list[selectors.MonthMovements]
    active: dict[str, int]
    by_feature: dict[tuple[str, str], int]
    by_category: dict[tuple[str, str], int]
    by_market: dict[tuple[str, str], int]
    by_model: dict[tuple[str, str], int]
    attach: list[selectors.AttachRate]
    trials: selectors.TrialConversion
    refunds: list[selectors.RefundFigures]


def dashboard_build(*, at: datetime) -> Dashboard:
    first = selectors.add_months(selectors.month_start(at), 1 - MONTHS)
    by_feature, by_category = selectors.revenue_by_feature_and_category()
    return Dashboard(
        at=at,
        mrr=selectors.mrr_at(at=at),
        movements=selectors.mrr_movements(start=first, end=at, months=MONTHS),
        active=selectors.active_subscriptions(at=at),
        by_feature=by_feature,
        by_category=by_category,
        by_market=selectors.revenue_by("market"),
        by_model=selectors.revenue_by("model"),
        attach=selectors.attach_rates(at=at),
        trials=selectors.trial_conversion(at=at),
        refunds=selectors.refunds(),
    )


def _check(request: HttpRequest) -> None:
    if not request.user.has_perms(REQUIRED_PERMISSIONS):
        raise PermissionDenied


def _per_currency(figures: dict[tuple[str, str], int]) -> dict[str, list[tuple[str, int, str]]]:
    grouped: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for (currency, key), amount in figures.items():
        grouped[currency].append((key, amount, format_money(amount, currency)))
    return {c: sorted(rows, key=lambda r: (-r[1], r[0])) for c, rows in sorted(grouped.items())}


def _currency_charts(title: str, figures: dict[tuple[str, str], int]) -> list[dict]:
    return [
        {
            "currency": currency,
            "rows": rows,
            "svg": charts.hbar_chart(title=f"{title} ({currency})", bars=rows),
        }
        for currency, rows in _per_currency(figures).items()
    ]


def revenue_dashboard(request: HttpRequest) -> TemplateResponse:
    _check(request)
    board = dashboard_build(at=timezone.now())
    months_by_currency: dict[str, list[selectors.MonthMovements]] = defaultdict(list)
    for month in board.movements:
        months_by_currency[month.currency].append(month)
    mrr_sections = []
    for currency in sorted(set(board.mrr) | set(months_by_currency)):
        months = months_by_currency.get(currency, [])
        fmt = lambda minor, c=currency: format_money(minor, c)  # noqa: E731
        mrr_sections.append(
            {
                "currency": currency,
                "mrr": fmt(board.mrr.get(currency, 0)),
                "months": [
                    {
                        "label": f"{m.month:%Y-%m}",
                        "start": fmt(m.start_minor),
                        "end": fmt(m.end_minor),
                        "moves": [(name, fmt(m.moves[name])) for name in selectors.MOVEMENTS],
                    }
                    for m in months
                ],
                "mrr_svg": charts.column_chart(
                    title=f"MRR at each month's end ({currency})",
                    columns=[(f"{m.month:%m}", m.end_minor, fmt(m.end_minor)) for m in months],
                ),
                "moves_svg": charts.movement_chart(
                    title=f"MRR movements per month ({currency})",
                    months=[
                        (f"{m.month:%m}", m.moves, {n: fmt(v) for n, v in m.moves.items()}) for m in months
                    ],
                ),
            }
        )
    attach_bars = [(f"{a.model} · {a.feature}", a.per_mille, a.percent) for a in board.attach]
    context = {
        **admin.site.each_context(request),
        "title": "Revenue",
        "at": board.at,
        "mrr_sections": mrr_sections,
        "movement_names": selectors.MOVEMENTS,
        "active": sorted(board.active.items()),
        "active_total": sum(board.active.values()),
        "by_feature": _currency_charts("Revenue by feature", board.by_feature),
        "by_category": _currency_charts("Revenue by category", board.by_category),
        "by_market": _currency_charts("Revenue by market", board.by_market),
        "by_model": _currency_charts("Revenue by car model", board.by_model),
        "attach": board.attach,
        "attach_svg": charts.hbar_chart(title="Attach rate (model · feature)", bars=attach_bars),
        "trials": board.trials,
        "refunds": [
            {
                "currency": r.currency,
                "count": r.count,
                "refunded": format_money(r.refunded_minor, r.currency),
                "paid": format_money(r.paid_minor, r.currency),
            }
            for r in board.refunds
        ],
    }
    return TemplateResponse(request, "admin/reports/revenue.html", context)


def revenue_csv(request: HttpRequest) -> HttpResponse:
    """Every figure of the dashboard, one per row: section, currency, key, value (minor units or a
    count), and the value as shown."""
    _check(request)
    board = dashboard_build(at=timezone.now())
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="revenue-{board.at:%Y-%m-%d}.csv"'
    out = csv.writer(response)
    out.writerow(["section", "currency", "key", "value", "shown"])
    for currency, minor in sorted(board.mrr.items()):
        out.writerow(["mrr", currency, "now", minor, format_money(minor, currency)])
    for m in board.movements:
        label = f"{m.month:%Y-%m}"
        for name, minor in (("start", m.start_minor), ("end", m.end_minor), *m.moves.items()):
            out.writerow([f"mrr_{name}", m.currency, label, minor, format_money(minor, m.currency)])
    for state, n in sorted(board.active.items()):
        out.writerow(["active_subscriptions", "", state, n, n])
    for section, figures in (
        ("revenue_by_feature", board.by_feature),
        ("revenue_by_category", board.by_category),
        ("revenue_by_market", board.by_market),
        ("revenue_by_model", board.by_model),
    ):
        for (currency, key), minor in figures.items():
            out.writerow([section, currency, key, minor, format_money(minor, currency)])
    for a in board.attach:
        out.writerow(["attach_rate_per_mille", "", f"{a.model} / {a.feature}", a.per_mille, a.percent])
    out.writerow(["trials_ended", "", "", board.trials.ended, board.trials.ended])
    out.writerow(["trials_converted", "", "", board.trials.converted, board.trials.percent])
    for r in board.refunds:
        out.writerow(["refunds_count", r.currency, "", r.count, r.count])
        out.writerow(
            ["refunds", r.currency, "", r.refunded_minor, format_money(r.refunded_minor, r.currency)]
        )
        out.writerow(["paid_invoices", r.currency, "", r.paid_minor, format_money(r.paid_minor, r.currency)])
    return response
