"""The WSGI fast lane of `POST /webhooks/stripe/` (billing/api/webhook_wsgi.py) answers exactly as the
URL route does through Django's whole middleware stack: the signature matrix, duplicates, too
large, not configured; every other method, path or refused host goes to Django's handler; the
request signals run as for any request (database connections closed when unusable or expired)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections, connection
from django.test import Client, RequestFactory

from billing.api.webhook_views import MAX_BODY_BYTES
from billing.api.webhook_wsgi import StripeWebhookLane
from billing.models import StripeEvent
from core.metrics import WEBHOOK_DELIVERIES
from tests.billing.test_webhooks_stripe import SECRET, URL, event_body, sign

pytestmark = [pytest.mark.stripe]
ROUTE_ONLY_HEADERS = {"vary"}  # the route's session middleware answers `Vary: Cookie`; no cookie here


@pytest.fixture(autouse=True)
def _secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = f"{SECRET},whsec_next_in_rotation"


@pytest.fixture
def lane() -> StripeWebhookLane:
    return StripeWebhookLane(WSGIHandler())


@pytest.fixture
def _test_transaction_kept() -> Iterator[None]:
    """As Django's test client does: the request signals must not close the test's connection."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def environ_for(body: bytes, header: str | None, *, method: str = "POST", path: str = URL, **extra) -> dict:
    if header is not None:
        extra["HTTP_STRIPE_SIGNATURE"] = header
    return RequestFactory().generic(method, path, data=body, content_type="application/json", **extra).environ


