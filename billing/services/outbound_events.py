"""The billing events the carmaker's systems receive, built here and recorded in the outbox
(`events.services.event_record`, `events_record` for a batch) inside the transaction of the
change they describe.

Each function is called by one billing service at the point the change happens, with the rows
already locked, and records after those locks (the outbox's per-vehicle counter is the last lock
a transaction takes). Events of one vehicle share its id as ordering key: the receiver gets them
in commit order. Payloads carry ids, the VIN, feature codes, amounts as `{amount_minor, currency}`
and ISO 8601 UTC times; never secrets, card data or the personal data of an owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog
from django.db import transaction

from billing.models import Entitlement, Feature, Invoice, Purchase, Subscription
from events.models import EventType
from events.services import EventSpec, events_record
from vehicles.models import Vehicle

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from billing.models import Dispute



def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _money(amount_minor: int, currency: str) -> dict:
    return {"amount_minor": int(amount_minor), "currency": currency}


Item = tuple[str, UUID | str | None, dict]  # (event type, vehicle id, data)


def _record(event_type: str, *, vehicle_id: UUID | str | None, data: dict) -> None:
    _record_many([(event_type, vehicle_id, data)])


def _record_many(items: Sequence[Item]) -> None:
    """Record in a savepoint of the caller's transaction. An event that cannot be recorded is
    logged and the change goes on: fulfilment after a successful charge must never fail (it
    would refund the customer) because a message to another system could not be written."""
    if not items:
        return
    try:
        with transaction.atomic():
            vins = {
                str(pk): vin
                for pk, vin in Vehicle.objects.filter(
                    pk__in={vehicle_id for _, vehicle_id, _ in items if vehicle_id is not None}
                ).values_list("pk", "vin")
            }
            events_record(
                [
                    EventSpec(
                        type=event_type,
                        payload={
                            "vehicle": {"id": str(vehicle_id), "vin": vins.get(str(vehicle_id))}
                            if vehicle_id is not None
                            else None,
                            **data,
                        },
                        ordering_key=str(vehicle_id) if vehicle_id else None,
                    )
                    for event_type, vehicle_id, data in items
                ]
            )
    except Exception:
        log.exception("outbound_event_not_recorded", types=sorted({t for t, _, _ in items}), count=len(items))


def _subscription(subscription: Subscription, *, features: Sequence[str] | None = None) -> dict:
    """`features`: the plan's feature codes when the caller read them already (a batch)."""
    price = subscription.price
    return {
        "id": str(subscription.pk),
        "owner_id": subscription.owner_id,
        "status": subscription.status,
        "offer": subscription.offer.code,
        "features": sorted(
            features if features is not None else subscription.offer.features.values_list("code", flat=True)
        ),
        "price": _money(price.amount_minor, price.currency),
        "interval": subscription.offer.interval,
        "current_period_start": _iso(subscription.current_period_start),
        "current_period_end": _iso(subscription.current_period_end),
        "trial_end": _iso(subscription.trial_end),
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "pending_offer": subscription.pending_offer.code if subscription.pending_offer is not None else None,
        "canceled_at": _iso(subscription.canceled_at),
        "ended_at": _iso(subscription.ended_at),
    }


def _invoice(invoice: Invoice) -> dict:
    return {
        "id": str(invoice.pk),
        "number": invoice.number,
        "kind": invoice.kind,
        "status": invoice.status,
        "owner_id": invoice.owner_id,
        "total": _money(invoice.total_minor, invoice.currency),
        "tax": _money(invoice.tax_minor, invoice.currency),
        "subscription_id": str(invoice.subscription_id) if invoice.subscription_id else None,
        "purchase_id": str(invoice.purchase_id) if invoice.purchase_id else None,
        "period_start": _iso(invoice.period_start),
        "period_end": _iso(invoice.period_end),
        "paid_at": _iso(invoice.paid_at),
    }


def entitlements_granted(entitlements: Iterable[Entitlement]) -> None:
    """`entitlement.granted`: the rows one grant created or extended, one event per vehicle."""
    _record_many(_entitlements_granted_items(list(entitlements)))


