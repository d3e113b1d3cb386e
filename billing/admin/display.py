"""Small display helpers shared by the billing admin modules."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from core.money import format_money


def money_column(amount: str, currency: str = "currency", *, description: str) -> Callable[[Any, Any], str]:
    """A ModelAdmin/inline method (assign it as a class attribute, name it in `list_display` or
    `readonly_fields`) showing `format_money(obj.<amount>, obj.<currency>)`.

    `amount` and `currency` may be dotted paths (`price.amount_minor`); sorting uses the amount.
    """
    get_amount, get_currency = attrgetter(amount), attrgetter(currency)

    @admin.display(description=description, ordering=amount.replace(".", "__"))
    def column(_model_admin: Any, obj: Any) -> str:
        value, currency_code = get_amount(obj), get_currency(obj)
        return "—" if value is None or not currency_code else format_money(value, currency_code)

    column.__name__ = f"{amount.replace('.', '_')}_display"
    return column


def admin_link(obj_or_model: Any, pk: Any, text: str) -> str:
    """An HTML link to the admin change (or view) page of a row."""
    opts = obj_or_model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk])
    return format_html('<a href="{}">{}</a>', url, text)


def short_id(value: Any) -> str:
    return str(value)[:8]
