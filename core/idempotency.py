"""`Idempotency-Key` for POSTs that can move money or mint a one-time secret.

A client sends `Idempotency-Key: <uuid>`; a retry with the same key and the same request gets the
stored answer instead of a second purchase. Modelled on Stripe and brandur/rocket-rides-atomic:

1. In its own short transaction, INSERT an `IdempotencyRecord` (state `in_progress`). The unique
   constraint (user, key) decides races. On conflict the existing record answers:
   different fingerprint -> 422 `idempotency_key_reused`; still `in_progress` -> 409
   `idempotency_key_in_use` (+ `Retry-After`); `completed` -> the stored status and body again,
   with `Idempotent-Replayed: true`. Nothing runs in those three cases.
2. The view runs OUTSIDE that transaction (services own their atomic blocks and Stripe calls).
3. 2xx and deterministic 4xx responses are stored and the record is marked `completed`.
   5xx, transient 4xx (408, 409, 423, 425, 429) and unexpected exceptions delete the record, so the
   client may retry with the same key. That is safe because the money services are themselves
   exactly-once through their own committed rows (attempt per period, Stripe key from the row id):
   a retry after a half-done request converges on the same charge.
4. A record left `in_progress` by a crashed process is taken over once it is older than
   `settings.IDEMPOTENCY_IN_PROGRESS_TIMEOUT` (default 5 minutes; keep it above the longest
   request, Stripe timeouts and retries included).
5. `idempotency_records_purge` deletes records past retention (24 h, like Stripe); run it
   periodically. After that a key may be reused.

Keys are scoped per authenticated Django user (`request.user`), so two users may send the same
key independently. Other principals (e.g. a vehicle credential) have no row to key by: a key from
them is refused with 403 rather than silently ignored.

Only status and body are replayed (no other headers); replays are not re-authorized against
current permissions beyond the authentication and permission checks DRF already ran.
Do not combine with `ATOMIC_REQUESTS`: the claim must commit before the view runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.http import QueryDict
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.utils.encoders import JSONEncoder

from core.api import error_body
from core.errors import BillingError, BusinessRuleViolation, ErrorCode, ValidationError
from core.metrics import IDEMPOTENCY_REPLAYS
from core.models import IdempotencyRecord

logger = structlog.get_logger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
DEFAULT_IN_PROGRESS_TIMEOUT = timedelta(minutes=5)
DEFAULT_RETENTION = timedelta(hours=24)
IN_USE_RETRY_AFTER_SECONDS = 1
# 4xx answers that depend on timing rather than on the request: never stored, the retry runs again.
TRANSIENT_CLIENT_STATUSES = frozenset({408, 409, 423, 425, 429})

_KEY_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
_CLAIM_ATTEMPTS = 3

_KEY_DESCRIPTION = (
    "A unique value per logical operation (a UUID v4 is recommended), 1-255 printable ASCII characters. "
    "Retrying with the same key and the same request returns the stored response with "
    "`Idempotent-Replayed: true` and does not repeat the operation; the same key with a different "
    "request is refused (422 `idempotency_key_reused`); while the first request is still running a "
    "retry gets 409 `idempotency_key_in_use`. Keys are kept for 24 hours."
)

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    name=IDEMPOTENCY_HEADER,
    type=str,
    location=OpenApiParameter.HEADER,
    required=True,
    description=_KEY_DESCRIPTION,
)
IDEMPOTENCY_KEY_PARAMETER_OPTIONAL = OpenApiParameter(
    name=IDEMPOTENCY_HEADER,
    type=str,
    location=OpenApiParameter.HEADER,
    required=False,
    description=_KEY_DESCRIPTION,
)


def in_progress_timeout() -> timedelta:
    """`settings.IDEMPOTENCY_IN_PROGRESS_TIMEOUT` (timedelta or seconds), default 5 minutes."""
    value = getattr(settings, "IDEMPOTENCY_IN_PROGRESS_TIMEOUT", DEFAULT_IN_PROGRESS_TIMEOUT)
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


def idempotency_key_parse(*, raw: str | None, required: bool) -> str | None:
    """The validated key, or None when absent and optional. Raises 400 `idempotency_key_required`
    when it is missing but required, 400 `idempotency_key_invalid` when it is malformed."""
    if raw is None:
        if required:
            raise ValidationError(
                f"This operation needs an {IDEMPOTENCY_HEADER} header; send one, e.g. a UUID.",
                code=ErrorCode.IDEMPOTENCY_KEY_REQUIRED,
            )
        return None
    if not _KEY_RE.fullmatch(raw):
        raise ValidationError(
            f"The {IDEMPOTENCY_HEADER} header must be 1-{MAX_KEY_LENGTH} printable ASCII characters "
            "without leading or trailing spaces, e.g. a UUID.",
            code=ErrorCode.IDEMPOTENCY_KEY_INVALID,
            details={"max_length": MAX_KEY_LENGTH},
        )
    return raw


def request_fingerprint(*, method: str, path: str, body: Any, query: Iterable[tuple[str, Any]] = ()) -> str:
    """SHA-256 hex over method, path, query and the parsed body as canonical JSON (sorted keys, no
    whitespace), so formatting and key order of the client's JSON do not matter."""
    if isinstance(body, QueryDict):
        body = {key: body.getlist(key) for key in body}
    canonical = json.dumps(
        {"method": method.upper(), "path": path, "query": sorted(query), "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_records_purge(*, older_than: timedelta = DEFAULT_RETENTION) -> int:
    """Delete records created before now - `older_than`; returns how many. Their keys become reusable."""
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted


def idempotent(func: Callable | None = None, *, required: bool = True) -> Callable:
    """Decorate a DRF view method (`APIView.post`, `ViewSet.create`, an `@action`) or an `@api_view`
    function so that its `Idempotency-Key` is honoured. Usable as `@idempotent` or
    `@idempotent(required=False)`; with `required=False` a request without the header simply runs.

    Put it directly on the function, under `@action` / `@api_view` / `@extend_schema`, and document
    the header with `@extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER])`.
    """

    def decorator(view_func: Callable) -> Callable:
        @functools.wraps(view_func)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            if args and isinstance(args[0], Request):  # @api_view function: (request, ...)
                view, request = None, args[0]
            else:  # method: (self, request, ...)
                view, request = args[0], args[1]
            return _run_idempotently(
                view=view, request=request, call=lambda: view_func(*args, **kwargs), required=required
            )

        wrapper.idempotency_required = required  # type: ignore[attr-defined]  # lets a static test list the protected views
        return wrapper

    return decorator(func) if func is not None else decorator


def _run_idempotently(*, view: Any, request: Request, call: Callable[[], Any], required: bool) -> Any:
    key = idempotency_key_parse(raw=request.headers.get(IDEMPOTENCY_HEADER), required=required)
    if key is None:
        return call()
    user = request.user
    if not isinstance(user, get_user_model()) or not user.is_authenticated:
        raise BillingError(
            f"{IDEMPOTENCY_HEADER} is only accepted from signed-in user accounts.",
            code=ErrorCode.PERMISSION_DENIED,
            status_code=403,
        )
    method = str(request.method)  # always set on a request that reached a view
    fingerprint = request_fingerprint(
        method=method,
        path=request.path,
        query=request.query_params.items(),
        body=request.data,
    )
    claim = _claim(user=user, key=key, method=method, path=request.path, fingerprint=fingerprint)
    if isinstance(claim, Response):
        return claim

    try:
        try:
            response = call()
        except Exception as exc:  # noqa: BLE001 - rendered as DRF would, or re-raised by it
            response = _exception_response(view=view, request=request, exc=exc)
    except BaseException:
        _release(claim)
        raise

    _finish(claim, response)
    return response


def _claim(*, user: Any, key: str, method: str, path: str, fingerprint: str) -> IdempotencyRecord | Response:
    """Insert our `in_progress` record, or return the answer the existing one dictates."""
    for _ in range(_CLAIM_ATTEMPTS):
        try:
            with transaction.atomic():
                return IdempotencyRecord.objects.create(
                    user=user, key=key, method=method, path=path[:512], fingerprint=fingerprint
                )
        except IntegrityError:
            existing = IdempotencyRecord.objects.filter(user=user, key=key).first()
        if existing is None:  # released by its request in the meantime: try again
            continue
        if existing.fingerprint != fingerprint:
            raise BusinessRuleViolation(
                f"This {IDEMPOTENCY_HEADER} was already used for a different request; "
                "use a new key for a new operation.",
                code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
            )
        if existing.state == IdempotencyRecord.State.COMPLETED:
            IDEMPOTENCY_REPLAYS.inc()  # metrics: /metrics api_idempotency_replays_total
            return Response(
                existing.response_body, status=existing.response_status, headers={REPLAYED_HEADER: "true"}
            )
        stale_before = timezone.now() - in_progress_timeout()
        taken_over, _ = IdempotencyRecord.objects.filter(
            pk=existing.pk, state=IdempotencyRecord.State.IN_PROGRESS, created_at__lt=stale_before
        ).delete()
        if taken_over:
            logger.warning("idempotency.stale_record_released", record_id=existing.pk, key=key)
            continue
        return Response(
            error_body(
                ErrorCode.IDEMPOTENCY_KEY_IN_USE,
                "A request with this key is still being processed; retry in a moment.",
                {"retry_after_seconds": IN_USE_RETRY_AFTER_SECONDS},
            ),
            status=409,
            headers={"Retry-After": str(IN_USE_RETRY_AFTER_SECONDS)},
        )
    raise BillingError(
        f"Could not claim the {IDEMPOTENCY_HEADER}; retry in a moment.",
        code=ErrorCode.IDEMPOTENCY_KEY_IN_USE,
        status_code=409,
    )


def _exception_response(*, view: Any, request: Request, exc: Exception) -> Response:
    """Render an exception as DRF would; re-raises what DRF would not handle (-> 500)."""
    if view is not None and hasattr(view, "handle_exception"):
        return view.handle_exception(exc)
    # the stubs type the setting as its dotted path; api_settings has imported it by now
    response = api_settings.EXCEPTION_HANDLER(  # type: ignore[operator]
        exc, {"request": request, "view": None, "args": (), "kwargs": {}}
    )
    if response is None:
        raise exc
    response.exception = True
    return response


def _finish(record: IdempotencyRecord, response: Any) -> None:
    status = getattr(response, "status_code", 500)
    if not isinstance(response, Response) or status >= 500 or status in TRANSIENT_CLIENT_STATUSES:
        _release(record)
        return
    body = json.loads(json.dumps(response.data, cls=JSONEncoder)) if response.data is not None else None
    stored = IdempotencyRecord.objects.filter(pk=record.pk, state=IdempotencyRecord.State.IN_PROGRESS).update(
        state=IdempotencyRecord.State.COMPLETED,
        response_status=status,
        response_body=body,
        completed_at=timezone.now(),
    )
    if not stored:
        logger.warning("idempotency.record_lost_before_completion", record_id=record.pk, key=record.key)


def _release(record: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk, state=IdempotencyRecord.State.IN_PROGRESS).delete()
