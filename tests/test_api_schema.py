"""The OpenAPI document: valid OpenAPI 3 without warnings, every operation summarised, every POST
that can move money documents the Idempotency-Key header (and the code agrees)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
# The one Idempotency-Key rule: POSTs that can move money or mint a one-time secret require it
MONEY_POSTS = {
    "/api/v1/me/vehicles/{id}/purchases/",
    "/api/v1/me/vehicles/{id}/subscriptions/",
    "/api/v1/me/subscriptions/{id}/change/",
    "/api/v1/me/subscriptions/{id}/cancel/",
    "/api/v1/me/purchases/{id}/withdraw/",
    "/api/v1/me/payment-methods/setup-intent/",
    "/api/v1/me/payments/{id}/confirm/",
    "/api/v1/me/invoices/{id}/pay/",
    "/api/v1/operator/test-clocks/{id}/advance/",
    "/api/v1/me/vehicles/{id}/transfer/",
}
# ... and reads and pure state toggles take none
KEYLESS_POSTS = {
    "/api/v1/me/subscriptions/{id}/resume/",
    "/api/v1/me/subscriptions/{id}/change-preview/",
    "/api/v1/me/payment-methods/",
    "/api/v1/me/payment-methods/{id}/default/",
    "/api/v1/me/transfers/claim/",
    "/api/v1/auth/token/",
    "/api/v1/auth/token/refresh/",
    "/api/v1/auth/logout/",
}


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def test_schema_validates_as_openapi_3_without_warnings(tmp_path: Path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))  # SystemExit on failure
    document = yaml.safe_load(out.read_text())
    assert document["openapi"].startswith("3.")
    assert len(document["paths"]) >= 20


def test_validation_really_rejects_a_broken_document():
    """Guards the check above: the validator drf-spectacular runs refuses an invalid document."""
    from drf_spectacular.validation import validate_schema
    from jsonschema import ValidationError

    with pytest.raises(ValidationError):
        validate_schema(
            {"openapi": "3.0.3", "info": {"title": "x"}, "paths": {"/a": {"get": {"responses": 1}}}}
        )


def test_served_schema_covers_every_api_route(schema):
    documented = {re.sub(r"\{[^}]+\}", "{id}", path) for path in schema["paths"]}
    routes = set()

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                if route.startswith("api/v1/"):
                    routes.add(
                        "/"
                        + re.sub(r"\(\?P<\w+>[^)]*\)|<(?:\w+:)?\w+>", "{id}", route)
                        .strip("^$")
                        .replace("^", "")
                        .replace("$", "")
                    )

    walk(get_resolver().url_patterns)
    assert len(routes) >= 25
    assert routes - documented == set()


def test_every_operation_has_a_summary_and_an_operation_id(schema):
    missing = [f"{m.upper()} {p}" for p, m, op in operations(schema) if not (op.get("summary") or "").strip()]
    assert not missing, missing
    ids = [op["operationId"] for _, _, op in operations(schema)]
    assert len(ids) == len(set(ids))


def _idempotency_parameter(operation: dict) -> dict | None:
    return next(
        (
            p
            for p in operation.get("parameters", [])
            if p.get("in") == "header" and p["name"] == "Idempotency-Key"
        ),
        None,
    )


def test_money_moving_posts_document_a_required_idempotency_key(schema):
    by_path = {re.sub(r"\{[^}]+\}", "{id}", path): item for path, item in schema["paths"].items()}
    for path in MONEY_POSTS:
        parameter = _idempotency_parameter(by_path[path]["post"])
        assert parameter is not None, path
        assert parameter["required"] is True, path
        assert parameter["schema"]["type"] == "string"
        assert "409" in by_path[path]["post"]["responses"] or "422" in by_path[path]["post"]["responses"], (
            path
        )


def test_documented_idempotency_matches_the_code(schema):
    """A view wrapped by @idempotent documents the header, and only such views do."""
    from billing.api import owner_views

    enforced = set()
    for viewset in (
        owner_views.MyVehicleViewSet,
        owner_views.MySubscriptionViewSet,
        owner_views.MyPurchaseViewSet,
        owner_views.MyPaymentViewSet,
        owner_views.MyPaymentMethodViewSet,
        owner_views.MyInvoiceViewSet,
        owner_views.TransferClaimViewSet,
    ):
        for action in viewset.get_extra_actions():
            if getattr(action, "idempotency_required", None) is not None:
                enforced.add(action.url_path)
    from billing.api.operator_views import TestClockAdvanceView

    if getattr(TestClockAdvanceView.post, "idempotency_required", None) is not None:
        enforced.add("advance")
    documented = {
        path.rstrip("/").rsplit("/", 1)[-1]
        for path, method, op in operations(schema)
        if method == "post" and _idempotency_parameter(op)
    }
    assert {p.rstrip("/").rsplit("/", 1)[-1] for p in MONEY_POSTS} <= enforced
    assert documented == enforced


def test_every_post_is_classified_and_only_money_or_secret_posts_take_the_key(schema):
    posts = {
        re.sub(r"\{[^}]+\}", "{id}", path): op for path, method, op in operations(schema) if method == "post"
    }
    assert set(posts) == MONEY_POSTS | KEYLESS_POSTS, "classify a new POST in MONEY_POSTS or KEYLESS_POSTS"
    assert {path for path, op in posts.items() if _idempotency_parameter(op)} == MONEY_POSTS
