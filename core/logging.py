"""Structured logs: every log line (ours and Django's) is one JSON object on stderr; within a
request each carries its `request_id` (`RequestIdMiddleware`)."""

from __future__ import annotations

import logging.config
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from django.core.signals import request_finished

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse


def configure_logging(*, level: str = "INFO", json: bool = True) -> None:
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "structured": {
                    "()": structlog.stdlib.ProcessorFormatter,
                    "processors": [
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        renderer,
                    ],
                    "foreign_pre_chain": shared,
                }
            },
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
            "root": {"handlers": ["console"], "level": level},
            "loggers": {
                "django.db.backends": {"level": "INFO"},
                "stripe": {"level": "WARNING"},  # the SDK logs every request at INFO
                "pgtrigger": {"level": "WARNING"},  # one line per trigger on every migrate
            },
        }
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
REQUEST_ID_HEADER = "X-Request-ID"


class RequestIdMiddleware:
    """Binds a request id to every log line of the request (structlog's context variables, which
    the stdlib formatter merges too) and answers it in `X-Request-ID`. A well-formed id sent by
    the proxy in front is kept, so one id follows the request through every hop; otherwise a new
    one is made. pghistory's context carries the same id for the audit history."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_bind(request.headers.get(REQUEST_ID_HEADER, ""))
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def request_id_bind(given: str) -> str:
    """The request's id (`given` when well-formed, else a new one), bound to every log line until
    the response is closed; returned for the `X-Request-ID` answer header."""
    request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def _request_id_unbind(**_kwargs: object) -> None:
    """Django logs a 4xx/5xx after the middleware returned: the id stays bound until the response
    is closed (`request_finished`), then is dropped so later lines of the thread carry none."""
    structlog.contextvars.unbind_contextvars("request_id")


request_finished.connect(_request_id_unbind, dispatch_uid="core.logging.request_id_unbind")
