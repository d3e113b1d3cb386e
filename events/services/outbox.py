"""Recording an event: an outbox row and its pending deliveries, in the caller's transaction.

Call `event_record` inside the `transaction.atomic()` block that makes the change it describes:
the event commits with the change or not at all (no network I/O here). After commit a worker
task is enqueued for it; if the broker is down the minute sweep sends it anyway.

Commit order per ordering key: the key's counter row (`OrderingKeySequence`) is incremented by
an upsert that keeps it locked until the transaction ends, so a second transaction recording an
event of the same key waits there and takes the next number only after the first committed.
Record events after the other row locks of the transaction (billing does: vehicle first,
the event last), so that wait can never be part of a lock cycle.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import structlog
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from events.models import (
    UNSETTLED_DELIVERY_STATUSES,
    Delivery,
    EventEndpoint,
    EventType,
    OrderingKeySequence,
    OutboxEvent,
)

log = structlog.get_logger(__name__)
KEEP_EVENTS = timedelta(days=30)  # the delivery log an operator can look at and resend from

_NEXT_SEQUENCE_SQL = (
    f"INSERT INTO {OrderingKeySequence._meta.db_table} (key, last_value) VALUES (%s, 1) "
    f"ON CONFLICT (key) DO UPDATE SET last_value = {OrderingKeySequence._meta.db_table}.last_value + 1 "
    "RETURNING last_value"
)


def _next_sequence(key: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(_NEXT_SEQUENCE_SQL, [key])
        return cursor.fetchone()[0]


def _enqueue_delivery(event_id: str) -> None:
    """After commit: hand the event to a worker. Never raises (the caller's change is committed);
    a message that cannot be sent now is picked up by the minute sweep."""
    try:
        from events.tasks import deliver_event  # the tasks module imports this one

        deliver_event.delay(event_id)
    except Exception:
        log.warning("event_delivery_not_enqueued", event_id=event_id, exc_info=True)


def event_record(
    *, type: str, payload: dict, ordering_key: str | None, at: datetime | None = None
) -> OutboxEvent:
    """Record an event of `type` with `payload` (its `data`) in the caller's transaction, and a
    pending delivery for every enabled endpoint subscribed to the type. `ordering_key` (e.g. a
    vehicle id) orders the deliveries of one key per endpoint by commit; None: no order."""
    if type not in EventType.values:
        raise ValueError(f"unknown event type {type!r}")
    data = json.loads(json.dumps(payload, cls=DjangoJSONEncoder))  # plain JSON, checked here
    at = at or timezone.now()
    key = str(ordering_key) if ordering_key else ""
    with transaction.atomic():  # a savepoint of the caller's transaction
        event = OutboxEvent.objects.create(
            type=type,
            payload=data,
            ordering_key=key,
            sequence=_next_sequence(key) if key else None,
            created_at=at,
        )
        endpoints = [
            endpoint for endpoint in EventEndpoint.objects.filter(enabled=True) if endpoint.wants(type)
        ]
        Delivery.objects.bulk_create(
            Delivery(
                event=event,
                endpoint=endpoint,
                ordering_key=key,
                sequence=event.sequence,
                next_attempt_at=at,
                created_at=at,
            )
            for endpoint in endpoints
        )
        if endpoints:
            event_id = str(event.pk)
            transaction.on_commit(lambda: _enqueue_delivery(event_id))
    return event


def outbox_events_purge(*, at: datetime, keep: timedelta = KEEP_EVENTS, limit: int = 5000) -> int:
    """Delete events older than `keep` with nothing left to send (their deliveries and the log
    go with them). The ordering-key counters stay, so sequences keep growing. Returns how many."""
    old = OutboxEvent.objects.filter(created_at__lt=at - keep).exclude(
        deliveries__status__in=UNSETTLED_DELIVERY_STATUSES
    )
    ids = list(old.values_list("pk", flat=True)[:limit])
    OutboxEvent.objects.filter(pk__in=ids).delete()
    return len(ids)