def _entitlements_granted_items(rows: Sequence[Entitlement]) -> list[Item]:
    codes = dict(Feature.objects.filter(pk__in={e.feature_id for e in rows}).values_list("pk", "code"))
    per_vehicle: dict[Any, list[Entitlement]] = {}
    for row in rows:
        per_vehicle.setdefault(row.vehicle_id, []).append(row)
    return [
        (
            EventType.ENTITLEMENT_GRANTED,
            vehicle_id,
            {
                "features": sorted({codes[e.feature_id] for e in mine}),
                "entitlements": [
                    {
                        "id": str(e.pk),
                        "feature": codes[e.feature_id],
                        "source": e.source,
                        "subscription_id": str(e.subscription_id) if e.subscription_id else None,
                        "purchase_id": str(e.purchase_id) if e.purchase_id else None,
                        "starts_at": _iso(e.starts_at),
                        "ends_at": _iso(e.ends_at),
                    }
                    for e in mine
                ],
            },
        )
        for vehicle_id, mine in per_vehicle.items()
    ]


def renewals_paid(
    *,
    invoices: Sequence[Invoice],
    subscriptions: Mapping[Any, Subscription],
    entitlements: Sequence[Entitlement],
) -> None:
    """A batch of renewals paid: per car `entitlement.granted` then `invoice.paid`, as
    `entitlements_granted` and `invoice_paid` record them one renewal at a time.
    `subscriptions`: id -> the subscription as paid, its offer and price selected."""
    offer_ids = {subscription.offer_id for subscription in subscriptions.values()}
    features: dict[Any, list[str]] = {}
    for offer_id, code in Feature.objects.filter(offers__in=offer_ids).values_list("offers", "code"):
        features.setdefault(offer_id, []).append(code)
    items = _entitlements_granted_items(entitlements)
    for invoice in invoices:
        subscription = subscriptions[invoice.subscription_id]
        data = {
            "invoice": _invoice(invoice),
            "subscription": _subscription(subscription, features=features.get(subscription.offer_id, [])),
        }
        items.append((EventType.INVOICE_PAID, invoice.vehicle_id, data))
    _record_many(items)


def entitlements_revoked(
    *, at: datetime, subscription: Subscription | None = None, purchase: Purchase | None = None
) -> None:
    """`entitlement.revoked`: a subscription's or a purchase's features end at `at`."""
    source = subscription or purchase
    assert source is not None  # one of them is given
    _record(
        EventType.ENTITLEMENT_REVOKED,
        vehicle_id=source.vehicle_id,
        data={
            "features": sorted(source.offer.features.values_list("code", flat=True)),
            "subscription_id": str(subscription.pk) if subscription else None,
            "purchase_id": str(purchase.pk) if purchase else None,
            "ends_at": _iso(at),
        },
    )


def _subscription_event(event_type: str, subscription: Subscription, change: str = "") -> None:
    data: dict[str, Any] = {"subscription": _subscription(subscription)}
    if change:
        data["change"] = change
    _record(event_type, vehicle_id=subscription.vehicle_id, data=data)


def subscription_created(subscription: Subscription) -> None:
    """`subscription.created`: trialing, or incomplete until its first payment (`invoice.paid`)."""
    _subscription_event(EventType.SUBSCRIPTION_CREATED, subscription)


def subscription_updated(subscription: Subscription, *, change: str) -> None:
    """`subscription.updated`; `change` says what: cancel_at_period_end, resumed, plan_changed,
    downgrade_scheduled."""
    _subscription_event(EventType.SUBSCRIPTION_UPDATED, subscription, change)


def subscription_canceled(subscription: Subscription) -> None:
    _subscription_event(EventType.SUBSCRIPTION_CANCELED, subscription)


def invoice_paid(invoice: Invoice) -> None:
    """`invoice.paid`, with the subscription as it is once paid (active, its new period)."""
    data = {"invoice": _invoice(invoice)}
    if invoice.subscription_id:
        subscription = Subscription.objects.select_related("offer", "price", "pending_offer").get(
            pk=invoice.subscription_id
        )
        data["subscription"] = _subscription(subscription)
    _record(EventType.INVOICE_PAID, vehicle_id=invoice.vehicle_id, data=data)


