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
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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
_EVENT_TYPES = frozenset(EventType.values)
KEEP_EVENTS = timedelta(days=30)  # the delivery log an operator can look at and resend from

def _enqueue_delivery(event_id: str) -> None:
    """After commit: hand the event to a worker. Never raises (the caller's change is committed);
    a message that cannot be sent now is picked up by the minute sweep."""
    try:
        from events.tasks import deliver_event  # the tasks module imports this one

        deliver_event.delay(event_id)
    except Exception:
        log.warning("event_delivery_not_enqueued", event_id=event_id, exc_info=True)


@dataclass(frozen=True)
class EventSpec:
    type: str
    payload: dict
    ordering_key: str | None


def event_record(
    *, type: str, payload: dict, ordering_key: str | None, at: datetime | None = None
) -> OutboxEvent:
    """Record an event of `type` with `payload` (its `data`) in the caller's transaction, and a
    pending delivery for every enabled endpoint subscribed to the type. `ordering_key` (e.g. a
    vehicle id) orders the deliveries of one key per endpoint by commit; None: no order."""
    return events_record([EventSpec(type=type, payload=payload, ordering_key=ordering_key)], at=at)[0]


def events_record(specs: Sequence[EventSpec], *, at: datetime | None = None) -> list[OutboxEvent]:
    """`event_record` for many events at once (a batch of renewals): a constant number of
    statements however many. Events of one key take consecutive numbers in the order given."""
    for spec in specs:
        if spec.type not in _EVENT_TYPES:
            raise ValueError(f"unknown event type {spec.type!r}")
    if not specs:
        return []
    at = at or timezone.now()
    keys = [str(spec.ordering_key) if spec.ordering_key else "" for spec in specs]
    with transaction.atomic():  # a savepoint of the caller's transaction
        counts = Counter(key for key in keys if key)
        last = _take_sequences(counts)
        taken: Counter[str] = Counter()
        events, texts = [], []
        for spec, key in zip(specs, keys, strict=True):
            sequence = None
            if key:
                taken[key] += 1
                sequence = last[key] - counts[key] + taken[key]
            texts.append(json.dumps(spec.payload, cls=DjangoJSONEncoder))  # plain JSON, checked here
            events.append(
                OutboxEvent(
                    id=uuid.uuid4(),
                    type=spec.type,
                    payload=json.loads(texts[-1]),
                    ordering_key=key,
                    sequence=sequence,
                    created_at=at,
                )
            )
        _events_insert(events, texts)
        endpoints = list(EventEndpoint.objects.filter(enabled=True))
        deliveries = [
            Delivery(
                event=event,
                endpoint=endpoint,
                ordering_key=event.ordering_key,
                sequence=event.sequence,
                next_attempt_at=at,
                created_at=at,
            )
            for event in events
            for endpoint in endpoints
            if endpoint.wants(event.type)
        ]
        Delivery.objects.bulk_create(deliveries)
        to_send = list(dict.fromkeys(str(delivery.event_id) for delivery in deliveries))
        if to_send:

            def enqueue_all() -> None:
                for event_id in to_send:
                    _enqueue_delivery(event_id)

            transaction.on_commit(enqueue_all)
    return events


def _events_insert(events: Sequence[OutboxEvent], texts: Sequence[str]) -> None:
    """Insert the events, each payload sent once as the JSON text already made (`bulk_create`
    would encode it again and quote it into an array: most of a renewal batch's event cost)."""
    if connection.vendor != "postgresql":
        OutboxEvent.objects.bulk_create(events)
        return
    table = OutboxEvent._meta.db_table
    rows = ", ".join(["(%s, %s, %s::jsonb, %s, %s, %s)"] * len(events))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (id, type, payload, ordering_key, sequence, created_at) VALUES {rows}",
            [
                value
                for e, text in zip(events, texts, strict=True)
                for value in (e.id, e.type, text, e.ordering_key, e.sequence, e.created_at)
            ],
        )
    for event in events:
        event._state.adding = False  # saved, as bulk_create would mark them


def _take_sequences(counts: Counter[str]) -> dict[str, int]:
    """Add `counts[key]` to each key's counter (one upsert, keys in a fixed order so two batches
    lock them alike) and return each key's new last value; the rows stay locked until commit."""
    if not counts:
        return {}
    keys = sorted(counts)
    table = OrderingKeySequence._meta.db_table
    values = ", ".join(["(%s, %s)"] * len(keys))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (key, last_value) VALUES {values} ON CONFLICT (key) DO UPDATE "
            f"SET last_value = {table}.last_value + EXCLUDED.last_value RETURNING key, last_value",
            [item for key in keys for item in (key, counts[key])],
        )
        return dict(cursor.fetchall())


def outbox_events_purge(*, at: datetime, keep: timedelta = KEEP_EVENTS, limit: int = 5000) -> int:
    """Delete events older than `keep` with nothing left to send (their deliveries and the log
    go with them). The ordering-key counters stay, so sequences keep growing. Returns how many."""
    old = OutboxEvent.objects.filter(created_at__lt=at - keep).exclude(
        deliveries__status__in=UNSETTLED_DELIVERY_STATUSES
    )
    ids = list(old.values_list("pk", flat=True)[:limit])
    OutboxEvent.objects.filter(pk__in=ids).delete()
    return len(ids)
