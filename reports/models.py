"""Audit history of money and rights (django-pghistory): one event table per tracked model.

PostgreSQL triggers write an event row for every insert, update and delete of the tracked tables,
whatever wrote it (ORM, bulk `update()`, raw SQL), in the writer's transaction, with the request's
context (who, which URL, which request id: `reports.audit.AuditContextMiddleware`). The triggers
are installed by `migrate` on PostgreSQL (settings: PGTRIGGER_INSTALL_ON_MIGRATE); on SQLite (the
demo) there are none and the tables stay empty: the admin says so.

Secrets are never copied (a payment's client secret, a credential's hash).
"""

from __future__ import annotations

import pghistory

from billing.models import Entitlement, Invoice, PaymentAttempt, Price, Refund, Subscription
from vehicles.models import VehicleCredential


def _events(model, name: str, *, exclude: list[str] | None = None):
    """Insert, update and delete events (fresh trackers per model: pghistory binds them to it)."""
    trackers = (pghistory.InsertEvent(), pghistory.UpdateEvent(), pghistory.DeleteEvent())
    return pghistory.create_event_model(
        model, *trackers, exclude=exclude, model_name=name, app_label="reports", abstract=True
    )


class SubscriptionEvent(_events(Subscription, "SubscriptionEvent")):
    pass


class InvoiceEvent(_events(Invoice, "InvoiceEvent")):
    pass


class PaymentAttemptEvent(_events(PaymentAttempt, "PaymentAttemptEvent", exclude=["client_secret"])):
    pass


class RefundEvent(_events(Refund, "RefundEvent")):
    pass


class EntitlementEvent(_events(Entitlement, "EntitlementEvent")):
    pass


class PriceEvent(_events(Price, "PriceEvent")):
    pass


class VehicleCredentialEvent(_events(VehicleCredential, "VehicleCredentialEvent", exclude=["secret_hash"])):
    pass


EVENT_MODELS = {
    Subscription: SubscriptionEvent,
    Invoice: InvoiceEvent,
    PaymentAttempt: PaymentAttemptEvent,
    Refund: RefundEvent,
    Entitlement: EntitlementEvent,
    Price: PriceEvent,
    VehicleCredential: VehicleCredentialEvent,
}
