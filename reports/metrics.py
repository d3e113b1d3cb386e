"""`/metrics` in the Prometheus text format, for the monitoring system only.

Not public: a staff session, or `Authorization: Bearer <METRICS_TOKEN>` (settings; empty: no
token accepted). Multiprocess-safe: with `PROMETHEUS_MULTIPROC_DIR` set (gunicorn, Celery), the
counters of every process are read from that directory and added up; the state gauges
(reconciler backlog, dead letters) are read from the database at scrape time, a handful of
`COUNT` queries whatever the size of the tables.
"""

from __future__ import annotations

import hmac
import os

from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from billing.models import AttemptStatus, PaymentAttempt, Refund, RefundStatus
from core.models import TaskFailure


class BillingStateCollector:
    """Gauges read from the database when scraped."""

    def collect(self):
        backlog = GaugeMetricFamily(
            "billing_reconciler_backlog",
            "Rows the reconciler still has to settle (pending or unknown, not dead-lettered).",
            labels=["kind"],
        )
        waiting = Q(dead_lettered_at__isnull=True)
        backlog.add_metric(
            ["payment_attempt"],
            PaymentAttempt.objects.filter(
                waiting, status__in=[AttemptStatus.PENDING, AttemptStatus.UNKNOWN]
            ).count(),
        )
        backlog.add_metric(
            ["refund"],
            Refund.objects.filter(waiting, status__in=[RefundStatus.PENDING, RefundStatus.UNKNOWN]).count(),
        )
        yield backlog
        dead = GaugeMetricFamily(
            "billing_dead_letters", "Rows and tasks waiting for an operator (dead letters).", labels=["kind"]
        )
        dead.add_metric(
            ["payment_attempt"], PaymentAttempt.objects.filter(dead_lettered_at__isnull=False).count()
        )
        dead.add_metric(["refund"], Refund.objects.filter(dead_lettered_at__isnull=False).count())
        dead.add_metric(["task"], TaskFailure.objects.filter(retried_at__isnull=True).count())
        yield dead


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessRegistry())
    registry.register(BillingStateCollector())
    return registry


class _ProcessRegistry:
    """This process's own metrics (no multiprocess directory: the demo, tests)."""

    def collect(self):
        yield from REGISTRY.collect()


def _allowed(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    token = getattr(settings, "METRICS_TOKEN", "")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
