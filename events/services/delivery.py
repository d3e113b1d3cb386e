"""Sending deliveries: claim, POST (Standard Webhooks), record. At least once, in commit order
per ordering key and endpoint, retried with backoff for three days, then dead.

1. **Claim** (`deliveries_claim`, a short transaction): due deliveries whose endpoint is
   enabled and that are first in line (no earlier unsettled delivery of the same key and
   endpoint) are taken with `SELECT ... FOR UPDATE SKIP LOCKED` and leased (`claim_token`,
   `claimed_until`), then committed; a worker sends up to `SEND_CONCURRENCY` of them at once.
   A worker that dies after this leaves a lease that expires: the sweep takes the delivery
   again, and the receiver gets the same `webhook-id`.
2. **Send** (`delivery_send`, no transaction open): one POST of the event's JSON with the
   `webhook-id` (the event id), `webhook-timestamp` and `webhook-signature` headers signed with
   the endpoint's secret(s) by the `standardwebhooks` package; short timeouts, no redirects.
3. **Record** (`delivery_record`, a new transaction, only by the lease holder): the attempt goes
   to the log; a 2xx settles the delivery; anything else schedules the next try
   (`delivery_backoff`: exponential with jitter) until `RETRY_WINDOW` after the delivery was
   created, then the delivery is dead. An endpoint failing for `ENDPOINT_DISABLE_AFTER` with at
   least `ENDPOINT_DISABLE_MIN_FAILURES` failures in a row is disabled (alert in admin).
A delivery waits while an earlier one of its key and endpoint is unsettled (pending or failed,
claimed or not), so a receiver sees the events of one vehicle in commit order.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from core.states import transition_apply
from events.models import (
    DELIVERY_TRANSITIONS,
    UNSETTLED_DELIVERY_STATUSES,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    EventEndpoint,
)
from events.services.endpoints import endpoint_disable, endpoint_url_resolves_publicly, private_urls_allowed
from events.services.http import delivery_session

log = structlog.get_logger(__name__)

RETRY_WINDOW = timedelta(days=3)
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=4)
BACKOFF_JITTER = 0.2  # each delay is drawn from [-20 %, +20 %] around its exponential value
LEASE = timedelta(seconds=60)  # longer than one send (timeouts below) plus recording it
CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10
ENDPOINT_DISABLE_AFTER = timedelta(days=3)
ENDPOINT_DISABLE_MIN_FAILURES = 5
USER_AGENT = "billing-events/1 (Standard Webhooks)"
SEND_CONCURRENCY = 8  # deliveries in flight per worker (to different keys or endpoints)


def delivery_transition(*, delivery: Delivery, to: str, **changes: Any) -> None:
    """The one writer of a delivery's status (table: `DELIVERY_TRANSITIONS`); `failed -> failed`
    (a retry failed again) saves the other fields only."""
    if to == delivery.status:
        for name, value in changes.items():
            setattr(delivery, name, value)
        delivery.save(update_fields=list(changes))
        return
    transition_apply(delivery, table=DELIVERY_TRANSITIONS, to=to, changes=changes)


def delivery_backoff(attempts: int, *, rand: float | None = None) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 30 s doubling up to 4 h, +/- 20 % jitter."""
    base = min(BACKOFF_BASE * (2 ** max(attempts - 1, 0)), BACKOFF_CAP)
    rand = random.random() if rand is None else rand
    return base * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * rand)


@dataclass(frozen=True)
class Claim:
    delivery_id: int
    token: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    event_created_at: datetime
    payload: dict
    endpoint_id: int
    url: str
    secrets: tuple[str, ...]
    ordering_key: str


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    status_code: int | None = None
    error: str = ""
    response_ms: int | None = None


def _due(at: datetime) -> QuerySet[Delivery]:
    earlier_unsettled = Delivery.objects.filter(
        endpoint_id=OuterRef("endpoint_id"),
        ordering_key=OuterRef("ordering_key"),
        sequence__lt=OuterRef("sequence"),
        status__in=UNSETTLED_DELIVERY_STATUSES,
    )
    return (
        Delivery.objects.filter(
            status__in=UNSETTLED_DELIVERY_STATUSES, next_attempt_at__lte=at, endpoint__enabled=True
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=at))
        .filter(Q(ordering_key="") | ~Exists(earlier_unsettled))
    )


