"""`/metrics`: Prometheus text, not public (staff or bearer token), business counters after a
renewal sweep, state gauges from the database, and a request id on every log line of a request."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import pytest
import structlog
import time_machine
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families
from structlog.stdlib import ProcessorFormatter

from billing.services.customers import payment_method_add
from billing.services.renewals import subscriptions_renew_due
from billing.services.subscriptions import subscription_start
from core.models import TaskFailure
from tests.billing.api_helpers import CARD_DECLINED_AT_CHARGE, catalog_world, localstripe_card

pytestmark = pytest.mark.django_db
UTC = dt.UTC
JAN_31 = dt.datetime(2027, 1, 31, 9, 30, tzinfo=UTC)
FEB_28 = dt.datetime(2027, 2, 28, 9, 30, tzinfo=UTC)
TOKEN = "metrics-token-for-tests-0123456789"


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    response = client.get(reverse("metrics"), **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def _monthly(card: str):
    owner, vehicle = catalog_world()
    payment_method_add(owner=owner, stripe_payment_method_id="pm_card_visa", make_default=True)
    with time_machine.travel(JAN_31, tick=False):
        subscription = subscription_start(
            owner=owner,
            vehicle=vehicle,
            offer_code="heated_seats_monthly",
            payment_method_id=None,
            use_trial=False,
            at=JAN_31,
        ).subscription
    if card != "pm_card_visa":
        payment_method_add(owner=owner, stripe_payment_method_id=card, make_default=True)
    return subscription


@pytest.mark.stripe
def test_counters_after_a_renewal_sweep(admin_client, stripe_proxy, localstripe_url):
    before = scrape(admin_client)
    _monthly("pm_card_visa")
    _monthly(localstripe_card(localstripe_url, CARD_DECLINED_AT_CHARGE))

    with time_machine.travel(FEB_28, tick=False):
        report = subscriptions_renew_due(at=FEB_28)
    assert (report.renewed, report.declined) == (1, 1)

    after = scrape(admin_client)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("billing_renewals_total", outcome="renewed") == 1
    assert delta("billing_renewals_total", outcome="declined") == 1
    assert delta("billing_payment_attempt_outcomes_total", status="declined") == 1
    assert delta("billing_payment_attempt_outcomes_total", status="succeeded") == 3  # 2 first + 1 renewal
    assert ("billing_reconciler_backlog", (("kind", "payment_attempt"),)) in after
    assert "api_idempotency_replays_total" in {name for name, _ in after}
    assert any(name.startswith("django_http_requests") for name, _ in after)  # django-prometheus


def test_dead_letters_and_backlog_are_read_from_the_database(admin_client):
    now = dt.datetime.now(tz=UTC)
    TaskFailure.objects.create(
        task_name="billing.tasks.x",
        task_id="t1",
        fingerprint="f",
        error="boom",
        first_failed_at=now,
        last_failed_at=now,
    )
    samples = scrape(admin_client)
    assert value(samples, "billing_dead_letters", kind="task") == 1
    assert value(samples, "billing_reconciler_backlog", kind="refund") == 0


def test_idempotency_replays_and_rate_limit_refusals_are_counted(client):
    from core.metrics import IDEMPOTENCY_REPLAYS, RATE_LIMIT_REFUSALS, rate_limit_counted

    refused = RATE_LIMIT_REFUSALS.labels(scope="login")._value.get()
    assert rate_limit_counted("login", False) is False
    assert rate_limit_counted("login", True) is True
    assert RATE_LIMIT_REFUSALS.labels(scope="login")._value.get() == refused + 1
    assert IDEMPOTENCY_REPLAYS._value.get() >= 0


def test_metrics_are_not_public(client, settings, django_user_model):
    settings.METRICS_TOKEN = ""
    assert client.get(reverse("metrics")).status_code == 401
    assert client.get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer ").status_code == 401
    settings.METRICS_TOKEN = TOKEN
    assert client.get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert "billing_dead_letters" in {n for n, _ in scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")}
    user = django_user_model.objects.create_user("owner-app", password="pw-123456789")
    client.force_login(user)  # a login that is not staff: refused
    assert client.get(reverse("metrics")).status_code == 401


def test_every_log_line_of_a_request_carries_its_request_id(client):
    """Lines are formatted when written (as on stderr): ours (structlog) and Django's own."""
    formatter = next(
        h.formatter for h in logging.getLogger().handlers if isinstance(h.formatter, ProcessorFormatter)
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logging.getLogger().addHandler(handler)
    try:
        response = client.get("/no-such-page/", HTTP_X_REQUEST_ID="req-from-proxy-1234")
        client.get("/no-such-page/", HTTP_X_REQUEST_ID="bad id with spaces")
        structlog.get_logger("test").info("outside_any_request")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert response["X-Request-ID"] == "req-from-proxy-1234"
    not_found = [line for line in lines if line["event"].startswith("Not Found")]
    assert not_found[0]["request_id"] == "req-from-proxy-1234"
    assert len(not_found[1]["request_id"]) == 32  # a malformed id is replaced by a new one
    assert "request_id" not in next(line for line in lines if line["event"] == "outside_any_request")
