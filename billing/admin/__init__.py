"""Django admin of the billing app, one module per area (imported here to register them).

Money state (subscriptions, purchases, invoices, payment attempts, refunds, entitlements) is
read-only here: it changes through the services only. The catalog is editable; a price is
immutable once created (a new version is a new row).
"""

from billing.admin import (
    catalog,
    clocks,
    disputes,
    entitlements,
    invoices,
    payments,
    subscriptions,
    tax,
    vehicle_pages,
    webhooks,
)

__all__ = [
    "catalog",
    "clocks",
    "disputes",
    "entitlements",
    "invoices",
    "payments",
    "subscriptions",
    "tax",
    "vehicle_pages",
    "webhooks",
]