def deliveries_claim(
    *,
    limit: int = 1,
    at: datetime | None = None,
    event_id: uuid.UUID | str | None = None,
    endpoint_id: int | None = None,
    ordering_key: str | None = None,
) -> list[Claim]:
    """Lease up to `limit` due deliveries that are first in line (optionally of one event, or of
    one key of one endpoint). First in line means no two of them share a key and an endpoint, so
    they may be sent at the same time. Own transaction, committed before anything is sent."""
    at = at or timezone.now()
    rows = _due(at)
    if event_id is not None:
        rows = rows.filter(event__pk=event_id)
    if endpoint_id is not None:
        rows = rows.filter(endpoint_id=endpoint_id, ordering_key=ordering_key or "")
    token = uuid.uuid4()
    with transaction.atomic():
        deliveries = list(
            rows.select_for_update(skip_locked=True, of=("self",))
            .select_related("event", "endpoint")
            .order_by("next_attempt_at", "sequence", "pk")[:limit]
        )
        if deliveries:
            Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(
                claim_token=token, claimed_until=at + LEASE
            )
    return [
        Claim(
            delivery_id=delivery.pk,
            token=token,
            event_id=delivery.event_id,
            event_type=delivery.event.type,
            event_created_at=delivery.event.created_at,
            payload=delivery.event.payload,
            endpoint_id=delivery.endpoint_id,
            url=delivery.endpoint.url,
            secrets=delivery.endpoint.signing_secrets(at),
            ordering_key=delivery.ordering_key,
        )
        for delivery in deliveries
    ]


def delivery_claim_next(**scope: Any) -> Claim | None:
    """Lease the next due, first-in-line delivery (see `deliveries_claim`)."""
    claims = deliveries_claim(limit=1, **scope)
    return claims[0] if claims else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def delivery_body(*, event_type: str, created_at: datetime, payload: dict) -> str:
    """The Standard Webhooks payload: `type`, `timestamp` (when the event happened), `data`."""
    return json.dumps(
        {"type": event_type, "timestamp": _iso(created_at), "data": payload},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def delivery_headers(*, secrets: tuple[str, ...], msg_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers; one `v1,` signature per secret, space-separated."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(
            Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body) for secret in secrets
        ),
    }


