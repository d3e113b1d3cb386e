"""DRF glue shared by both apps: the one exception handler that renders every error as
`{"code": ..., "message": ..., "details": {...}}` (also for paths under /api/ that match no route),
the JSON parser and the pagination. `core.api_schema` documents all of it in the OpenAPI schema.

Hostile input answers a 4xx, never a 500 nor an HTML page: JSON nested deeper than
`MAX_JSON_DEPTH` or unparsable is 400 `malformed_json`; a body over
`settings.DATA_UPLOAD_MAX_MEMORY_SIZE` is 413 `request_too_large`; a page `limit` above
`MAX_PAGE_LIMIT` or an `offset` above `MAX_PAGE_OFFSET` (or below 1 and 0, or not an integer) is
400 `validation_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, pagination, parsers, status
from rest_framework.response import Response
from rest_framework.utils import json as drf_json

from core.errors import BillingError, ErrorCode

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

MAX_JSON_DEPTH = 32
MAX_PAGE_LIMIT = 200
MAX_PAGE_OFFSET = 1_000_000


class MalformedJSON(exceptions.ParseError):
    default_code = "malformed_json"


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


def _request_too_large() -> RequestTooLarge:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return RequestTooLarge(f"The request body is larger than {limit} bytes." if limit else None)


def _json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether lists/objects nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, bounded: the body is read up to the upload limit, recursion and depth
    are refused as `malformed_json` (DRF's own lets a RecursionError through: a 500)."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        # get_encoding: a DRF 3.18 helper the stubs do not declare yet
        encoding = parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            raw = stream.read(limit + 1) if limit is not None else stream.read()
        except RequestDataTooBig:
            raise _request_too_large() from None
        if limit is not None and len(raw) > limit:
            raise _request_too_large()
        parse_constant = drf_json.strict_constant if self.strict else None
        try:
            data = drf_json.loads(raw.decode(encoding), parse_constant=parse_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise MalformedJSON(f"The body is not valid JSON: {reason}.") from None
        if _json_depth_exceeds(data, MAX_JSON_DEPTH):
            raise MalformedJSON(f"The body is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels.")
        return data


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """`?limit=&offset=` with bounds: out of range is a 400, not a database overflow (500)."""

    max_limit = MAX_PAGE_LIMIT
    max_offset = MAX_PAGE_OFFSET

    def get_limit(self, request: Request) -> int | None:
        self._refuse_out_of_range(request, self.limit_query_param, 1, self.max_limit)
        return super().get_limit(request)

    def get_offset(self, request: Request) -> int:
        self._refuse_out_of_range(request, self.offset_query_param, 0, self.max_offset)
        return super().get_offset(request)

    @staticmethod
    def _refuse_out_of_range(request: Request, name: str, minimum: int, maximum: int) -> None:
        """What the schema documents: an integer in [minimum, maximum]; absent or empty is the default."""
        raw = request.query_params.get(name, "")
        if raw == "":
            return
        try:
            value = int(raw)
        except ValueError:
            raise exceptions.ValidationError({name: ["A valid integer is required."]}) from None
        if value > maximum:
            message = f"Ensure this value is less than or equal to {maximum}."
        elif value < minimum:
            message = f"Ensure this value is greater than or equal to {minimum}."
        else:
            return
        raise exceptions.ValidationError({name: [message]})

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {self.limit_query_param: (1, self.max_limit), self.offset_query_param: (0, self.max_offset)}
        for parameter in parameters:
            if parameter["name"] in bounds:
                minimum, maximum = bounds[parameter["name"]]
                parameter["schema"] = {**parameter["schema"], "minimum": minimum, "maximum": maximum}
        return parameters


_DRF_CODES = {
    MalformedJSON: ErrorCode.MALFORMED_JSON,
    RequestTooLarge: ErrorCode.REQUEST_TOO_LARGE,
    exceptions.NotAuthenticated: ErrorCode.NOT_AUTHENTICATED,
    exceptions.AuthenticationFailed: ErrorCode.NOT_AUTHENTICATED,
    exceptions.PermissionDenied: ErrorCode.PERMISSION_DENIED,
    exceptions.NotFound: ErrorCode.NOT_FOUND,
    exceptions.MethodNotAllowed: ErrorCode.METHOD_NOT_ALLOWED,
    exceptions.Throttled: ErrorCode.THROTTLED,
    exceptions.ValidationError: ErrorCode.VALIDATION_ERROR,
    exceptions.ParseError: ErrorCode.VALIDATION_ERROR,
    exceptions.UnsupportedMediaType: ErrorCode.VALIDATION_ERROR,
    exceptions.NotAcceptable: ErrorCode.VALIDATION_ERROR,
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": str(code), "message": message, "details": details or {}}


def _plain_message(detail: Any) -> str:
    """A human sentence from a DRF detail: a string, a list of them, or a dict such as simplejwt's
    `{"detail": ..., "code": ..., "messages": [...]}` (never the repr of its `ErrorDetail`s)."""
    if isinstance(detail, dict):
        if "detail" in detail:
            return _plain_message(detail["detail"])
        return " ".join(f"{name}: {_plain_message(value)}" for name, value in detail.items())
    if isinstance(detail, list | tuple):
        return " ".join(_plain_message(item) for item in detail)
    return str(detail)


def _plain_details(detail: Any) -> Any:
    """`ErrorDetail`s as plain strings, recursively (what JSON renders them as anyway)."""
    if isinstance(detail, dict):
        return {str(name): _plain_details(value) for name, value in detail.items()}
    if isinstance(detail, list | tuple):
        return [_plain_details(item) for item in detail]
    return str(detail) if isinstance(detail, str) else detail


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, BillingError):
        refusal = Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
        if refusal.status_code == status.HTTP_401_UNAUTHORIZED:
            refusal["WWW-Authenticate"] = "Bearer"
        return refusal
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):  # Django read the body first (e.g. a form)
        exc = _request_too_large()
    # Imported here: DRF's views module reads DEFAULT_PARSER_CLASSES (our parser, in this module)
    # when it is first imported, so a module-level import is circular.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = next(
        (c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)),
        ErrorCode.VALIDATION_ERROR,
    )
    if isinstance(exc, exceptions.ValidationError):
        details: Any = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        message = "The request is invalid; see details for each field."
    else:
        detail = getattr(exc, "detail", exc)
        message = _plain_message(detail)
        # e.g. simplejwt's token_not_valid: the reason in details, the sentence in message
        reason = detail.get("code") if isinstance(detail, dict) else None
        details = {"reason": str(reason)} if reason else {}
    response.data = error_body(code, message, _plain_details(details))
    if response.status_code == status.HTTP_401_UNAUTHORIZED:
        response["WWW-Authenticate"] = response.get("WWW-Authenticate", "Bearer")
    return response


@csrf_exempt  # a JSON 404 for any method; nothing is read or written
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any path under /api/ that no route matches (unknown, or a malformed id): the JSON 404, not
    Django's HTML page. A GET missing only its trailing slash is still redirected, as
    `APPEND_SLASH` would."""
    if settings.APPEND_SLASH and not request.path_info.endswith("/") and request.method in ("GET", "HEAD"):
        try:
            match = resolve(f"{request.path_info}/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
    message = f"No API route matches {request.method} {request.path}."
    return JsonResponse(error_body(ErrorCode.NOT_FOUND, message), status=status.HTTP_404_NOT_FOUND)
