"""Business counters for Prometheus (`/metrics`, see reports/metrics.py).

prometheus_client writes them to per-process files when `PROMETHEUS_MULTIPROC_DIR` is set (gunicorn
with several workers, Celery): the exporter adds up every process's files. Without it they live in
this process's memory (the demo, tests). Each service records with one clearly delimited call.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

RENEWALS = Counter("billing_renewals", "Subscriptions taken by the renewal sweep, by outcome.", ["outcome"])
PAYMENT_ATTEMPTS = Counter(
    "billing_payment_attempt_outcomes",
    "Payment attempts reaching a status (declined, unknown, succeeded, requires_action, canceled).",
    ["status"],
)
IDEMPOTENCY_REPLAYS = Counter(
    "api_idempotency_replays", "Requests answered from a stored response (same Idempotency-Key)."
)
RATE_LIMIT_REFUSALS = Counter("api_rate_limit_refusals", "Requests refused by a rate limit.", ["scope"])
WEBHOOK_DELIVERIES = Histogram(
    "billing_webhook_delivery_seconds",
    "Stripe deliveries taken by the WSGI fast lane (not in django_http_* metrics), by HTTP status: "
    "seconds from the request to the answer.",
    ["status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

RENEWAL_OUTCOMES = ("renewed", "declined", "pending", "canceled", "skipped")


def renewal_sweep_record(report: Any) -> None:
    """Add a renewal sweep's `SweepReport` to the counters."""
    for outcome in RENEWAL_OUTCOMES:
        count = getattr(report, outcome)
        if count:
            RENEWALS.labels(outcome=outcome).inc(count)
    if report.errors:
        RENEWALS.labels(outcome="error").inc(len(report.errors))


def payment_attempt_moved(to: str, applied: bool) -> bool:
    """Count an applied payment-attempt transition; returns `applied` unchanged."""
    if applied:
        PAYMENT_ATTEMPTS.labels(status=str(to)).inc()
    return applied


def rate_limit_counted(scope: str, allowed: bool) -> bool:
    """Count a refusal; returns `allowed` unchanged."""
    if not allowed:
        RATE_LIMIT_REFUSALS.labels(scope=scope).inc()
    return allowed
