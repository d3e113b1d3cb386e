"""Endpoints of the carmaker's systems: created with a generated secret, checked URLs (SSRF),
re-enabled by an operator after they were disabled for failing.

SSRF: only http(s) URLs with a host. Where `EVENTS_ALLOW_PRIVATE_URLS` is off (the default in
production) an address that is not globally routable (loopback, private, link-local such as the
cloud metadata service, reserved) is refused when the endpoint is saved (literal addresses and
`localhost`), before every send on each address the name resolves to, and on the socket
actually connected (`events.services.http`: DNS rebinding).
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction

from core.errors import ValidationError
from events.models import UNSETTLED_DELIVERY_STATUSES, Delivery, EventEndpoint, EventType
from events.services.http import address_is_public

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks: 24 to 64 random bytes
ROTATION_OVERLAP = timedelta(hours=24)


def private_urls_allowed() -> bool:
    return getattr(settings, "EVENTS_ALLOW_PRIVATE_URLS", not getattr(settings, "PRODUCTION", False))


def endpoint_secret_generate() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _address_allowed(address: str) -> bool:
    return address_is_public(address)


def endpoint_url_validate(url: str) -> str:
    """The URL as given, or `validation_error` when it is not an http(s) URL we may call."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("An event endpoint needs an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise ValidationError("Put no credentials in the URL: deliveries are signed instead.")
    if not private_urls_allowed():
        host = parts.hostname
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if host == "localhost" or host.endswith(".localhost") or (literal and not _address_allowed(host)):
            raise ValidationError("Event endpoints may not point at private or local addresses.")
    return url.strip()


def endpoint_url_resolves_publicly(url: str) -> str | None:
    """Before a send: why the URL may not be called now (None: it may)."""
    if private_urls_allowed():
        return None
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        return f"cannot resolve the host: {exc}"
    refused = sorted({str(info[4][0]) for info in infos if not _address_allowed(str(info[4][0]))})
    if refused:
        return f"the host resolves to an address that is not public ({', '.join(refused)})"
    return None


def _event_types_validate(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EventType.values))
    if unknown:
        raise ValidationError(f"Unknown event types: {', '.join(unknown)}.")
    return sorted(set(event_types))


def endpoint_create(
    *, url: str, description: str = "", event_types: list[str] | None = None, enabled: bool = True
) -> tuple[EventEndpoint, str]:
    """A new endpoint and its signing secret (shown to the operator once)."""
    secret = endpoint_secret_generate()
    endpoint = EventEndpoint.objects.create(
        url=endpoint_url_validate(url),
        description=description,
        event_types=_event_types_validate(event_types or []),
        secret=secret,
        enabled=enabled,
    )
    return endpoint, secret


def endpoint_update(*, endpoint: EventEndpoint, url: str, description: str, event_types: list[str]) -> None:
    endpoint.url = endpoint_url_validate(url)
    endpoint.description = description
    endpoint.event_types = _event_types_validate(event_types)
    endpoint.save(update_fields=["url", "description", "event_types", "updated_at"])


def endpoint_secret_rotate(
    *, endpoint: EventEndpoint, at: datetime, overlap: timedelta = ROTATION_OVERLAP
) -> str:
    """A new secret, returned once. For `overlap` deliveries carry a signature with the old
    secret too, so the receiver can switch to the new one without refusing anything."""
    secret = endpoint_secret_generate()
    with transaction.atomic():
        locked = EventEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        locked.previous_secret, locked.previous_secret_expires_at = locked.secret, at + overlap
        locked.secret = secret
        locked.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    endpoint.refresh_from_db()
    return secret


def endpoint_enable(*, endpoint: EventEndpoint, at: datetime) -> int:
    """An operator turns an endpoint (back) on: failures forgotten, its waiting deliveries due
    now. Returns how many deliveries it has waiting."""
    with transaction.atomic():
        EventEndpoint.objects.filter(pk=endpoint.pk).update(
            enabled=True, disabled_reason="", disabled_at=None, consecutive_failures=0, failing_since=None
        )
        return Delivery.objects.filter(endpoint=endpoint, status__in=UNSETTLED_DELIVERY_STATUSES).update(
            next_attempt_at=at
        )


def endpoint_disable(*, endpoint: EventEndpoint, at: datetime, reason: str) -> bool:
    """Turn an endpoint off (an operator, or repeated failure). Its deliveries wait."""
    return bool(
        EventEndpoint.objects.filter(pk=endpoint.pk, enabled=True).update(
            enabled=False, disabled_reason=reason[:300], disabled_at=at
        )
    )