def delivery_send(claim: Claim) -> Outcome:
    """One POST, outside any transaction. Never raises: every problem is an unsuccessful outcome."""
    refused = endpoint_url_resolves_publicly(claim.url)
    if refused:
        return Outcome(succeeded=False, error=refused)
    body = delivery_body(
        event_type=claim.event_type, created_at=claim.event_created_at, payload=claim.payload
    )
    headers = delivery_headers(
        secrets=claim.secrets, msg_id=str(claim.event_id), body=body, at=timezone.now()
    )
    started = time.monotonic()
    try:
        session = delivery_session(private_allowed=private_urls_allowed())
        response = session.post(
            claim.url,
            data=body.encode(),
            headers=headers,
            timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            allow_redirects=False,
            stream=True,
        )
        with response:
            excerpt = response.raw.read(300, decode_content=True).decode("utf-8", "replace")
    except Exception as exc:  # noqa: BLE001 - any failure of the HTTP stack is a failed attempt
        elapsed = int((time.monotonic() - started) * 1000)
        return Outcome(succeeded=False, error=f"{type(exc).__name__}: {exc}"[:500], response_ms=elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    if 200 <= response.status_code < 300:
        return Outcome(succeeded=True, status_code=response.status_code, response_ms=elapsed)
    return Outcome(
        succeeded=False,
        status_code=response.status_code,
        error=f"HTTP {response.status_code}: {excerpt}".strip()[:500],
        response_ms=elapsed,
    )


def delivery_record(*, claim: Claim, outcome: Outcome, at: datetime | None = None) -> str | None:
    """Record an attempt, by the holder of the lease only (a worker whose lease was taken over
    records nothing: the new holder's attempt counts). Returns the new status, or None."""
    at = at or timezone.now()
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(pk=claim.delivery_id).first()
        if delivery is None or delivery.claim_token != claim.token:
            log.warning("event_delivery_lease_lost", delivery=claim.delivery_id, event_id=str(claim.event_id))
            return None
        DeliveryAttempt.objects.create(
            delivery=delivery,
            attempted_at=at,
            status_code=outcome.status_code,
            error=outcome.error,
            response_ms=outcome.response_ms,
            succeeded=outcome.succeeded,
        )
        attempts = delivery.attempts + 1
        common = {
            "attempts": attempts,
            "claim_token": None,
            "claimed_until": None,
            "last_attempt_at": at,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "last_response_ms": outcome.response_ms,
        }
        if outcome.succeeded:
            delivery_transition(delivery=delivery, to=DeliveryStatus.DELIVERED, delivered_at=at, **common)
            EventEndpoint.objects.filter(pk=claim.endpoint_id).update(
                consecutive_failures=0, failing_since=None, last_success_at=at
            )
            return DeliveryStatus.DELIVERED
        next_at = at + delivery_backoff(attempts)
        to = DeliveryStatus.DEAD if at >= delivery.created_at + RETRY_WINDOW else DeliveryStatus.FAILED
        delivery_transition(delivery=delivery, to=to, next_attempt_at=next_at, **common)
        _endpoint_failed(endpoint_id=claim.endpoint_id, at=at)
    if to == DeliveryStatus.DEAD:
        log.error(
            "event_delivery_dead", delivery=claim.delivery_id, event_id=str(claim.event_id), attempts=attempts
        )
    return to


def _endpoint_failed(*, endpoint_id: int, at: datetime) -> None:
    EventEndpoint.objects.filter(pk=endpoint_id).update(
        consecutive_failures=F("consecutive_failures") + 1, failing_since=Coalesce(F("failing_since"), at)
    )
    endpoint = EventEndpoint.objects.get(pk=endpoint_id)
    assert endpoint.failing_since is not None  # set by the update above
    if (
        endpoint.enabled
        and endpoint.failing_since <= at - ENDPOINT_DISABLE_AFTER
        and endpoint.consecutive_failures >= ENDPOINT_DISABLE_MIN_FAILURES
    ):
        reason = (
            f"Disabled after {endpoint.consecutive_failures} failed deliveries in a row since "
            f"{_iso(endpoint.failing_since)}; re-enable it in admin once the receiver works."
        )
        if endpoint_disable(endpoint=endpoint, at=at, reason=reason):
            log.error("event_endpoint_disabled", endpoint=endpoint_id, url=endpoint.url, reason=reason)


@dataclass
class SendReport:
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    lost_leases: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.delivered + self.failed + self.dead


def deliveries_send_due(
    *,
    event_id: uuid.UUID | str | None = None,
    limit: int = 1000,
    budget: timedelta = timedelta(seconds=50),
    concurrency: int = SEND_CONCURRENCY,
) -> SendReport:
    """Send due deliveries until none is due, `limit` were sent or `budget` is spent (a task's
    time limit): up to `concurrency` at a time, each the first in line of its key and endpoint.
    With `event_id`: that event's deliveries, and after each one delivered, the deliveries of
    the same key and endpoint that waited behind it. A failure of one delivery is recorded on it;
    the others go on."""
    report = SendReport()
    deadline = time.monotonic() + budget.total_seconds()
    scopes: list[dict] = [{"event_id": event_id}] if event_id is not None else [{}]
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="event-delivery") as pool:
        while scopes and report.sent < limit and time.monotonic() < deadline:
            claims = deliveries_claim(limit=min(concurrency, limit - report.sent), **scopes[-1])
            if not claims:
                scopes.pop()
                continue
            # HTTP in the pool's threads (no database there); recording here, one transaction each
            for claim, outcome in zip(claims, pool.map(delivery_send, claims), strict=True):
                delivered = _record_into(report, claim=claim, outcome=outcome)
                if delivered and event_id is not None and claim.ordering_key:
                    scopes.append({"endpoint_id": claim.endpoint_id, "ordering_key": claim.ordering_key})
    return report


def _record_into(report: SendReport, *, claim: Claim, outcome: Outcome) -> bool:
    """Record one outcome and count it; True when it was delivered."""
    try:
        status = delivery_record(claim=claim, outcome=outcome)
    except Exception as exc:
        log.exception("event_delivery_not_recorded", delivery=claim.delivery_id)
        report.errors.append(f"{claim.delivery_id}: {type(exc).__name__}")
        return False
    if status is None:
        report.lost_leases += 1
    elif status == DeliveryStatus.DELIVERED:
        report.delivered += 1
    elif status == DeliveryStatus.DEAD:
        report.dead += 1
    else:
        report.failed += 1
    return status == DeliveryStatus.DELIVERED


def delivery_resend(*, delivery: Delivery, at: datetime | None = None) -> Delivery:
    """An operator's resend: a settled delivery gets a new delivery of the same event (same
    `webhook-id`), due now; one still unsettled is made due now."""
    at = at or timezone.now()
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
        if delivery.status in UNSETTLED_DELIVERY_STATUSES:
            Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=at)
            return delivery
        resent = Delivery.objects.create(
            event_id=delivery.event_id,
            endpoint_id=delivery.endpoint_id,
            resend_of=delivery,
            ordering_key=delivery.ordering_key,
            sequence=delivery.sequence,
            next_attempt_at=at,
            created_at=at,
        )
        event_id = str(delivery.event_id)
        transaction.on_commit(lambda: _enqueue(event_id))
    return resent


def _enqueue(event_id: str) -> None:
    from events.services.outbox import _enqueue_delivery

    _enqueue_delivery(event_id)
