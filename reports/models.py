"""Audit history of money and rights (django-pghistory): one event table per tracked model.

PostgreSQL triggers write an event row for every insert, update and delete of the tracked tables,
whatever wrote it (ORM, bulk `update()`, raw SQL), in the writer's transaction, with the request's
context (who, which URL, which request id: `reports.audit.AuditContextMiddleware`). The triggers
are installed by `migrate` on PostgreSQL (settings: PGTRIGGER_INSTALL_ON_MIGRATE); on SQLite (the
demo) there are none and the tables stay empty: the admin says so.

Secrets are never copied (a payment's client secret, a credential's hash).
"""

from __future__ import annotations

from typing import Any

import pghistory
from django.db import models

from billing.models import Entitlement, Invoice, PaymentAttempt, Price, Refund, Subscription
from vehicles.models import VehicleCredential


def _events(model: type[models.Model], name: str, *, exclude: list[str] | None = None) -> Any:
    """Insert, update and delete events (fresh trackers per model: pghistory binds them to it)."""
    trackers = (pghistory.InsertEvent(), pghistory.UpdateEvent(), pghistory.DeleteEvent())
    return pghistory.create_event_model(
        model, *trackers, exclude=exclude, model_name=name, app_label="reports", abstract=True
    )


_SubscriptionEventBase: Any = _events(Subscription, "SubscriptionEvent")


class SubscriptionEvent(_SubscriptionEventBase):
    pass


_InvoiceEventBase: Any = _events(Invoice, "InvoiceEvent")


class InvoiceEvent(_InvoiceEventBase):
    pass


_PaymentAttemptEventBase: Any = _events(PaymentAttempt, "PaymentAttemptEvent", exclude=["client_secret"])


class PaymentAttemptEvent(_PaymentAttemptEventBase):
    pass


_RefundEventBase: Any = _events(Refund, "RefundEvent")


class RefundEvent(_RefundEventBase):
    pass


_EntitlementEventBase: Any = _events(Entitlement, "EntitlementEvent")


class EntitlementEvent(_EntitlementEventBase):
    pass


_PriceEventBase: Any = _events(Price, "PriceEvent")


class PriceEvent(_PriceEventBase):
    pass


_VehicleCredentialEventBase: Any = _events(
    VehicleCredential, "VehicleCredentialEvent", exclude=["secret_hash"]
)


class VehicleCredentialEvent(_VehicleCredentialEventBase):
    pass


EVENT_MODELS: dict[type[models.Model], Any] = {
    Subscription: SubscriptionEvent,
    Invoice: InvoiceEvent,
    PaymentAttempt: PaymentAttemptEvent,
    Refund: RefundEvent,
    Entitlement: EntitlementEvent,
    Price: PriceEvent,
    VehicleCredential: VehicleCredentialEvent,
}