def call(app, environ: dict) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one WSGI call, the answer closed as a server closes it."""
    answer: dict = {}

    def start_response(status: str, headers: list, exc_info=None) -> None:
        answer["status"], answer["headers"] = int(status.split()[0]), headers

    iterable = app(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        getattr(iterable, "close", lambda: None)()
    return answer["status"], {name.lower(): value for name, value in answer["headers"]}, body


def via_route(body: bytes, header: str | None) -> tuple[int, dict[str, str], bytes]:
    extra = {"HTTP_STRIPE_SIGNATURE": header} if header is not None else {}
    response = Client().post(URL, data=body, content_type="application/json", **extra)
    return response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content


def _same_answer(lane_answer, route_answer) -> None:
    (lane_status, lane_headers, lane_body), (route_status, route_headers, route_body) = (
        lane_answer,
        route_answer,
    )
    assert (lane_status, lane_body) == (route_status, route_body)
    assert set(lane_headers) == set(route_headers) - ROUTE_ONLY_HEADERS
    for name in set(lane_headers) - {"x-request-id"}:
        assert lane_headers[name] == route_headers[name], name


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
@pytest.mark.parametrize(
    ("tamper", "header", "status"),
    [
        (lambda b: b, lambda b: sign(b), 200),
        (lambda b: b[:-2] + b"x}", lambda b: sign(b), 400),  # one byte changed after signing
        (lambda b: b, lambda b: sign(b, secret="whsec_wrong"), 400),
        (lambda b: b, lambda b: None, 400),
        (lambda b: b, lambda b: "garbage", 400),
        (lambda b: b, lambda b: sign(b, scheme="v0"), 400),
        (lambda b: b, lambda b: sign(b, at=int(time.time()) - 301), 400),
        (lambda b: b, lambda b: sign(b, at=int(time.time()) + 301), 400),
        (lambda b: b, lambda b: sign(b, secret="whsec_wrong") + "," + sign(b).split(",")[1], 200),
        (lambda b: b, lambda b: sign(b, secret="whsec_next_in_rotation"), 200),
    ],
    ids=[
        "valid",
        "one-byte-changed",
        "wrong-secret",
        "missing-header",
        "garbled-header",
        "no-v1",
        "301-s-old",
        "301-s-in-the-future",
        "two-v1-one-valid",
        "rotated-secret",
    ],
)
def test_the_signature_matrix_answers_as_the_route_does(lane, tamper, header, status):
    answers = []
    for deliver in (lambda b, h: call(lane, environ_for(b, h)), via_route):
        body = event_body(event_id=f"evt_matrix_{len(answers)}")  # each its own event
        answers.append(deliver(tamper(body), header(body)))

    lane_answer, route_answer = answers
    assert lane_answer[0] == status, lane_answer
    if status == 200:  # the same but for the event id
        route_answer = (route_answer[0], route_answer[1], route_answer[2].replace(b"matrix_1", b"matrix_0"))
    _same_answer(lane_answer, route_answer)
    assert StripeEvent.objects.count() == (2 if status == 200 else 0)


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
def test_a_duplicate_is_acknowledged_once_stored(lane):
    body = event_body(event_id="evt_twice")

    first, again = (call(lane, environ_for(body, sign(body))) for _ in range(2))

    assert (first[0], first[2]) == (200, b'{"received": true, "duplicate": false, "id": "evt_twice"}')
    assert (again[0], again[2]) == (200, b'{"received": true, "duplicate": true, "id": "evt_twice"}')
    assert StripeEvent.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
def test_too_large_is_refused_before_the_body_is_read(lane):
    body = b"x" * (MAX_BODY_BYTES + 1)
    environ = environ_for(body, sign(body))

    answer = call(lane, environ)

    _same_answer(answer, via_route(body, sign(body)))
    assert answer[0] == 413 and b'"request_too_large"' in answer[2]
    assert environ["wsgi.input"].read(1) == b"x"  # never read
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
def test_without_a_secret_nothing_is_accepted(settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    body = event_body()

    answer = call(StripeWebhookLane(WSGIHandler()), environ_for(body, sign(body)))

    _same_answer(answer, via_route(body, sign(body)))
    assert answer[0] == 503 and b'"webhooks_not_configured"' in answer[2]


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("GET", URL, {}),
        ("PUT", URL, {}),
        ("POST", "/webhooks/stripe", {}),  # no slash: Django's answer, as before
        ("GET", "/ping", {}),
        ("POST", URL, {"HTTP_HOST": "evil.example.com"}),  # not in ALLOWED_HOSTS: Django's 400
        ("POST", URL, {"CONTENT_LENGTH": ""}),
    ],
    ids=["get", "put", "no-slash", "another-path", "disallowed-host", "no-content-length"],
)
def test_everything_else_goes_through_djangos_middleware(lane, monkeypatch, method, path, extra):
    body = event_body()
    monkeypatch.setattr(lane, "deliver", lambda *a: pytest.fail("taken by the fast lane"))

    status, headers, _ = call(lane, environ_for(body, sign(body), method=method, path=path, **extra))
    expected, _, _ = call(WSGIHandler(), environ_for(body, sign(body), method=method, path=path, **extra))

    assert status == expected
    assert "x-request-id" in headers  # the middleware ran
    if path == URL and method != "POST":
        assert (status, headers["allow"]) == (405, "POST")
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
def test_https_redirect_and_hsts_as_configured(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    lane = StripeWebhookLane(WSGIHandler())  # the middleware read their settings when built
    body = event_body()

    plain = call(lane, environ_for(body, sign(body)))
    secure = call(lane, environ_for(body, sign(body), secure=True))

    assert plain[0] == 301 and plain[1]["location"].startswith("https://")
    assert secure[0] == 200 and secure[1]["strict-transport-security"] == "max-age=3600"
    assert StripeEvent.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
def test_the_request_id_is_kept_and_the_delivery_counted(lane):
    body = event_body()
    before = WEBHOOK_DELIVERIES.labels(status="200")._sum.get()

    status, headers, _ = call(lane, environ_for(body, sign(body), HTTP_X_REQUEST_ID="proxy-id-12345678"))

    assert (status, headers["x-request-id"]) == (200, "proxy-id-12345678")
    assert WEBHOOK_DELIVERIES.labels(status="200")._sum.get() > before


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
def test_an_error_is_answered_and_logged_as_django_does(lane, monkeypatch, caplog):
    def broken(**_kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr("billing.api.webhook_wsgi.webhook_answer", broken)
    body = event_body()

    status, headers, content = call(lane, environ_for(body, sign(body)))

    assert status == 500 and b"Server Error (500)" in content and "x-request-id" in headers
    assert any(r.name == "django.request" and r.exc_info for r in caplog.records)


@pytest.mark.django_db
@pytest.mark.usefixtures("_test_transaction_kept")
def test_the_request_signals_are_sent_the_finished_one_when_the_answer_is_closed(lane):
    sent: list[str] = []
    started = lambda **_kw: sent.append("started")  # noqa: E731
    finished = lambda **_kw: sent.append("finished")  # noqa: E731
    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    body = event_body()
    try:
        iterable = lane(environ_for(body, sign(body)), lambda *_a: None)
        assert sent == ["started"]
        iterable.close()
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)

    assert sent == ["started", "finished"]


@pytest.mark.django_db(transaction=True)
def test_an_expired_database_connection_is_replaced(lane):
    """CONN_MAX_AGE as for any request: the lane's signals run Django's `close_old_connections`."""
    body = event_body()
    connection.ensure_connection()
    expired = connection.connection
    connection.close_at = time.monotonic() - 1  # its CONN_MAX_AGE is over

    status, _, _ = call(lane, environ_for(body, sign(body)))

    assert status == 200
    assert expired.closed and connection.connection is not expired  # closed when the request started
    assert StripeEvent.objects.count() == 1  # committed: durable before the 200


def test_production_serves_through_the_lane_and_the_inbox_needs_no_audit_context():
    import config.wsgi
    from reports.models import EVENT_MODELS

    assert isinstance(config.wsgi.application, StripeWebhookLane)
    assert config.wsgi.application.django_app is config.wsgi.django_application
    assert StripeEvent not in EVENT_MODELS  # why the lane may skip pghistory's middleware