def payment_failed(invoice: Invoice) -> None:
    """`payment.failed`: a payment of `invoice` was declined."""
    _record(EventType.PAYMENT_FAILED, vehicle_id=invoice.vehicle_id, data={"invoice": _invoice(invoice)})


def dunning_started(*, subscription: Subscription, invoice: Invoice) -> None:
    _record(
        EventType.DUNNING_STARTED,
        vehicle_id=subscription.vehicle_id,
        data={
            "subscription": _subscription(subscription),
            "invoice": _invoice(invoice),
            "grace_until": _iso(subscription.grace_until),
            "next_retry_at": _iso(subscription.next_retry_at),
        },
    )


def trials_ending(*, subscription_ids: Iterable) -> None:
    """`trial.ending`: one event per trial that will end within the reminder lead time."""
    rows = Subscription.objects.select_related("offer", "price", "pending_offer").filter(
        pk__in=list(subscription_ids)
    )
    for subscription in rows.order_by("trial_end", "pk"):
        _record(
            EventType.TRIAL_ENDING,
            vehicle_id=subscription.vehicle_id,
            data={"subscription": _subscription(subscription), "trial_end": _iso(subscription.trial_end)},
        )


def vehicle_transferred(*, vehicle: Vehicle, new_owner_id: int, at: datetime) -> None:
    """`vehicle.transferred`: the car has a new owner (only the new owner's id is sent)."""
    _record(
        EventType.VEHICLE_TRANSFERRED,
        vehicle_id=vehicle.pk,
        data={"owner_id": new_owner_id, "transferred_at": _iso(at)},
    )


def entitlements_suspended(entitlements: Iterable[Entitlement]) -> None:
    """`entitlement.revoked` with reason `dispute`: these rows end now while a dispute is open
    (a won dispute grants them again)."""
    rows = list(entitlements)
    codes = dict(Feature.objects.filter(pk__in={e.feature_id for e in rows}).values_list("pk", "code"))
    for vehicle_id in dict.fromkeys(e.vehicle_id for e in rows):
        mine = [e for e in rows if e.vehicle_id == vehicle_id]
        _record(
            EventType.ENTITLEMENT_REVOKED,
            vehicle_id=vehicle_id,
            data={
                "features": sorted({codes[e.feature_id] for e in mine}),
                "reason": "dispute",
                "entitlements": [
                    {"id": str(e.pk), "feature": codes[e.feature_id], "ends_at": _iso(e.ends_at)}
                    for e in mine
                ],
            },
        )


def _dispute(dispute: Dispute) -> dict:
    return {
        "id": dispute.pk,
        "status": dispute.status,
        "reason": dispute.reason,
        "amount": _money(dispute.amount_minor, dispute.currency),
        "lost": _money(dispute.lost_minor, dispute.currency),
        "policy": dispute.policy,
        "payment_id": str(dispute.payment_attempt_id),
        "invoice_id": str(dispute.payment_attempt.invoice_id),
        "opened_at": _iso(dispute.opened_at),
        "closed_at": _iso(dispute.closed_at),
    }


def dispute_opened(dispute: Dispute) -> None:
    """`dispute.opened`: the owner's bank disputes a payment (the suspended features, if the
    offer's policy suspends them, come as `entitlement.revoked` just before)."""
    vehicle_id = dispute.payment_attempt.invoice.vehicle_id
    _record(EventType.DISPUTE_OPENED, vehicle_id=vehicle_id, data={"dispute": _dispute(dispute)})


def dispute_closed(dispute: Dispute) -> None:
    """`dispute.closed`: won (suspended features granted again) or lost (the amount booked as lost)."""
    vehicle_id = dispute.payment_attempt.invoice.vehicle_id
    _record(EventType.DISPUTE_CLOSED, vehicle_id=vehicle_id, data={"dispute": _dispute(dispute)})
